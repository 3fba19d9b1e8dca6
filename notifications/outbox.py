"""The email outbox: every email the platform sends goes through one PostgreSQL table.

A change that causes an email writes an :class:`~notifications.models.OutboxEmail` row in
its own transaction; after commit it wakes the drain (a Celery task). Beat also runs the
drain every minute, so a wake-up lost with Redis delays an email, never loses it.

The drain never talks to the mail server inside a transaction:
1. claim a batch in one statement (``FOR UPDATE SKIP LOCKED``, and a lease:
   ``claimed_until`` and a ``claim`` id);
2. build and send each message with no transaction open and no row locked;
3. mark the rows sent (or skipped) together, one statement for what was sent within
   ``MARK_SECONDS`` (a failed one due again later, with backoff, on its own), only where
   the lease is still this drain's.
Two drains never claim the same row while a lease runs. An email whose send succeeded
but whose mark was lost (a crash between the two) goes out again when its lease ends:
at least once, as with any mail queue.
"""

import logging
import secrets
import time
import uuid
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import connection, transaction
from django.utils import timezone
from django.utils.html import escape
from django.utils.module_loading import import_string
from django_redis import get_redis_connection

from accounts.models import User
from cryptovault.emails import email_render
from notifications.models import Notification, OutboxEmail

logger = logging.getLogger(__name__)

BATCH = 100
# Longer than the drain task's hard time limit: a lease ends only when its drain is gone.
LEASE = timedelta(minutes=5)
MAX_ATTEMPTS = 8
RETRY_BASE_SECONDS = 30
RETRY_MAX_SECONDS = 3600

# Who builds the message of each kind, at send time: ``(outbox: OutboxEmail) ->
# EmailMessage | None`` (None: nothing to send any more).
BUILDERS: dict[str, str] = {
    OutboxEmail.Kind.VERIFICATION: "accounts.services.verification_email_message",
    OutboxEmail.Kind.PASSWORD_RESET: "accounts.services.password_reset_email_message",
    OutboxEmail.Kind.WELCOME: "accounts.services.welcome_email_message",
    OutboxEmail.Kind.NOTIFICATION: "notifications.outbox.notification_email_message",
}

# The drain is woken at most once per EMAIL_DRAIN_DELAY: a commit that leaves emails
# waiting schedules a run unless one is already scheduled, and the run sends everything
# waiting by then (a busy order queue emails a fill per notification). The mark stops
# suppressing new runs after EMAIL_DRAIN_MARK_SECONDS, should a scheduled run be lost.
EMAIL_DRAIN_KEY = "cv:notifications:email-drain-scheduled"
EMAIL_DRAIN_DELAY = 1.0
EMAIL_DRAIN_MARK_SECONDS = 60
# A drain records what it sent in one statement per batch, at the latest this long after
# the first send not recorded yet.
MARK_SECONDS = 1.0


def outbox_email_add(
    *,
    kind: str,
    user: User | None = None,
    address: str = "",
    notification: Notification | None = None,
) -> OutboxEmail:
    """Accept an email: it is sent once the surrounding transaction commits (and never
    if it rolls back). (Notifications batch theirs: notifications.services.)"""
    outbox = OutboxEmail.objects.create(
        kind=kind, user=user, address=address, notification=notification
    )
    # robust: the row is committed; a broker outage only delays it to the next sweep.
    transaction.on_commit(outbox_emails_wake, robust=True)
    return outbox


def outbox_emails_wake() -> bool:
    """Schedule a drain run unless one is already scheduled. Returns whether this call
    scheduled one."""
    # notifications.tasks imports this module (tasks call the outbox).
    from notifications.tasks import notification_emails_drain

    redis = get_redis_connection("default")
    if not redis.set(EMAIL_DRAIN_KEY, 1, nx=True, ex=EMAIL_DRAIN_MARK_SECONDS):
        return False
    try:
        notification_emails_drain.apply_async(countdown=EMAIL_DRAIN_DELAY)
    except Exception:
        # Not scheduled after all: let the next commit try again (beat drains meanwhile).
        redis.delete(EMAIL_DRAIN_KEY)
        raise
    return True


