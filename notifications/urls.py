from cryptovault.routes import api_path
from notifications.apis import (
    NotificationDeleteApi,
    NotificationListApi,
    NotificationPreferencesApi,
    NotificationReadAllApi,
    NotificationReadApi,
    NotificationUnreadCountApi,
    PriceAlertDetailApi,
    PriceAlertListCreateApi,
)

urlpatterns = [
    api_path("notifications", NotificationListApi, "notification-list"),
    api_path("notifications/unread-count", NotificationUnreadCountApi, "notification-unread-count"),
    api_path("notifications/read-all", NotificationReadAllApi, "notification-read-all"),
    api_path("notifications/preferences", NotificationPreferencesApi, "notification-preferences"),
    api_path("notifications/<int:notification_id>", NotificationDeleteApi, "notification-detail"),
    api_path("notifications/<int:notification_id>/read", NotificationReadApi, "notification-read"),
    api_path("alerts", PriceAlertListCreateApi, "alert-list"),
    api_path("alerts/<int:alert_id>", PriceAlertDetailApi, "alert-detail"),
]
