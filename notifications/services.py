"""Notifications, their delivery (realtime push, email) and price alerts.

Delivery happens after commit: a rolled-back order never notifies anyone, and
the push carries exactly what the REST API will show.
"""

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal
from typing import Any, NamedTuple

import orjson
from django.db import connection, transaction
from django.db.models import Case, DecimalField, Q, Value, When
from django.utils import timezone
from rest_framework import serializers

from accounts.models import User
from cryptovault.decimals import decimal_str
from cryptovault.exceptions import ApplicationError
from cryptovault.sqlarrays import pg_array, pg_text_array
from markets.models import Coin
from markets.selectors import prices_tradable
from notifications import realtime
from notifications.events import events_record
from notifications.models import (
    DEFAULT_EMAIL_KINDS,
    DUE,
    Notification,
    NotificationPreference,
    OutboxEmail,
    PriceAlert,
)
from notifications.outbox import outbox_emails_wake
from notifications.serializers import notification_output

logger = logging.getLogger(__name__)

MAX_ACTIVE_ALERTS_PER_USER = 100
_KINDS = frozenset(Notification.Kind.values)
# Alerts fired per transaction; a big crossing is worked through in chunks.
ALERT_FIRE_BATCH = 500


class NotificationRow(NamedTuple):
    """A notification handed to a batch as plain values (``notification_add``)."""

    user_id: int
    kind: str
    title: str
    body: str
    data: dict[str, Any]


class _Deliveries:
    """What one transaction sends once it has committed: each user's frames, in order,
    as one push, and a wake-up of the email drain if it left emails in the outbox.

    The batch's notifications, its frames (logged by notifications.events, which numbers
    them) and its outbox rows are written by :meth:`save`, a few statements in all,
    before the transaction commits. A notification's frame is filled in once it has its
    id: until then the frame holds the notification (a model instance, or a
    ``NotificationRow`` from ``notification_add``)."""

    def __init__(self) -> None:
        self.frames: dict[int, list[dict]] = {}
        self.notifications: list[Notification] = []
        self.emails: list[OutboxEmail] = []
        self.rows: list[NotificationRow] = []
        self.texts: dict[int, list[str]] = {}
        self.emailed_rows = 0

    def save(self) -> None:
        if self.notifications:
            Notification.objects.bulk_create(self.notifications)
        outputs = self._rows_save() if self.rows else {}
        if self.notifications or outputs:
            for frames in self.frames.values():
                for frame in frames:
                    notification = frame.get("notification")
                    if isinstance(notification, Notification):
                        frame["notification"] = notification_output(notification)
                    elif isinstance(notification, NotificationRow):
                        frame["notification"] = outputs[id(notification)]
        if self.frames:
            self.texts = events_record(frames_by_user=self.frames)
        if self.emails:
            OutboxEmail.objects.bulk_create(self.emails)

    def _rows_save(self) -> dict[int, dict]:
        """Insert ``self.rows`` and the outbox rows of those their users are emailed, in
        one statement (``_ROWS_INSERT``), and return each row's output (by ``id()`` of the
        row)."""
        rows, now = self.rows, timezone.now()
        with connection.cursor() as cursor:
            cursor.execute(
                _ROWS_INSERT,
                {
                    "now": now,
                    "user_ids": pg_array(row.user_id for row in rows),
                    "kinds": pg_text_array(row.kind for row in rows),
                    "titles": pg_text_array(row.title for row in rows),
                    "bodies": pg_text_array(row.body for row in rows),
                    "data": pg_text_array(orjson.dumps(row.data).decode() for row in rows),
                    "outbox_kind": OutboxEmail.Kind.NOTIFICATION,
                    "outbox_status": OutboxEmail.Status.PENDING,
                    "default_kinds": pg_text_array(sorted(DEFAULT_EMAIL_KINDS)),
                },
            )
            fetched = cursor.fetchall()
        # Ids are handed out as the rows are inserted, in the order of the arrays.
        ids = [notification_id for notification_id, _ in fetched]
        self.emailed_rows = fetched[0][1] if fetched else 0
        created_at = _DATETIME.to_representation(now)
        return {
            id(row): {
                "id": notification_id,
                "kind": row.kind,
                "title": row.title,
                "body": row.body,
                "data": row.data,
                "read": False,
                "created_at": created_at,
            }
            for notification_id, row in zip(ids, rows, strict=True)
        }

    def send(self) -> None:
        try:
            realtime.users_push_texts(self.texts)
        except Exception:
            # A failed push must not cost the emails their wake-up.
            logger.exception("could not push to users %s", list(self.texts))
        if self.emails or self.emailed_rows:
            outbox_emails_wake()


