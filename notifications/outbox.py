"""The email outbox: every email the platform sends goes through one PostgreSQL table.

A change that causes an email writes an :class:`~notifications.models.OutboxEmail` row in
its own transaction; after commit it wakes the drain (a Celery task). Beat also runs the
drain every minute, so a wake-up lost with Redis delays an email, never loses it.

The drain never talks to the mail server inside a transaction:
1. claim a batch in a short transaction (``FOR UPDATE SKIP LOCKED``, then a lease:
   ``claimed_until`` and a ``claim`` id) and commit;
2. build and send each message with no transaction open and no row locked;
3. mark each row sent (or due again later, with backoff) in its own short statement,
   only if the lease is still this drain's.
Two drains never claim the same row while a lease runs. An email whose send succeeded
but whose mark was lost (a crash between the two) goes out again when its lease ends:
at least once, as with any mail queue.
"""

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
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
    """Lease up to BATCH due rows to this drain; the transaction ends before any send."""
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            OutboxEmail.objects.select_for_update(skip_locked=True)
            .filter(status=OutboxEmail.Status.PENDING, next_attempt_at__lte=now)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .order_by("next_attempt_at", "id")
            .values_list("id", flat=True)[:BATCH]
        )
        # The attempt counts as it is claimed: a message that kills its drain still
        # reaches MAX_ATTEMPTS.
        OutboxEmail.objects.filter(id__in=ids).update(
            claim=claim, claimed_until=now + LEASE, attempts=F("attempts") + 1
        )
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
                        _finish(outbox, status=OutboxEmail.Status.SKIPPED)
                    else:
                        _finish(
                            outbox,
                            status=OutboxEmail.Status.SENT,
                            sent_at=timezone.now(),
                            last_error="",
                        )
                        sent += 1
                pending.pop(0)
    except Exception as exc:
        # The connection itself failed (opening or closing it): every email this drain
        # did not get to is due again later.
        for outbox in pending:
            _failed(outbox, exc)
    return sent


def notification_email_message(*, outbox: OutboxEmail) -> EmailMultiAlternatives | None:
    notification, user = outbox.notification, outbox.user
    if notification is None or user is None or not user.is_active or not user.email:
        return None
    return email_render(
        template="notification",
        subject=f"CryptoVault: {notification.title}",
        to=[user.email],
        context={
            "title": notification.title,
            "body": notification.body or notification.title,
            "kind_label": notification.get_kind_display().lower(),
            "link": f"{settings.APP_URL}/notifications",
        },
    )
