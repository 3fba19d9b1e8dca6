"""The email outbox against the real PostgreSQL, Redis and a real Celery worker; Django's
locmem email backend (and the variants in ``backends.py``) plays the mail server."""

import email
import socket
import threading
import time

import pytest
from django.core import mail
from django.db import connection, transaction
from django.utils import timezone
from django_redis import get_redis_connection

from accounts.models import User
from accounts.services import user_signup
from accounts.tests.helpers import code_and_token, mails_to
from cryptovault.testing import celery_worker_running
from notifications import outbox
from notifications.models import OutboxEmail
from notifications.tasks import notification_emails_drain
from notifications.tests.backends import GatedBackend, RendezvousBackend
from notifications.tests.factories import user_create

PASSWORD = "Tr4ding-Sparrow-77"


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    """Run ``fn`` in a thread with its own database connection (closed at the end)."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _wait_for(predicate, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout  # a loaded CI box; returns as soon as it holds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
def test_a_verification_email_survives_redis_restarting_empty(api_client):
    email = "outbox@example.com"
    response = api_client.post(
        "/api/v1/auth/signup", {"email": email, "password": PASSWORD}, format="json"
    )
    assert response.status_code == 201
    row = OutboxEmail.objects.get(user__email=email)
    assert row.kind == "verification" and row.status == "pending"
    redis = get_redis_connection("default")
    assert redis.llen("celery") == 1  # the wake-up, waiting in the broker's queue
    # Redis restarts empty before any worker took the wake-up: it is gone.
    redis.flushdb()
    with celery_worker_running():
        assert mail.outbox == []
        notification_emails_drain.delay()  # the sweep beat sends every minute
        assert _wait_for(lambda: OutboxEmail.objects.filter(pk=row.pk, status="sent").exists())
    assert outbox.outbox_emails_drain() == 0  # the next sweep finds nothing to send
    (message,) = mails_to(email, "verification code")
    assert len(mail.outbox) == 1
    code, _ = code_and_token(message)
    response = api_client.post(
        "/api/v1/auth/verify-email", {"email": email, "code": code}, format="json"
    )
    assert response.status_code == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
def test_overlapping_drains_send_each_email_once(settings, monkeypatch):
    settings.EMAIL_BACKEND = "notifications.tests.backends.RendezvousBackend"
    RendezvousBackend.reset(parties=2)  # both drains are mid-send at the same time
    monkeypatch.setattr(outbox, "BATCH", 5)
    users = [user_create() for _ in range(20)]
    for user in users:
        outbox.outbox_email_add(kind="welcome", user=user)
    drains = [_in_thread(outbox.outbox_emails_drain) for _ in range(2)]
    for thread, _ in drains:
        thread.join(timeout=60)
    outcomes = [outcome for _, outcome in drains]
    assert all("error" not in outcome for outcome in outcomes), outcomes
    assert all(outcome["value"] > 0 for outcome in outcomes)  # both did a share
    assert sum(outcome["value"] for outcome in outcomes) == 20
    assert sorted(m.to[0] for m in mail.outbox) == sorted(u.email for u in users)
    assert OutboxEmail.objects.filter(status="sent").count() == 20


@pytest.mark.django_db
def test_a_refused_email_is_retried_later_and_never_holds_up_the_others(settings):
    settings.EMAIL_BACKEND = "notifications.tests.backends.BouncingBackend"
    bounced = user_create(email="bounce@example.com")
    others = [user_create() for _ in range(2)]
    refused = outbox.outbox_email_add(kind="welcome", user=bounced)  # first in line
    for user in others:
        outbox.outbox_email_add(kind="welcome", user=user)

    assert outbox.outbox_emails_drain() == 2
    assert sorted(m.to[0] for m in mail.outbox) == sorted(u.email for u in others)
    refused.refresh_from_db()
    assert (refused.status, refused.attempts, refused.claimed_until) == ("pending", 1, None)
    assert refused.last_error.startswith("SMTPRecipientsRefused")
    assert refused.next_attempt_at > timezone.now()
    assert outbox.outbox_emails_drain() == 0  # not due again yet: not even tried
    refused.refresh_from_db()
    assert refused.attempts == 1

    # Due again, and the server takes it this time.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    OutboxEmail.objects.filter(pk=refused.pk).update(next_attempt_at=timezone.now())
    assert outbox.outbox_emails_drain() == 1
    refused.refresh_from_db()
    assert (refused.status, refused.attempts, refused.last_error) == ("sent", 2, "")
    assert len(mails_to(bounced.email)) == 1


@pytest.mark.django_db
def test_an_email_refused_every_time_backs_off_then_gives_up(settings):
    settings.EMAIL_BACKEND = "notifications.tests.backends.BouncingBackend"
    refused = outbox.outbox_email_add(kind="welcome", user=user_create(email="bounce@example.com"))
    delays = []
    for attempt in range(1, outbox.MAX_ATTEMPTS + 1):
        OutboxEmail.objects.filter(pk=refused.pk).update(next_attempt_at=timezone.now())
        tried_at = timezone.now()
        assert outbox.outbox_emails_drain() == 0
        refused.refresh_from_db()
        assert refused.attempts == attempt
        delays.append(refused.next_attempt_at - tried_at)
    assert refused.status == "failed"
    assert delays[:3] == sorted(delays[:3]) and delays[0] < delays[2]  # exponential backoff
    # Given up: never tried again.
    OutboxEmail.objects.filter(pk=refused.pk).update(next_attempt_at=timezone.now())
    assert outbox.outbox_emails_drain() == 0
    refused.refresh_from_db()
    assert refused.attempts == outbox.MAX_ATTEMPTS
    assert mail.outbox == []


@pytest.mark.django_db
def test_an_unreachable_mail_server_leaves_every_email_due_later(settings):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 1
    for _ in range(3):
        outbox.outbox_email_add(kind="welcome", user=user_create())
    assert outbox.outbox_emails_drain() == 0  # no exception: each row records its failure
    rows = OutboxEmail.objects.all()
    assert {(r.status, r.attempts, r.claimed_until) for r in rows} == {("pending", 1, None)}
    assert all(r.next_attempt_at > timezone.now() for r in rows)
    assert all("ConnectionRefusedError" in r.last_error for r in rows)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
def test_no_transaction_or_row_lock_is_held_while_the_mail_server_is_talked_to(settings):
    settings.EMAIL_BACKEND = "notifications.tests.backends.GatedBackend"
    GatedBackend.reset()
    user = user_signup(email="locks@example.com", password=PASSWORD)
    row = OutboxEmail.objects.get(user=user)
    drain, outcome = _in_thread(outbox.outbox_emails_drain)
    try:
        assert GatedBackend.entered.wait(timeout=60)  # the drain is inside send_messages
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%%'"
            )
            assert cursor.fetchone()[0] == 0
        # NOWAIT fails at once if anyone holds these rows: nobody does.
        with transaction.atomic():
            OutboxEmail.objects.select_for_update(nowait=True).get(pk=row.pk)
            User.objects.select_for_update(nowait=True).get(pk=user.pk)
            User.objects.filter(pk=user.pk).update(name="Renamed meanwhile")
            OutboxEmail.objects.filter(pk=row.pk).update(last_error="looked at meanwhile")
    finally:
        GatedBackend.gate.set()
        drain.join(timeout=60)
    assert outcome == {"value": 1}
    row.refresh_from_db()
    assert (row.status, row.claimed_until) == ("sent", None)
    assert len(mails_to(user.email, "verification code")) == 1


@pytest.mark.django_db
def test_a_notification_email_is_what_its_templates_render_for_any_body(settings):
    """A batch renders the notification templates once, with a stand-in for the body:
    each email is still exactly what rendering them with its own body gives, its body
    escaped in the HTML part and as it is in the text part."""
    from cryptovault.emails import email_render
    from notifications.models import Notification

    settings.APP_URL = "https://vault.example"
    user = user_create()
    bodies = ["", "Filled at 65000 usd.", "<b>&amp; \"quoted\" 'single'</b> \\ {{ x }} %s"]
    for body in bodies:
        notification = Notification.objects.create(
            user=user, kind="order_filled", title="Order <filled> & done", body=body
        )
        row = OutboxEmail.objects.create(kind="notification", user=user, notification=notification)
        message = outbox.notification_email_message(outbox=row)
        expected = email_render(
            template="notification",
            subject="CryptoVault: Order <filled> & done",
            to=[user.email],
            context={
                "title": notification.title,
                "body": body or notification.title,
                "kind_label": "order filled",
                "link": "https://vault.example/notifications",
            },
        )
        _assert_same_email(message, expected)


def _assert_same_email(message, expected) -> None:
    """``message`` is ``expected`` (headers and both parts), also as sent: a
    multipart/alternative whose parts are those two."""
    assert (message.subject, message.to, message.from_email) == (
        expected.subject,
        expected.to,
        expected.from_email,
    )
    assert message.body == expected.body
    assert message.alternatives == expected.alternatives
    sent = email.message_from_bytes(message.message().as_bytes())
    assert sent.get_content_type() == "multipart/alternative"
    text, html = sent.get_payload()
    assert text.get_payload(decode=True).decode() == expected.body
    assert html.get_payload(decode=True).decode() == expected.alternatives[0][0]


@pytest.mark.django_db
def test_a_drain_records_its_batch_together_each_row_once(settings, django_assert_max_num_queries):
    """One claim and one mark for a batch of sent emails (whatever its size), skipped
    rows marked too; each row sent once, with its own time."""
    users = [user_create() for _ in range(30)]
    for user in users:
        outbox.outbox_email_add(kind="welcome", user=user)
    gone = user_create(email_verified_at=None)  # no welcome for an unverified address
    outbox.outbox_email_add(kind="welcome", user=gone)
    # claim + read (rows, then their users) + the sent rows' mark + the skipped rows'
    # mark + the empty claim.
    with django_assert_max_num_queries(6):
        assert outbox.outbox_emails_drain() == 30
    assert sorted(m.to[0] for m in mail.outbox) == sorted(u.email for u in users)
    rows = OutboxEmail.objects.all()
    assert {(r.status, r.claim, r.claimed_until) for r in rows if r.user_id != gone.pk} == {
        ("sent", None, None)
    }
    assert all(r.sent_at is not None for r in rows if r.status == "sent")
    assert OutboxEmail.objects.get(user=gone).status == "skipped"


def _notify(user, title: str, body: str = "", kind: str = "order_filled"):
    """A notification of ``user`` and its outbox row, as a fill writes them."""
    from notifications.models import Notification

    notification = Notification.objects.create(user=user, kind=kind, title=title, body=body)
    return OutboxEmail.objects.create(kind="notification", user=user, notification=notification)


@pytest.mark.django_db
def test_a_users_notification_emails_claimed_together_go_out_as_one_digest(settings):
    settings.APP_URL = "https://vault.example"
    bot, other = user_create(), user_create()
    fills = [_notify(bot, "Order filled", f"Your market order {i} filled.") for i in range(3)]
    alert = _notify(bot, "Bitcoin is above 1", "The price crossed 1 usd.", kind="price_alert")
    single = _notify(other, "Order filled", "Your limit order filled.")
    welcome = outbox.outbox_email_add(kind="welcome", user=bot)  # never digested

    assert outbox.outbox_emails_drain() == 6  # rows that went out
    assert sorted((m.to[0], m.subject) for m in mail.outbox) == sorted(
        [
            (bot.email, "CryptoVault: 4 notifications"),
            (bot.email, "Welcome to CryptoVault"),
            (other.email, "CryptoVault: Order filled"),
        ]
    )
    (digest,) = mails_to(bot.email, "notifications")
    # Each notification once, oldest first, in both parts.
    [(html, _)] = digest.alternatives
    for part in (digest.body, html):
        positions = [part.index(f"Your market order {i} filled.") for i in range(3)]
        positions.append(part.index("The price crossed 1 usd."))
        assert positions == sorted(positions)
        assert "https://vault.example/notifications" in part
    assert "order filled and price alert emails" in html
    # A single notification email is exactly the usual one.
    (usual,) = mails_to(other.email)
    assert usual.body == outbox.notification_email_message(outbox=single).body
    rows = {row.pk: row for row in OutboxEmail.objects.all()}
    assert {rows[o.pk].status for o in [*fills, alert, single, welcome]} == {"sent"}
    # The digest's rows were sent together.
    assert len({rows[o.pk].sent_at for o in [*fills, alert]}) == 1


@pytest.mark.django_db
def test_a_digest_is_what_its_templates_render_for_any_notifications(settings):
    """The drain renders the digest and item templates once, with stand-ins: each
    digest is still exactly what rendering them with its notifications gives."""
    from django.template.loader import render_to_string
    from django.utils.safestring import mark_safe

    from cryptovault.emails import email_render

    settings.APP_URL = "https://vault.example"
    user = user_create()
    contents = [
        ("Order <filled> & done", "Filled at 65000 usd."),
        ("Bitcoin {above} 1", "<b>&amp; \"quoted\" 'single'</b> \\ {{ x }} {count} %s"),
        ("Order filled", ""),
    ]
    rows = [_notify(user, title, body) for title, body in contents]
    rows = list(OutboxEmail.objects.filter(pk__in=[r.pk for r in rows]).order_by("id"))
    message = outbox.notification_digest_message(outboxes=rows)

    items = [{"title": title, "body": body} for title, body in contents]
    expected = email_render(
        template="notification_digest",
        subject="CryptoVault: 3 notifications",
        to=[user.email],
        context={
            "count": 3,
            "items_text": "".join(
                render_to_string("emails/_notification_item.txt", item) for item in items
            ),
            "items_html": mark_safe(  # noqa: S308 - rendered by the (escaping) templates
                "".join(render_to_string("emails/_notification_item.html", item) for item in items)
            ),
            "kind_labels": "order filled",
            "link": "https://vault.example/notifications",
        },
    )
    _assert_same_email(message, expected)
    assert "Bitcoin {above} 1\n<b>&amp;" in message.body  # the text part quotes as it is
    assert "&lt;b&gt;&amp;amp;" in message.alternatives[0][0]  # the HTML part escapes


@pytest.mark.django_db
def test_a_refused_digest_leaves_all_its_rows_due_together_then_sends_them(settings):
    settings.EMAIL_BACKEND = "notifications.tests.backends.BouncingBackend"
    bounced, other = user_create(email="bounce@example.com"), user_create()
    rows = [_notify(bounced, f"n{i}", f"body {i}") for i in range(3)]
    fine = _notify(other, "Order filled", "fine")

    assert outbox.outbox_emails_drain() == 1
    assert [m.to for m in mail.outbox] == [[other.email]]
    refused = OutboxEmail.objects.filter(pk__in=[r.pk for r in rows])
    assert {(r.status, r.attempts, r.claimed_until) for r in refused} == {("pending", 1, None)}
    assert len({r.next_attempt_at for r in refused}) == 1  # due again together
    assert all(r.last_error.startswith("SMTPRecipientsRefused") for r in refused)
    assert OutboxEmail.objects.get(pk=fine.pk).status == "sent"

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    refused.update(next_attempt_at=timezone.now())
    assert outbox.outbox_emails_drain() == 3
    (digest,) = mails_to(bounced.email)
    assert digest.subject == "CryptoVault: 3 notifications"
    assert {(r.status, r.attempts) for r in refused} == {("sent", 2)}


@pytest.mark.django_db
def test_new_logins_are_never_digested_and_a_digest_has_at_most_digest_max(monkeypatch):
    monkeypatch.setattr(outbox, "DIGEST_MAX", 2)
    user = user_create()
    for i in range(5):
        _notify(user, f"fill {i}", f"body {i}")
    _notify(user, "New login", "From a new browser.", kind="new_login")

    assert outbox.outbox_emails_drain() == 6
    assert sorted(m.subject for m in mail.outbox) == sorted(
        [
            "CryptoVault: 2 notifications",
            "CryptoVault: 2 notifications",
            "CryptoVault: fill 4",
            "CryptoVault: New login",
        ]
    )
    bodies = "".join(m.body for m in mail.outbox)
    assert all(bodies.count(f"body {i}") == 1 for i in range(5))


@pytest.mark.django_db
def test_an_inactive_users_digest_is_skipped():
    user = user_create()
    rows = [_notify(user, f"n{i}") for i in range(3)]
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert outbox.outbox_emails_drain() == 0
    assert mail.outbox == []
    assert {r.status for r in OutboxEmail.objects.filter(pk__in=[r.pk for r in rows])} == {
        "skipped"
    }


@pytest.mark.django_db
def test_notification_emails_serialize_to_the_bytes_compat32_writes(settings):
    """Notification emails are written with a policy that skips building a Header for
    headers that fit on their line: byte for byte what Django's compat32 writes."""
    from email.policy import compat32

    from notifications.models import Notification

    settings.DEFAULT_FROM_EMAIL = "CryptoVault Notifications <no-reply@cryptovault.example>"
    user = user_create(email="trader@example.com")
    titles = [
        "Order filled",
        "Ordre exécuté à 65 000 €",  # encoded words
        "A title long enough that the subject line has to be folded by the email package",
        "x" * (78 - len("Subject: CryptoVault: ")),  # fits exactly
        "x" * (79 - len("Subject: CryptoVault: ")),  # one too many
        "two  spaces\tand a tab =?utf-8?q?looks_encoded?=",
    ]
    rows = []
    for title in titles:
        notification = Notification.objects.create(
            user=user, kind="order_filled", title=title, body=f"{title} — body"
        )
        rows.append(
            OutboxEmail.objects.create(kind="notification", user=user, notification=notification)
        )
    messages = [outbox.notification_email_message(outbox=row) for row in rows]
    messages.append(outbox.notification_digest_message(outboxes=rows))
    for message in messages:
        sent = message.message()
        for linesep in ("\n", "\r\n"):
            fast = sent.as_bytes(linesep=linesep)
            sent.policy = compat32
            assert fast == sent.as_bytes(linesep=linesep)
            sent.policy = outbox._SHORT_HEADERS
    # Header by header, at and around the line length.
    for name, value in [
        ("Subject", "a" * 69),
        ("Subject", "a" * 70),
        ("Subject", " leading"),
        ("Subject", "trailing "),
        ("To", "Ada <ada@example.com>, Grace <grace@example.com>"),
        ("Subject", "caf\u00e9"),
        ("Subject", "line\nbreak"),
    ]:
        for linesep in ("\n", "\r\n"):
            policy = outbox._SHORT_HEADERS.clone(linesep=linesep)
            reference = compat32.clone(linesep=linesep)
            assert policy.fold_binary(name, value) == reference.fold_binary(name, value)
            assert policy.fold(name, value) == reference.fold(name, value)
