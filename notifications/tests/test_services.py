import time
from decimal import Decimal

import pytest
from django.core import mail

from markets.services import coins_seed
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
        services.notification_create(user=user, kind="price_alert", title=f"n{i}")
    services.notification_create(user=user, kind="order_cancelled", title="not emailed")
    services.notification_create(user=other, kind="new_login", title="inactive by now")
    other.is_active = False
    other.save(update_fields=["is_active"])
    assert outbox.outbox_emails_drain() == 5
    assert outbox.outbox_emails_drain() == 0
    assert sorted(m.subject for m in mail.outbox) == [f"CryptoVault: n{i}" for i in range(5)]
    assert all(m.to == [user.email] for m in mail.outbox)
    assert OutboxEmail.objects.filter(status="sent", sent_at__isnull=False).count() == 5
    assert OutboxEmail.objects.get(user=other).status == "skipped"


def test_one_drain_run_is_scheduled_at_a_time():
    from django_redis import get_redis_connection

    assert outbox.outbox_emails_wake() is True
    assert outbox.outbox_emails_wake() is False
    # A run clears the mark as it starts: the next commit schedules the next run.
    outbox.outbox_emails_drain()
    assert not get_redis_connection("default").exists(outbox.EMAIL_DRAIN_KEY)
    assert outbox.outbox_emails_wake() is True


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


def test_price_alerts_fire_once_when_crossed():
    coins_seed(coin_ids=["bitcoin", "ethereum"])
    user = user_create()
    above = services.price_alert_create(
        user=user, coin_id="bitcoin", condition="above", price=Decimal("70000")
    )
    below = services.price_alert_create(
        user=user, coin_id="ethereum", condition="below", price=Decimal("3000")
    )
    assert services.price_alerts_fire(prices={"bitcoin": Decimal("69999.99")}) == 0
    fired = services.price_alerts_fire(
        prices={"bitcoin": Decimal("70000.5"), "ethereum": Decimal("3100")}
    )
    assert fired == 1
    above.refresh_from_db()
    below.refresh_from_db()
    assert above.active is False and above.triggered_price == Decimal("70000.5")
    assert below.active is True
    # Fires once: a later crossing poll does not notify again.
    assert services.price_alerts_fire(prices={"bitcoin": Decimal("71000")}) == 0
    notification = Notification.objects.get(user=user)
    assert notification.kind == "price_alert"
    assert notification.data["coin"] == "bitcoin"
    assert notification.data["triggered_price"] == "70000.5"
    assert PriceAlert.objects.filter(active=True).count() == 1


def test_price_alerts_evaluate_enqueues_only_when_something_is_due(
    django_capture_on_commit_callbacks,
):
    coins_seed(coin_ids=["bitcoin"])
    services.price_alert_create(
        user=user_create(), coin_id="bitcoin", condition="below", price=Decimal("60000")
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert services.price_alerts_evaluate(prices={"bitcoin": Decimal("60001")}) is False
        assert services.price_alerts_evaluate(prices={"ethereum": Decimal("1")}) is False
        assert services.price_alerts_evaluate(prices={}) is False
    assert callbacks == []
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert services.price_alerts_evaluate(prices={"bitcoin": Decimal("60000")}) is True
    assert len(callbacks) == 1


def test_alert_already_beyond_its_price_fires_at_the_next_poll():
    coins_seed(coin_ids=["bitcoin"])
    alert = services.price_alert_create(
        user=user_create(), coin_id="bitcoin", condition="below", price=Decimal("80000")
    )
    assert services.price_alerts_fire(prices={"bitcoin": Decimal("65000")}) == 1
    alert.refresh_from_db()
    assert alert.active is False


def test_price_alerts_fire_in_batches(monkeypatch):
    monkeypatch.setattr(services, "ALERT_FIRE_BATCH", 2)
    coins_seed(coin_ids=["bitcoin"])
    user = user_create()
    for _ in range(5):
        services.price_alert_create(
            user=user, coin_id="bitcoin", condition="above", price=Decimal("1")
        )
    assert services.price_alerts_fire(prices={"bitcoin": Decimal("2")}) == 5
    assert Notification.objects.filter(user=user, kind="price_alert").count() == 5


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
