"""The email outbox: every email the platform sends goes through one PostgreSQL table.

A change that causes an email writes an :class:`~notifications.models.OutboxEmail` row in
its own transaction; after commit it wakes the drain (a Celery task). Beat also runs the
drain every minute, so a wake-up lost with Redis delays an email, never loses it.

The drain never talks to the mail server inside a transaction:
1. claim a batch in one statement (``FOR UPDATE SKIP LOCKED``, and a lease:
   ``claimed_until`` and a ``claim`` id);
2. build and send each message with no transaction open and no row locked: account
   emails one by one, a user's notification emails of the batch as one digest
   (:func:`notification_digest_message`; a single one is the usual email);
3. mark the rows sent (or skipped) together, one statement for what was sent within
   ``MARK_SECONDS`` (the rows of a failed message due again later, with backoff, each
   counting its own attempts), only where the lease is still this drain's.
Two drains never claim the same row while a lease runs. An email whose send succeeded
but whose mark was lost (a crash between the two) goes out again when its lease ends:
at least once, as with any mail queue.
"""

import logging
import secrets
import time
import uuid
from datetime import datetime, timedelta
from email.policy import Compat32
from functools import cache, lru_cache, partial
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import connection, transaction
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.html import escape
from django.utils.module_loading import import_string
from django.utils.safestring import mark_safe
from django_redis import get_redis_connection

from accounts.models import User
from cryptovault.emails import email_render
from notifications.models import Notification, OutboxEmail

logger = logging.getLogger(__name__)

# A claim is what a digest can gather: a user's notification emails due together but
# claimed in two batches go out as two emails.
BATCH = 500
# Notifications per digest at most; a longer run of one user's is split.
DIGEST_MAX = 50
# Kinds always emailed on their own, never inside a digest: a new login is a security
# notice, which must not hide among a bot's fills.
DIGEST_ALONE: frozenset[str] = frozenset({Notification.Kind.NEW_LOGIN})
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

# The drain is woken at most once per delay: a commit that leaves emails waiting
# schedules a run unless one is already scheduled, and the run sends everything waiting
# by then. Account emails (a code the user waits for) wake it after EMAIL_DRAIN_DELAY;
# notification emails after NOTIFICATION_EMAIL_DELAY, the window in which a busy user's
# notifications gather into one digest. Each delay has its own mark, so a scheduled
# notification run never holds up a verification code. A mark stops suppressing new runs
# after EMAIL_DRAIN_MARK_SECONDS, should a scheduled run be lost.
EMAIL_DRAIN_KEY = "cv:notifications:email-drain-scheduled"
EMAIL_DRAIN_DELAY = 1.0
NOTIFICATION_EMAIL_DELAY = 3.0
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
    transaction.on_commit(partial(outbox_emails_wake, soon=True), robust=True)
    return outbox


def _drain_key(*, soon: bool) -> str:
    return f"{EMAIL_DRAIN_KEY}:soon" if soon else EMAIL_DRAIN_KEY


def outbox_emails_wake(*, soon: bool = False) -> bool:
    """Schedule a drain run unless one is already scheduled: after EMAIL_DRAIN_DELAY if
    ``soon`` (account emails), else after NOTIFICATION_EMAIL_DELAY. Returns whether this
    call scheduled one."""
    # notifications.tasks imports this module (tasks call the outbox).
    from notifications.tasks import notification_emails_drain

    key = _drain_key(soon=soon)
    redis = get_redis_connection("default")
    if not redis.set(key, 1, nx=True, ex=EMAIL_DRAIN_MARK_SECONDS):
        return False
    try:
        notification_emails_drain.apply_async(
            countdown=EMAIL_DRAIN_DELAY if soon else NOTIFICATION_EMAIL_DELAY
        )
    except Exception:
        # Not scheduled after all: let the next commit try again (beat drains meanwhile).
        redis.delete(key)
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
    rows = list(
        OutboxEmail.objects.filter(id__in=ids, claim=claim)
        .select_related("notification")
        .order_by("next_attempt_at", "id")
    )
    # Each user read once, not once per row: a busy user's digest has many rows.
    users = User.objects.in_bulk({outbox.user_id for outbox in rows if outbox.user_id})
    for outbox in rows:
        if outbox.user_id is not None:
            # None if the user went meanwhile (with their rows): nothing to send.
            outbox.user = users.get(outbox.user_id)
    return rows


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

    def add_sent(self, rows: list[OutboxEmail]) -> None:
        """``rows`` went out in one message (one email, or a digest)."""
        sent_at = timezone.now()
        self.sent.extend((outbox.id, sent_at) for outbox in rows)
        self._added()

    def add_skipped(self, rows: list[OutboxEmail]) -> None:
        self.skipped.extend(outbox.id for outbox in rows)
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