# A batch's notifications (``notification_add``) and the outbox rows of those their
# users are emailed, in one statement: a user is emailed a kind if they have an address,
# are active and their preference lists the kind (no preference row: the defaults), as
# ``_email_kinds`` decides for one. Returns the new ids in insertion order, each with the
# number of outbox rows written.
_ROWS_INSERT = f"""
WITH n AS (
    INSERT INTO {Notification._meta.db_table} (user_id, kind, title, body, data, created_at)
    SELECT *, %(now)s FROM unnest(%(user_ids)s::bigint[], %(kinds)s::varchar[],
        %(titles)s::varchar[], %(bodies)s::text[], %(data)s::jsonb[])
    RETURNING id, user_id, kind
), o AS (
    INSERT INTO {OutboxEmail._meta.db_table} (kind, address, status, attempts, next_attempt_at,
        last_error, created_at, notification_id, user_id)
    SELECT %(outbox_kind)s, '', %(outbox_status)s, 0, %(now)s, '', %(now)s, n.id, n.user_id
    FROM n JOIN {User._meta.db_table} u ON u.id = n.user_id
    LEFT JOIN {NotificationPreference._meta.db_table} p ON p.user_id = n.user_id
    WHERE u.email <> '' AND u.is_active AND CASE WHEN p.email_kinds IS NULL
        THEN n.kind = ANY(%(default_kinds)s::varchar[]) ELSE p.email_kinds ? n.kind END
    RETURNING 1
)
SELECT id, (SELECT count(*) FROM o) FROM n ORDER BY id
"""  # noqa: S608 - our table names


# How NotificationSerializer shows a datetime (``notification_add`` builds the output).
_DATETIME = serializers.DateTimeField()


def _email_kinds(*, email: str, is_active: bool, kinds: frozenset[str] | None) -> frozenset[str]:
    """The kinds a user is emailed, given their preference (None: no row, the defaults)."""
    if not (email and is_active):
        return frozenset()
    return DEFAULT_EMAIL_KINDS if kinds is None else kinds


_batch: ContextVar[_Deliveries | None] = ContextVar("notification_deliveries", default=None)


@contextmanager
def deliveries_batched() -> Iterator[None]:
    """Send the pushes and emails of everything notified inside the block together,
    after commit: one push per user and one wake-up of the email drain, instead of one
    of each per event.

    Use it inside the transaction that makes the changes, around code that never rolls
    back a savepoint of its own and carries on (the batch is registered on exit). An
    exception leaves the block without registering anything; a nested block joins the
    outer one.
    """
    if _batch.get() is not None:
        yield
        return
    deliveries = _Deliveries()
    token = _batch.set(deliveries)
    try:
        yield
    finally:
        _batch.reset(token)
    deliveries.save()
    transaction.on_commit(deliveries.send, robust=True)


def _deliver(*, user_id: int, frame: dict, email: OutboxEmail | None = None) -> None:
    """Put ``email`` in the outbox and, after commit, push ``frame`` to the user's
    sockets (and wake the email drain): with the surrounding batch if there is one,
    else on its own."""
    batch = _batch.get()
    alone = batch is None
    deliveries = _Deliveries() if batch is None else batch
    deliveries.frames.setdefault(user_id, []).append(frame)
    if email is not None:
        deliveries.emails.append(email)
    if alone:
        deliveries.save()
        transaction.on_commit(deliveries.send, robust=True)


