from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from accounts.models import User
from notifications.models import Notification, OutboxEmail, PriceAlert


def notification_list(*, user: User, unread: bool | None = None) -> QuerySet[Notification]:
    notifications = Notification.objects.filter(user=user)
    if unread is not None:
        notifications = notifications.filter(read_at__isnull=unread)
    return notifications


def notification_get(*, user: User, notification_id: int) -> Notification:
    """The user's notification; another user's is indistinguishable from a missing one (404)."""
    return get_object_or_404(Notification, pk=notification_id, user=user)


def notification_unread_count(*, user: User) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).count()


def price_alert_list(*, user: User, active: bool | None = None) -> QuerySet[PriceAlert]:
    alerts = PriceAlert.objects.filter(user=user)
    if active is not None:
        alerts = alerts.filter(active=active)
    return alerts


def price_alert_get(*, user: User, alert_id: int) -> PriceAlert:
    return get_object_or_404(PriceAlert, pk=alert_id, user=user)


def outbox_pending_count() -> int:
    """Emails accepted and not yet sent (including those waiting for a retry)."""
    return OutboxEmail.objects.filter(status=OutboxEmail.Status.PENDING).count()