def _failed(rows: list[OutboxEmail], exc: BaseException) -> None:
    """The message of ``rows`` was not sent: each row is due again after its own backoff
    (rows that failed together with as many attempts stay together), or failed for good
    after MAX_ATTEMPTS."""
    logger.warning(
        "email %s (%s) not sent: %r", ",".join(str(o.id) for o in rows), rows[0].kind, exc
    )
    error = f"{type(exc).__name__}: {exc}"[:1000]
    now = timezone.now()
    for outbox in rows:
        if outbox.attempts >= MAX_ATTEMPTS:
            _finish(outbox, status=OutboxEmail.Status.FAILED, last_error=error)
        else:
            _finish(outbox, next_attempt_at=now + _retry_delay(outbox.attempts), last_error=error)


def outbox_emails_drain() -> int:
    """Send every due email; returns how many outbox rows went out (a digest carries
    several). Overlapping runs are safe."""
    # Cleared before the first claim, so a row committed after it schedules the next run.
    get_redis_connection("default").delete(_drain_key(soon=False), _drain_key(soon=True))
    sent = 0
    while True:
        claim = uuid.uuid4()
        batch = _claim(claim=claim)
        sent += _send(batch)
        if len(batch) < BATCH:
            return sent


def _messages(batch: list[OutboxEmail]) -> list[list[OutboxEmail]]:
    """The claimed rows as messages to send, in the order of each message's first row:
    an account email alone, a user's notification emails together (at most DIGEST_MAX
    a message; kinds in DIGEST_ALONE alone)."""
    messages: list[list[OutboxEmail]] = []
    digests: dict[int, list[OutboxEmail]] = {}
    for outbox in batch:
        notification = outbox.notification
        if (
            outbox.kind != OutboxEmail.Kind.NOTIFICATION
            or notification is None
            or outbox.user_id is None
            or notification.kind in DIGEST_ALONE
        ):
            messages.append([outbox])
            continue
        digest = digests.get(outbox.user_id)
        if digest is None or len(digest) >= DIGEST_MAX:
            digest = digests[outbox.user_id] = []
            messages.append(digest)
        digest.append(outbox)
    return messages


def _message(rows: list[OutboxEmail]) -> EmailMultiAlternatives | None:
    if len(rows) > 1:
        return notification_digest_message(outboxes=rows)
    (outbox,) = rows
    return import_string(BUILDERS[outbox.kind])(outbox=outbox)


