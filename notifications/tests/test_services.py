import threading
import time
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from markets.services import coins_seed, prices_record
from notifications import outbox, services
from notifications.models import Notification, OutboxEmail, PriceAlert
from notifications.tests.factories import user_create

pytestmark = pytest.mark.django_db


def test_notification_create_persists_and_emails_opted_in_kinds(django_capture_on_commit_callbacks):
    user = user_create()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        notification = services.notification_create(
            user=user, kind="price_alert", title="Bitcoin is above 1", data={"coin": "bitcoin"}
        )
    assert notification.read is False
    assert Notification.objects.get().data == {"coin": "bitcoin"}
    # After commit: one realtime push and one email (price alerts are emailed by default).
    (deliveries,) = _deliveries(callbacks)
    assert [f["notification"]["id"] for f in deliveries.frames[user.pk]] == [notification.pk]
    assert OutboxEmail.objects.get().notification == notification


def _deliveries(callbacks) -> list:
    """What each after-commit callback will send (they are bound ``_Deliveries.send``)."""
    return [callback.__self__ for callback in callbacks]


def test_notification_create_skips_email_for_kinds_not_opted_in(django_capture_on_commit_callbacks):
    user = user_create()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.notification_create(user=user, kind="order_cancelled", title="Cancelled")
    (deliveries,) = _deliveries(callbacks)
    assert len(deliveries.frames[user.pk]) == 1  # the push only
    assert deliveries.emails == []
    assert not OutboxEmail.objects.exists()


def test_a_batch_sends_one_push_per_user_and_wakes_the_email_drain_once(
    django_capture_on_commit_callbacks,
):
    alice, bob = user_create(), user_create()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with services.deliveries_batched():
            services.notification_create(user=alice, kind="price_alert", title="1")
            services.notification_create(user=bob, kind="order_cancelled", title="2")
            services.notification_create(user=alice, kind="new_login", title="3")
    (deliveries,) = _deliveries(callbacks)
    assert [f["notification"]["title"] for f in deliveries.frames[alice.pk]] == ["1", "3"]
    assert [f["notification"]["title"] for f in deliveries.frames[bob.pk]] == ["2"]
    # Both emails in the outbox (written together), one wake-up for them.
    assert [e.notification.title for e in deliveries.emails] == ["1", "3"]
    assert OutboxEmail.objects.count() == 2


def test_a_batch_left_by_an_exception_sends_nothing(django_capture_on_commit_callbacks):
    user = user_create()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with pytest.raises(RuntimeError), services.deliveries_batched():
            services.notification_create(user=user, kind="price_alert", title="1")
            raise RuntimeError
        services.notification_create(user=user, kind="order_cancelled", title="2")
    (deliveries,) = _deliveries(callbacks)
    assert [f["notification"]["title"] for f in deliveries.frames[user.pk]] == ["2"]


def test_the_drain_emails_each_waiting_notification_once(monkeypatch):
    monkeypatch.setattr(outbox, "BATCH", 2)  # several batches
    user, other = user_create(), user_create()
    for i in range(5):
        services.notification_create(
            user=user, kind="price_alert", title=f"n{i}", body=f"alert {i}"
        )
    services.notification_create(user=user, kind="order_cancelled", title="not emailed")
    services.notification_create(user=other, kind="new_login", title="inactive by now")
    other.is_active = False
    other.save(update_fields=["is_active"])
    assert outbox.outbox_emails_drain() == 5
    assert outbox.outbox_emails_drain() == 0
    # The notifications of one user claimed together go out as one digest.
    assert [m.subject for m in mail.outbox] == [
        "CryptoVault: 2 notifications",
        "CryptoVault: 2 notifications",
        "CryptoVault: n4",
    ]
    bodies = "".join(m.body for m in mail.outbox)
    assert [bodies.count(f"alert {i}") for i in range(5)] == [1] * 5
    assert all(m.to == [user.email] for m in mail.outbox)
    assert OutboxEmail.objects.filter(status="sent", sent_at__isnull=False).count() == 5
    assert OutboxEmail.objects.get(user=other).status == "skipped"