def _retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(RETRY_BASE_SECONDS * 2 ** (attempts - 1), RETRY_MAX_SECONDS))


def _claim(*, claim: uuid.UUID) -> list[OutboxEmail]:
    """Lease up to BATCH due rows to this drain, in one statement (no transaction stays
    open past it), and read them."""
    now = timezone.now()
    table = OutboxEmail._meta.db_table
    with connection.cursor() as cursor:
        # The attempt counts as it is claimed: a message that kills its drain still
        # reaches MAX_ATTEMPTS.
        cursor.execute(
            f"UPDATE {table} SET claim = %s, claimed_until = %s, attempts = attempts + 1"  # noqa: S608 - our table name
            f" WHERE id IN (SELECT id FROM {table} WHERE status = %s AND next_attempt_at <= %s"
            " AND (claimed_until IS NULL OR claimed_until < %s) ORDER BY next_attempt_at, id"
            " LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id",
            [claim, now + LEASE, OutboxEmail.Status.PENDING, now, now, BATCH],
        )
        ids = [row[0] for row in cursor.fetchall()]
    if not ids:
        return []
    return list(
        OutboxEmail.objects.filter(id__in=ids, claim=claim)
        .select_related("user", "notification")
        .order_by("next_attempt_at", "id")
    )


def _finish(outbox: OutboxEmail, **fields) -> None:
    """Record the outcome and release the lease, unless another drain took the row over
    (this drain outlived its lease)."""
    OutboxEmail.objects.filter(id=outbox.id, claim=outbox.claim).update(
        claim=None, claimed_until=None, **fields
    )


class _Outcomes:
    """The sends of one claimed batch not recorded yet: recorded together (one statement
    per outcome), at the latest ``MARK_SECONDS`` after the first of them, so an email sent
    before a crash is sent again only if its mark was still waiting."""

    def __init__(self, claim: uuid.UUID | None) -> None:
        self.claim = claim
        self.sent: list[tuple[int, datetime]] = []
        self.skipped: list[int] = []
        self.since: float | None = None

    def add_sent(self, outbox: OutboxEmail) -> None:
        self.sent.append((outbox.id, timezone.now()))
        self._added()

    def add_skipped(self, outbox: OutboxEmail) -> None:
        self.skipped.append(outbox.id)
        self._added()

    def _added(self) -> None:
        if self.since is None:
            self.since = time.monotonic()
        elif time.monotonic() - self.since >= MARK_SECONDS:
            self.record()

    def record(self) -> None:
        table = OutboxEmail._meta.db_table
        with connection.cursor() as cursor:
            if self.sent:
                cursor.execute(
                    f"UPDATE {table} AS o SET status = %s, sent_at = v.sent_at,"  # noqa: S608 - our table name
                    " last_error = '', claim = NULL, claimed_until = NULL"
                    " FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, sent_at)"
                    " WHERE o.id = v.id AND o.claim = %s",
                    [
                        OutboxEmail.Status.SENT,
                        [row_id for row_id, _ in self.sent],
                        [sent_at for _, sent_at in self.sent],
                        self.claim,
                    ],
                )
            if self.skipped:
                cursor.execute(
                    f"UPDATE {table} SET status = %s, claim = NULL, claimed_until = NULL"  # noqa: S608 - our table name
                    " WHERE id = ANY(%s) AND claim = %s",
                    [OutboxEmail.Status.SKIPPED, self.skipped, self.claim],
                )
        self.sent, self.skipped, self.since = [], [], None