def notification_create(
    *,
    user: User,
    kind: str,
    title: str,
    body: str = "",
    data: dict[str, Any] | None = None,
) -> Notification:
    """Persist a notification; after commit push it to the user's sockets and, if the
    user opted into this kind, put its email in the outbox (in this transaction).

    Inside ``deliveries_batched`` the row is inserted with the batch's others when the
    block ends: the returned notification has its id from then on."""
    if kind not in _KINDS:
        raise ValueError(f"Unknown notification kind {kind!r}.")
    emailed = kind in _email_kinds(
        email=user.email, is_active=user.is_active, kinds=notification_email_kinds(user=user)
    )
    notification = Notification(user=user, kind=kind, title=title[:200], body=body, data=data or {})
    email = (
        OutboxEmail(kind=OutboxEmail.Kind.NOTIFICATION, user=user, notification=notification)
        if emailed
        else None
    )
    batch = _batch.get()
    if batch is not None:
        # Inserted with the batch's others, when the batch is saved (it gets its id then).
        batch.notifications.append(notification)
        batch.frames.setdefault(user.pk, []).append(
            {"type": "notification", "notification": notification}
        )
        if email is not None:
            batch.emails.append(email)
        return notification
    notification.save()
    frame = {"type": "notification", "notification": notification_output(notification)}
    _deliver(user_id=user.pk, frame=frame, email=email)
    return notification


def notification_add(row: NotificationRow) -> None:
    """``notification_create`` for a batch that makes thousands (a crossing of the limit
    book): plain values in, no model instance; inserted with the batch's others, emailed
    as ``notification_create`` decides. Only inside ``deliveries_batched``."""
    batch = _batch.get()
    if batch is None:
        raise RuntimeError("notification_add runs inside deliveries_batched()")
    if row.kind not in _KINDS:
        raise ValueError(f"Unknown notification kind {row.kind!r}.")
    if len(row.title) > 200:
        row = row._replace(title=row.title[:200])
    batch.rows.append(row)
    batch.frames.setdefault(row.user_id, []).append({"type": "notification", "notification": row})


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


def order_event_push(*, user_id: int, order: dict) -> None:
    """After commit, send ``{"type":"order","order":{...}}`` to the owner's sockets.

    ``order`` is the order as the orders API shows it, serialized by the caller when the
    change happens, so it describes the status this change produced even if a later
    change lands before the push goes out (and this app needs no orders serializer).
    """
    _deliver(user_id=user_id, frame={"type": "order", "order": order})


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
        crossing |= Q(coin_id=coin_id, condition=PriceAlert.Condition.ABOVE, price__lte=price)
        crossing |= Q(coin_id=coin_id, condition=PriceAlert.Condition.BELOW, price__gte=price)
    return crossing


def price_alerts_evaluate() -> int:
    """Hook of the price poll: trigger the alerts that the stored prices cross, and
    enqueue their notifications (``price_alerts_fire``). Returns how many triggered.

    Prices come from the price store (``markets.selectors.prices_tradable``), never from
    a caller: simulated, stale or future-dated prices trigger nothing. Triggering is one
    conditional UPDATE on active alerts (the partial index on active alerts by coin,
    condition and price): a concurrent evaluation blocks on the same rows, then finds
    them inactive, so an alert triggers once. The task is enqueued whenever any alert is
    due, so a lost message (Redis restarted empty) is made good by the next poll.
    """
    prices = prices_tradable()
    triggered = 0
    if prices:
        triggered = PriceAlert.objects.filter(_crossing(prices), active=True).update(
            active=False,
            triggered_at=timezone.now(),
            triggered_price=Case(
                *(When(coin_id=coin, then=Value(price)) for coin, price in prices.items()),
                output_field=DecimalField(max_digits=38, decimal_places=18),
            ),
            notified_at=None,
        )
    if triggered or PriceAlert.objects.filter(DUE).exists():
        # notifications.tasks imports this module (tasks call services).
        from notifications.tasks import price_alerts_fire

        # robust: a broker hiccup is logged and must not fail the price poll.
        transaction.on_commit(price_alerts_fire.delay, robust=True)
    return triggered


def price_alerts_fire() -> int:
    """Notify every due alert (triggered, not yet notified); returns how many.

    Each batch is locked with SKIP LOCKED and marked notified in the transaction that
    creates its notifications, so overlapping or repeated runs notify each alert once.
    """
    fired = 0
    while True:
        with transaction.atomic():
            due = list(
                PriceAlert.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(DUE)
                .select_related("user", "coin")
                .order_by("pk")[:ALERT_FIRE_BATCH]
            )
            if not due:
                return fired
            now = timezone.now()
            for alert in due:
                alert.notified_at = now
            PriceAlert.objects.bulk_update(due, ["notified_at"])
            with deliveries_batched():
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
