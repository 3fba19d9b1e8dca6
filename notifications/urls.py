from django.urls import path

from notifications import apis

urlpatterns = [
    path("notifications", apis.NotificationListApi.as_view(), name="notification-list"),
    path(
        "notifications/unread-count",
        apis.NotificationUnreadCountApi.as_view(),
        name="notification-unread-count",
    ),
    path(
        "notifications/read-all",
        apis.NotificationReadAllApi.as_view(),
        name="notification-read-all",
    ),
    path(
        "notifications/preferences",
        apis.NotificationPreferencesApi.as_view(),
        name="notification-preferences",
    ),
    path(
        "notifications/<int:notification_id>",
        apis.NotificationDeleteApi.as_view(),
        name="notification-detail",
    ),
    path(
        "notifications/<int:notification_id>/read",
        apis.NotificationReadApi.as_view(),
        name="notification-read",
    ),
    path("alerts", apis.PriceAlertListCreateApi.as_view(), name="alert-list"),
    path("alerts/<int:alert_id>", apis.PriceAlertDetailApi.as_view(), name="alert-detail"),
]
