"""Notifications, their delivery (realtime push, email) and price alerts.

Delivery happens after commit: a rolled-back order never notifies anyone, and
the push carries exactly what the REST API will show.
"""

import logging
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import User
from cryptovault.decimals import decimal_str
from cryptovault.exceptions import ApplicationError
from notifications import realtime
from notifications.models import (
    DEFAULT_EMAIL_KINDS,
    Notification,
    NotificationPreference,
    PriceAlert,
)
from notifications.serializers import NotificationSerializer

logger = logging.getLogger(__name__)

MAX_ACTIVE_ALERTS_PER_USER = 100
# Alerts fired per transaction; a big crossing is worked through in chunks.
ALERT_FIRE_BATCH = 500


def notification_create(
    *,
    user: User,
    kind: str,
    title: str,
    body: str = "",
    data: dict[str, Any] | None = None,
) -> Notification:
    """Persist a notification; after commit push it to the user's sockets and,
    if the user opted into this kind, email it."""
    if kind not in Notification.Kind.values:
        raise ValueError(f"Unknown notification kind {kind!r}.")
    notification = Notification.objects.create(
        user=user, kind=kind, title=title[:200], body=body, data=data or {}
    )
    frame = {"type": "notification", "notification": NotificationSerializer(notification).data}
    transaction.on_commit(lambda: realtime.user_push(user_id=user.pk, frame=frame), robust=True)
    if kind in notification_email_kinds(user=user) and user.email and user.is_active:
        from notifications.tasks import notification_email_send

        transaction.on_commit(lambda: notification_email_send.delay(notification.pk), robust=True)
    return notification


def notification_email_kinds(*, user: User) -> frozenset[str]:
    # Read through the one-to-one accessor, which Django caches on the user instance:
    # a batch of notifications for one user (an order queue run) reads it once.
    try:
        return frozenset(user.notification_preference.email_kinds)
    except NotificationPreference.DoesNotExist:
        return DEFAULT_EMAIL_KINDS


@transaction.atomic
def notification_preferences_update(*, user: User, email: dict[str, bool]) -> frozenset[str]:
    """Switch email per kind; kinds not mentioned keep their current setting."""
    unknown = sorted(set(email) - set(Notification.Kind.values))
    if unknown:
        raise ApplicationError(
            f"Unknown notification kinds: {', '.join(unknown)}.", code="unknown_kind"
        )
    preference, _ = NotificationPreference.objects.select_for_update().get_or_create(
        user=user, defaults={"email_kinds": sorted(DEFAULT_EMAIL_KINDS)}
    )
    kinds = set(preference.email_kinds)
    kinds |= {kind for kind, on in email.items() if on}
    kinds -= {kind for kind, on in email.items() if not on}
    preference.email_kinds = sorted(kinds)
    preference.save(update_fields=["email_kinds", "updated_at"])
    user.notification_preference = preference  # what notification_email_kinds reads
    return frozenset(kinds)


def notification_email_send(*, notification_id: int) -> bool:
    """Email one notification at most once; False when there is nothing to send."""
    with transaction.atomic():
        notification = (
            Notification.objects.select_for_update()
            .select_related("user")
            .filter(pk=notification_id, emailed_at__isnull=True)
            .first()
        )
        if notification is None or not notification.user.is_active:
            return False
        link = f"{settings.APP_URL}/notifications"
        send_mail(
            subject=f"CryptoVault: {notification.title}",
            message=f"{notification.body or notification.title}\n\n{link}\n",
            from_email=None,
            recipient_list=[notification.user.email],
        )
        notification.emailed_at = timezone.now()
        notification.save(update_fields=["emailed_at"])
    return True


def notification_mark_read(*, notification: Notification) -> Notification:
    if notification.read_at is None:
        notification.read_at = timezone.now()
        notification.save(update_fields=["read_at"])
    return notification


def notifications_mark_all_read(*, user: User) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).update(
        read_at=timezone.now()
    )


def notification_delete(*, notification: Notification) -> None:
    notification.delete()


def order_event_push(*, order) -> None:
    """After commit, send ``{"type":"order","order":{...}}`` to the owner's sockets.

    The payload is taken now, so it describes the status this change produced even
    if a later change lands before the push goes out.
    """
    frame = {"type": "order", "order": realtime.order_payload(order)}
    transaction.on_commit(
        lambda: realtime.user_push(user_id=order.user_id, frame=frame), robust=True
    )