def _failed(outbox: OutboxEmail, exc: BaseException) -> None:
    logger.warning("email %s (%s) not sent: %r", outbox.id, outbox.kind, exc)
    error = f"{type(exc).__name__}: {exc}"[:1000]
    if outbox.attempts >= MAX_ATTEMPTS:
        _finish(outbox, status=OutboxEmail.Status.FAILED, last_error=error)
    else:
        _finish(
            outbox,
            next_attempt_at=timezone.now() + _retry_delay(outbox.attempts),
            last_error=error,
        )


def outbox_emails_drain() -> int:
    """Send every due email; returns how many went out. Overlapping runs are safe."""
    # Cleared before the first claim, so a row committed after it schedules the next run.
    get_redis_connection("default").delete(EMAIL_DRAIN_KEY)
    sent = 0
    while True:
        claim = uuid.uuid4()
        batch = _claim(claim=claim)
        sent += _send(batch)
        if len(batch) < BATCH:
            return sent


def _send(batch: list[OutboxEmail]) -> int:
    """Build and send each claimed email over one connection; one failure costs only its
    own email a retry."""
    if not batch:
        return 0
    sent = 0
    pending = list(batch)
    outcomes = _Outcomes(batch[0].claim)
    try:
        with get_connection() as connection:
            while pending:
                outbox = pending[0]
                try:
                    message = import_string(BUILDERS[outbox.kind])(outbox=outbox)
                    if message is not None:
                        connection.send_messages([message])
                except Exception as exc:
                    _failed(outbox, exc)
                else:
                    if message is None:
                        outcomes.add_skipped(outbox)
                    else:
                        outcomes.add_sent(outbox)
                        sent += 1
                pending.pop(0)
    except Exception as exc:
        # The connection itself failed (opening or closing it): every email this drain
        # did not get to is due again later.
        for outbox in pending:
            _failed(outbox, exc)
    finally:
        outcomes.record()
    return sent


def notification_email_message(*, outbox: OutboxEmail) -> EmailMultiAlternatives | None:
    notification, user = outbox.notification, outbox.user
    if notification is None or user is None or not user.is_active or not user.email:
        return None
    subject = f"CryptoVault: {notification.title}"
    text, html = _notification_parts(
        title=notification.title,
        kind_label=notification.get_kind_display().lower(),
        subject=subject,
        link=f"{settings.APP_URL}/notifications",
        app_url=settings.APP_URL,
    )
    body = notification.body or notification.title
    message = _NotificationEmail(
        subject=subject,
        body=text.replace(_BODY, body),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[user.email],
    )
    message.attach_alternative(html.replace(_BODY, escape(body)), "text/html")
    return message


class _NotificationEmail(EmailMultiAlternatives):
    """A notification email whose MIME boundary is drawn up front: 128 random bits, which
    a message written before they were drawn cannot contain. Left to itself the email
    package draws a shorter one and compiles a regular expression to search the whole
    message for it, a fifth of the cost of serializing a notification email."""

    def message(self, **kwargs: Any) -> Any:
        message = super().message(**kwargs)
        if message.is_multipart():
            message.set_boundary(f"=_cv{secrets.token_hex(16)}")
        return message


# Stands for the body in a rendered notification email: a token that HTML escaping
# leaves as it is and no body contains.
_BODY = f"cvbody{uuid.uuid4().hex}"


@lru_cache(maxsize=64)
def _notification_parts(
    *, title: str, kind_label: str, subject: str, link: str, app_url: str
) -> tuple[str, str]:
    """A notification email's text and HTML parts (``email_render`` of the
    ``notification`` templates) with ``_BODY`` for the body: the templates show the body
    as it is (text) and escaped (HTML), so a batch of fills, whose emails differ only by
    the body and the address, renders them once."""
    message = email_render(
        template="notification",
        subject=subject,
        to=[],
        context={"title": title, "body": _BODY, "kind_label": kind_label, "link": link},
    )
    ((html, _),) = message.alternatives
    return str(message.body), str(html)
