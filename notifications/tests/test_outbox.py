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
        assert (message.subject, message.to, message.from_email) == (
            expected.subject,
            expected.to,
            expected.from_email,
        )
        assert message.body == expected.body
        assert message.alternatives == expected.alternatives
        # As sent: a multipart/alternative whose parts are those two.
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
    # claim + read + the sent rows' mark + the skipped rows' mark + the empty claim.
    with django_assert_max_num_queries(5):
        assert outbox.outbox_emails_drain() == 30
    assert sorted(m.to[0] for m in mail.outbox) == sorted(u.email for u in users)
    rows = OutboxEmail.objects.all()
    assert {(r.status, r.claim, r.claimed_until) for r in rows if r.user_id != gone.pk} == {
        ("sent", None, None)
    }
    assert all(r.sent_at is not None for r in rows if r.status == "sent")
    assert OutboxEmail.objects.get(user=gone).status == "skipped"