def test_one_drain_run_is_scheduled_at_a_time():
    import json

    from django_redis import get_redis_connection

    redis = get_redis_connection("default")
    redis.delete("celery")
    assert outbox.outbox_emails_wake() is True
    assert outbox.outbox_emails_wake() is False
    # Account emails do not wait for the notifications' later run: theirs comes sooner.
    assert outbox.outbox_emails_wake(soon=True) is True
    assert outbox.outbox_emails_wake(soon=True) is False
    sooner, later = sorted(
        datetime.fromisoformat(json.loads(raw)["headers"]["eta"])
        for raw in redis.lrange("celery", 0, -1)
    )
    gap = outbox.NOTIFICATION_EMAIL_DELAY - outbox.EMAIL_DRAIN_DELAY
    assert abs((later - sooner).total_seconds() - gap) < 0.5
    # A run clears the marks as it starts: the next commit schedules the next run.
    outbox.outbox_emails_drain()
    assert not redis.exists(outbox.EMAIL_DRAIN_KEY)
    assert outbox.outbox_emails_wake() is True
    assert outbox.outbox_emails_wake(soon=True) is True


def test_notification_create_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        services.notification_create(user=user_create(), kind="nope", title="x")


def test_preferences_switch_email_per_kind(django_capture_on_commit_callbacks):
    user = user_create()
    kinds = services.notification_preferences_update(
        user=user, email={"order_cancelled": True, "price_alert": False}
    )
    assert "order_cancelled" in kinds and "price_alert" not in kinds
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.notification_create(user=user, kind="price_alert", title="x")
    (deliveries,) = _deliveries(callbacks)
    assert deliveries.emails == []
    assert not OutboxEmail.objects.exists()


def poll(prices: dict[str, str], *, age_seconds: float = 0, source: str = "coingecko") -> int:
    """A poll stores these prices (``age_seconds`` old, negative is in the future), then
    runs the alerts' tick hook; returns how many alerts it triggered."""
    prices_record(
        prices={coin: Decimal(price) for coin, price in prices.items()},
        source=source,
        as_of=timezone.now() - timedelta(seconds=age_seconds),
    )
    return services.price_alerts_evaluate()


def alert_create(coin_id: str, condition: str, price: str, user=None) -> PriceAlert:
    coins_seed(coin_ids=[coin_id])
    return services.price_alert_create(
        user=user or user_create(), coin_id=coin_id, condition=condition, price=Decimal(price)
    )


def test_price_alerts_fire_once_when_crossed():
    above = alert_create("bitcoin", "above", "70000")
    below = alert_create("ethereum", "below", "3000", user=above.user)
    assert poll({"bitcoin": "69999.99", "ethereum": "3000.01"}) == 0
    assert poll({"bitcoin": "70000.5", "ethereum": "3100"}) == 1
    above.refresh_from_db()
    below.refresh_from_db()
    assert above.active is False and above.triggered_price == Decimal("70000.5")
    assert above.notified_at is None  # due: the task notifies
    assert below.active is True
    assert services.price_alerts_fire() == 1
    # Fires once: a later crossing poll and a repeated task notify nobody again.
    assert poll({"bitcoin": "71000"}) == 0
    assert services.price_alerts_fire() == 0
    notification = Notification.objects.get(user=above.user)
    assert notification.kind == "price_alert"
    assert notification.data["coin"] == "bitcoin"
    assert notification.data["triggered_price"] == "70000.5"
    assert PriceAlert.objects.filter(active=True).count() == 1


@pytest.mark.parametrize(
    "poll_kw",
    [{"source": "simulated"}, {"age_seconds": 3600}, {"age_seconds": -3600}],
    ids=["simulated", "stale", "future"],
)
def test_alerts_never_trigger_on_prices_that_are_not_real_and_current(poll_kw):
    alert = alert_create("bitcoin", "below", "60000")
    assert poll({"bitcoin": "1"}, **poll_kw) == 0
    alert.refresh_from_db()
    assert alert.active is True


def test_price_alerts_evaluate_enqueues_only_when_something_is_due(
    django_capture_on_commit_callbacks,
):
    alert_create("bitcoin", "below", "60000")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert poll({"bitcoin": "60001"}) == 0
        assert poll({"ethereum": "1"}) == 0
        assert poll({"bitcoin": "1"}, source="simulated") == 0
    assert callbacks == []
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert poll({"bitcoin": "60000"}) == 1
    assert len(callbacks) == 1