def _send(batch: list[OutboxEmail]) -> int:
    """Build and send each message over one connection; a failure costs only the rows of
    its own message a retry."""
    if not batch:
        return 0
    sent = 0
    messages = _messages(batch)
    done = 0
    outcomes = _Outcomes(batch[0].claim)
    try:
        with get_connection() as connection:
            for rows in messages:
                try:
                    message = _message(rows)
                    if message is not None:
                        connection.send_messages([message])
                except Exception as exc:
                    _failed(rows, exc)
                else:
                    if message is None:
                        outcomes.add_skipped(rows)
                    else:
                        outcomes.add_sent(rows)
                        sent += len(rows)
                done += 1
    except Exception as exc:
        # The connection itself failed (opening or closing it): every email this drain
        # did not get to is due again later.
        for rows in messages[done:]:
            _failed(rows, exc)
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
    message for it, a fifth of the cost of serializing a notification email. Written
    with ``_SHORT_HEADERS``: the same bytes, its headers written for less (the boundary,
    22 characters of ``token_urlsafe``, keeps its Content-Type on one line)."""

    def message(self, **kwargs: Any) -> Any:
        message = super().message(**kwargs)
        if message.is_multipart():
            message.set_boundary(f"=_cv{secrets.token_urlsafe(16)}")
        message.policy = _SHORT_HEADERS
        return message


class _ShortHeadersCompat32(Compat32):
    """The ``compat32`` policy Django's messages use, writing a header that fits on its
    line, printable ASCII with no leading, trailing or doubled whitespace, as it is:
    exactly what ``compat32`` writes for it, without the ``email.header.Header`` that
    ``compat32`` builds for every header (most of the cost of serializing a message)."""

    def fold(self, name: str, value: Any) -> str:
        if self._fits(name, value):
            return f"{name}: {value}{self.linesep}"
        return super().fold(name, value)

    def fold_binary(self, name: str, value: Any) -> bytes:
        if self._fits(name, value):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)

    def _fits(self, name: str, value: Any) -> bool:
        return (
            isinstance(value, str)
            and value.isascii()
            and value.isprintable()
            and len(name) + 2 + len(value) <= (self.max_line_length or 0)
            and value == value.strip()
            and "  " not in value
        )


_SHORT_HEADERS = _ShortHeadersCompat32()


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


def notification_digest_message(*, outboxes: list[OutboxEmail]) -> EmailMultiAlternatives | None:
    """One email listing the notifications of several outbox rows of one user (as
    ``_messages`` groups them), oldest first: the ``notification_digest`` templates, with
    each notification as the ``_notification_item`` templates render it."""
    user = outboxes[0].user
    if user is None or not user.is_active or not user.email:
        return None
    notifications = [outbox.notification for outbox in outboxes if outbox.notification]
    present = {n.kind for n in notifications}
    labels = [kind.label.lower() for kind in Notification.Kind if kind in present]
    kind_labels = labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"
    text, html = _digest_parts(
        kind_labels=kind_labels,
        link=f"{settings.APP_URL}/notifications",
        app_url=settings.APP_URL,
    )
    item_text, item_html = _digest_item_parts()
    count = len(notifications)
    items = [(n.title, n.body) for n in notifications]
    message = _NotificationEmail(
        subject=f"CryptoVault: {count} notifications",
        body=text.format(
            count=count,
            items="".join(item_text.format(title=title, body=body) for title, body in items),
        ),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[user.email],
    )
    items_html = "".join(
        item_html.format(title=escape(title), body=escape(body)) for title, body in items
    )
    message.attach_alternative(html.format(count=count, items=items_html), "text/html")
    return message


# Stand for the count, the items, and an item's title in a rendered digest (as _BODY).
_COUNT = f"cvcount{uuid.uuid4().hex}"
_ITEMS = f"cvitems{uuid.uuid4().hex}"
_TITLE = f"cvtitle{uuid.uuid4().hex}"


def _format_template(rendered: str, **fields: str) -> str:
    """``rendered`` as a ``str.format`` template: each stand-in becomes its field, so one
    pass fills them all (what is filled in is never searched for another stand-in)."""
    template = rendered.replace("{", "{{").replace("}", "}}")
    for field, stand_in in fields.items():
        template = template.replace(stand_in, f"{{{field}}}")
    return template


@lru_cache(maxsize=64)
def _digest_parts(*, kind_labels: str, link: str, app_url: str) -> tuple[str, str]:
    """A digest's text and HTML parts as format templates (``count``, ``items``)."""
    message = email_render(
        template="notification_digest",
        subject=f"CryptoVault: {_COUNT} notifications",
        to=[],
        context={
            "count": _COUNT,
            "items_text": _ITEMS,
            "items_html": mark_safe(_ITEMS),  # noqa: S308 - our own stand-in
            "kind_labels": kind_labels,
            "link": link,
        },
    )
    ((html, _),) = message.alternatives
    return (
        _format_template(str(message.body), count=_COUNT, items=_ITEMS),
        _format_template(str(html), count=_COUNT, items=_ITEMS),
    )


@cache
def _digest_item_parts() -> tuple[str, str]:
    """One digest item's text and HTML as format templates (``title``, ``body``; the
    HTML one takes them escaped)."""
    context = {"title": _TITLE, "body": _BODY}
    return (
        _format_template(
            render_to_string("emails/_notification_item.txt", context), title=_TITLE, body=_BODY
        ),
        _format_template(
            render_to_string("emails/_notification_item.html", context), title=_TITLE, body=_BODY
        ),
    )
