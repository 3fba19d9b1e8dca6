from typing import TypeVar

from django.db.models import Model, QuerySet
from django.shortcuts import get_object_or_404

from accounts.models import User
from notifications.models import Notification, OutboxEmail, PriceAlert

M = TypeVar("M", bound=Model)


def _narrowed(rows: QuerySet[M], **flags: bool | None) -> QuerySet[M]:
    """``rows`` narrowed by each flag given (``None``: either way)."""
    return rows.filter(**{lookup: value for lookup, value in flags.items() if value is not None})


def notification_list(*, user: User, unread: bool | None = None) -> QuerySet[Notification]:
    return _narrowed(Notification.objects.filter(user=user), read_at__isnull=unread)


def notification_get(*, user: User, notification_id: int) -> Notification:
    """The user's notification; another user's is indistinguishable from a missing one (404)."""
    return get_object_or_404(Notification, pk=notification_id, user=user)


def notification_unread_count(*, user: User) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).count()


def price_alert_list(*, user: User, active: bool | None = None) -> QuerySet[PriceAlert]:
    return _narrowed(PriceAlert.objects.filter(user=user), active=active)


def price_alert_get(*, user: User, alert_id: int) -> PriceAlert:
    return get_object_or_404(PriceAlert, pk=alert_id, user=user)


def outbox_pending_count() -> int:
    """Emails accepted and not yet sent (including those waiting for a retry)."""
    return OutboxEmail.objects.filter(status=OutboxEmail.Status.PENDING).count()