def test_a_due_alert_whose_message_was_lost_fires_once_after_the_next_poll(
    django_capture_on_commit_callbacks,
):
    alert = alert_create("bitcoin", "below", "60000")
    with django_capture_on_commit_callbacks(execute=False) as lost:
        assert poll({"bitcoin": "59000"}) == 1
    assert len(lost) == 1  # never run: the broker lost the message (Redis restarted empty)
    # The price is back above the alert: it triggers nothing new, but the alert that was
    # due is still due, so the next poll enqueues the task again.
    with django_capture_on_commit_callbacks(execute=False) as again:
        assert poll({"bitcoin": "61000"}) == 0
    assert len(again) == 1
    assert services.price_alerts_fire() == 1
    with django_capture_on_commit_callbacks(execute=False) as after:
        assert poll({"bitcoin": "59000"}) == 0
    assert after == []
    (notification,) = Notification.objects.filter(user=alert.user)
    assert notification.data["triggered_price"] == "59000"


def test_an_alert_reactivated_by_an_operator_fires_again():
    alert = alert_create("bitcoin", "above", "1")
    poll({"bitcoin": "2"})
    services.price_alerts_fire()
    PriceAlert.objects.filter(pk=alert.pk).update(active=True)
    assert poll({"bitcoin": "3"}) == 1
    assert services.price_alerts_fire() == 1
    assert Notification.objects.filter(user=alert.user).count() == 2


def test_price_alerts_fire_in_batches(monkeypatch):
    monkeypatch.setattr(services, "ALERT_FIRE_BATCH", 2)
    user = user_create()
    for _ in range(5):
        alert_create("bitcoin", "above", "1", user=user)
    assert poll({"bitcoin": "2"}) == 5
    assert services.price_alerts_fire() == 5
    assert Notification.objects.filter(user=user, kind="price_alert").count() == 5


@pytest.mark.django_db(transaction=True)
def test_concurrent_polls_and_tasks_notify_each_alert_once():
    user = user_create()
    alerts = [alert_create("bitcoin", "above", str(i), user=user) for i in range(1, 21)]
    prices_record(prices={"bitcoin": Decimal("100")})
    barrier = threading.Barrier(6)
    errors: list[Exception] = []

    def evaluate_and_fire(i: int) -> None:
        barrier.wait()
        try:
            if i % 2:
                services.price_alerts_evaluate()
            services.price_alerts_fire()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=evaluate_and_fire, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    services.price_alerts_fire()  # whatever a run skipped (locked by another) is done now
    notified = Notification.objects.filter(user=user).values_list("data__alert_id", flat=True)
    assert sorted(notified) == sorted(alert.pk for alert in alerts)


@pytest.mark.django_db(transaction=True)
def test_the_task_ignores_prices_in_an_old_message(celery_worker, celery_task_results):
    from notifications.tasks import price_alerts_fire

    alert = alert_create("bitcoin", "below", "60000")
    prices_record(prices={"bitcoin": Decimal("65000")})
    # The message as enqueued before this change (prices as its argument).
    sent = price_alerts_fire.delay({"bitcoin": "1"})
    assert celery_task_results.wait(sent.id) == ("SUCCESS", 0)
    alert.refresh_from_db()
    assert alert.active is True and not Notification.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_opted_in_kinds_are_emailed_by_the_worker(celery_worker):
    user = user_create()
    services.notification_create(user=user, kind="price_alert", title="Bitcoin is above 1")
    services.notification_create(user=user, kind="order_cancelled", title="Cancelled")
    emailed = OutboxEmail.objects.filter(notification__kind="price_alert", status="sent")
    deadline = time.monotonic() + 30  # a loaded CI box; returns as soon as it lands
    # The mail leaves before the worker marks it sent: wait for both.
    while not (mail.outbox and emailed.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [m.subject for m in mail.outbox] == ["CryptoVault: Bitcoin is above 1"]
    assert emailed.exists()


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_notifications_is_emailed_by_the_worker_as_one_digest(celery_worker):
    user = user_create()
    with services.deliveries_batched():
        for i in range(3):
            services.notification_create(
                user=user, kind="order_filled", title="Order filled", body=f"fill {i}"
            )
    emailed = OutboxEmail.objects.filter(user=user, status="sent")
    deadline = time.monotonic() + 30  # a loaded CI box; returns as soon as it lands
    while not (mail.outbox and emailed.count() == 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [m.subject for m in mail.outbox] == ["CryptoVault: 3 notifications"]
    assert [mail.outbox[0].body.count(f"fill {i}") for i in range(3)] == [1, 1, 1]
    assert emailed.count() == 3
    assert Notification.objects.filter(user=user).count() == 3  # in-app: one per event