def sessions_revoked_push(*, session_ids: Iterable[Any]) -> None:
    """Close every socket opened with one of these sessions (code 4401).

    Immediate, not after commit: revocation itself (deleting the live session in
    Redis) is immediate too. A failed push is logged, never raised, so revoking a
    session cannot fail because Redis pub/sub hiccupped.
    """
    ids = [str(sid) for sid in session_ids]
    if not ids:
        return
    try:
        realtime.sessions_close(session_ids=ids)
    except Exception:
        logger.exception("could not push the revocation of sessions %s", ids)


# --- Price alerts -----------------------------------------------------------------


@transaction.atomic
def price_alert_create(*, user: User, coin_id: str, condition: str, price: Decimal) -> PriceAlert:
    from markets.models import Coin

    coin = Coin.objects.filter(pk=coin_id, tracked=True).first()
    if coin is None:
        raise ApplicationError(
            "Unknown or untracked coin.",
            code="unknown_coin",
            extra={"coin": ["Unknown or untracked coin."]},
        )
    # Lock the user row so two concurrent creates cannot both pass the cap.
    User.objects.select_for_update().filter(pk=user.pk).first()
    if PriceAlert.objects.filter(user=user, active=True).count() >= MAX_ACTIVE_ALERTS_PER_USER:
        raise ApplicationError(
            f"At most {MAX_ACTIVE_ALERTS_PER_USER} active alerts per user.",
            code="too_many_alerts",
        )
    return PriceAlert.objects.create(user=user, coin=coin, condition=condition, price=price)


def price_alert_delete(*, alert: PriceAlert) -> None:
    alert.delete()


def _crossing(prices: dict[str, Decimal]) -> Q:
    crossing = Q()
    for coin_id, price in prices.items():
        if price is None:
            continue
        crossing |= Q(coin_id=coin_id, condition=PriceAlert.Condition.ABOVE, price__lte=price)
        crossing |= Q(coin_id=coin_id, condition=PriceAlert.Condition.BELOW, price__gte=price)
    return crossing


def price_alerts_evaluate(*, prices: dict[str, Decimal]) -> bool:
    """Hook of the price poll: enqueue the firing of alerts these prices cross.

    Cheap by design (it runs inside the poll): one indexed existence query on the
    active alerts of the polled coins; the firing itself runs in a task, only when
    something is due. Returns whether a task was enqueued.
    """
    crossing = _crossing(prices)
    if not crossing or not PriceAlert.objects.filter(crossing, active=True).exists():
        return False
    from notifications.tasks import price_alerts_fire

    payload = {coin: decimal_str(price) for coin, price in prices.items() if price is not None}
    # robust: a broker hiccup is logged and must not fail the price poll.
    transaction.on_commit(lambda: price_alerts_fire.delay(payload), robust=True)
    return True


def price_alerts_fire(*, prices: dict[str, Decimal]) -> int:
    """Fire every active alert these prices cross; returns how many fired.

    An ``above`` alert fires at the first poll whose price is at or above its
    price (``below`` likewise), then deactivates, so it fires once. Rows are locked
    with SKIP LOCKED, so overlapping runs never fire an alert twice.
    """
    crossing = _crossing(prices)
    if not crossing:
        return 0
    fired = 0
    while True:
        with transaction.atomic():
            due = list(
                PriceAlert.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(crossing, active=True)
                .select_related("user", "coin")
                .order_by("pk")[:ALERT_FIRE_BATCH]
            )
            if not due:
                return fired
            now = timezone.now()
            for alert in due:
                alert.active = False
                alert.triggered_at = now
                alert.triggered_price = prices[alert.coin_id]
            PriceAlert.objects.bulk_update(due, ["active", "triggered_at", "triggered_price"])
            for alert in due:
                _price_alert_notify(alert=alert)
        fired += len(due)
        if len(due) < ALERT_FIRE_BATCH:
            return fired


def _price_alert_notify(*, alert: PriceAlert) -> Notification:
    coin = alert.coin
    threshold = decimal_str(alert.price)
    traded = decimal_str(alert.triggered_price)
    return notification_create(
        user=alert.user,
        kind=Notification.Kind.PRICE_ALERT,
        title=f"{coin.name} is {alert.condition} {threshold} USD",
        body=(
            f"{coin.name} ({coin.symbol.upper()}) is at {traded} USD, "
            f"{alert.condition} your alert price of {threshold} USD."
        ),
        data={
            "alert_id": alert.pk,
            "coin": alert.coin_id,
            "condition": alert.condition,
            "price": threshold,
            "triggered_price": traded,
        },
    )
