from decimal import Decimal

import pytest
from django.db import transaction
from django.test import override_settings

from accounts.models import User
from cryptovault.exceptions import ApplicationError
from orders import services
from orders.models import USD, Balance, LedgerEntry, Order
from orders.tests.factories import coins_and_prices, user_create

pytestmark = pytest.mark.django_db


def bal(user, asset=USD) -> tuple[Decimal, Decimal]:
    b = Balance.objects.filter(user=user, asset=asset).first()
    return (b.available, b.locked) if b else (Decimal(0), Decimal(0))


def place_or_repeat(user, **kw) -> tuple[Order, bool]:
    """``order_place``, a 0.1 bitcoin market buy unless ``kw`` says otherwise: the order
    and whether this call created it."""
    kw.setdefault("coin_id", "bitcoin")
    kw.setdefault("side", "buy")
    kw.setdefault("type", "market")
    kw["quantity"] = Decimal(kw.get("quantity", "0.1"))
    if kw.get("limit_price") is not None:
        kw["limit_price"] = Decimal(kw["limit_price"])
    return services.order_place(user=user, **kw)


def place(user, **kw) -> Order:
    order, created = place_or_repeat(user, **kw)
    assert created
    return order


def process(user) -> None:
    services.order_queue_process(user_id=user.pk)


def match(prices: dict[str, str], **poll) -> int:
    """A poll stores these prices (see ``coins_and_prices``), then limit matching runs."""
    coins_and_prices(prices, **poll)
    return services.limit_orders_fill()


@pytest.fixture(autouse=True)
def _market():
    coins_and_prices({"bitcoin": "65000", "ethereum": "3000"})


def test_market_buy_reserves_with_buffer_then_fills_with_fee_and_releases_the_rest():
    user = user_create(usd="10000")
    order = place(user, quantity="0.1")
    assert order.status == "pending"
    # 6500 notional + 6.5 fee, plus the 2% buffer.
    assert bal(user) == (Decimal("10000") - Decimal("6636.63"), Decimal("6636.63"))
    process(user)
    order.refresh_from_db()
    assert order.status == "filled"
    assert order.filled_price == Decimal("65000")
    assert order.fee == Decimal("6.5")
    assert bal(user) == (Decimal("3493.5"), 0)
    assert bal(user, "bitcoin") == (Decimal("0.1"), 0)
    entries = {(e.asset, e.kind): e.amount for e in LedgerEntry.objects.filter(order=order)}
    assert entries == {
        ("usd", "trade_buy"): Decimal("-6500"),
        ("usd", "fee"): Decimal("-6.5"),
        ("bitcoin", "trade_buy"): Decimal("0.1"),
    }


def test_market_buy_of_everything_reserves_only_what_is_available():
    user = user_create(usd="6506.5")
    place(user, quantity="0.1")
    assert bal(user) == (0, Decimal("6506.5"))
    process(user)
    assert bal(user) == (0, 0)
    assert bal(user, "bitcoin") == (Decimal("0.1"), 0)


def test_market_sell_credits_proceeds_minus_fee():
    user = user_create(usd="0", bitcoin="1")
    order = place(user, side="sell", quantity="0.5")
    assert bal(user, "bitcoin") == (Decimal("0.5"), Decimal("0.5"))
    process(user)
    order.refresh_from_db()
    assert (order.status, order.fee) == ("filled", Decimal("32.5"))
    assert bal(user) == (Decimal("32467.5"), 0)
    assert bal(user, "bitcoin") == (Decimal("0.5"), 0)


@pytest.mark.parametrize(
    ("funding", "order"),
    [
        ({"usd": "6506.49"}, {"quantity": "0.1"}),
        ({"usd": "100", "bitcoin": "0.1"}, {"side": "sell", "quantity": "0.10000001"}),
        ({"usd": "6000"}, {"type": "limit", "limit_price": "60000", "quantity": "0.1"}),
    ],
)
def test_insufficient_funds_reserves_nothing(funding, order):
    user = user_create(**funding)
    before = list(Balance.objects.filter(user=user).values_list("asset", "available", "locked"))
    with pytest.raises(ApplicationError) as exc:
        place(user, **order)
    assert exc.value.code == "insufficient_funds"
    assert not Order.objects.filter(user=user).exists()
    after = list(Balance.objects.filter(user=user).values_list("asset", "available", "locked"))
    assert after == before


def _processed_after_the_price_rose(usd: str) -> tuple[User, Order]:
    """A 0.1 bitcoin market buy by a user holding ``usd``, processed after bitcoin rose
    to 70000 (above the price its reservation was made at)."""
    user = user_create(usd=usd)
    order = place(user, quantity="0.1")
    coins_and_prices({"bitcoin": "70000"})
    process(user)
    order.refresh_from_db()
    return user, order


def test_price_rising_beyond_the_reservation_rejects_and_releases():
    user, order = _processed_after_the_price_rose("6600")
    assert order.status == "rejected"
    assert order.reject_reason.startswith("insufficient_funds")
    assert bal(user) == (Decimal("6600"), 0)


def test_price_rising_within_available_takes_the_difference():
    user, order = _processed_after_the_price_rose("10000")
    assert (order.status, order.filled_price, order.fee) == ("filled", 70000, Decimal("7"))
    assert bal(user) == (Decimal("2993"), 0)


@override_settings(PRICE_STALE_SECONDS=60)
def test_stale_price_rejects_with_reason_and_releases_funds():
    user = user_create(usd="10000", bitcoin="1")
    coins_and_prices({"bitcoin": "65000"}, age_seconds=120)
    buy = place(user, quantity="0.1")  # reserved against the last (stale) price
    sell = place(user, side="sell", quantity="0.2")
    process(user)
    for order in (buy, sell):
        order.refresh_from_db()
        assert order.status == "rejected"
        assert "stale" in order.reject_reason
    assert bal(user) == (Decimal("10000"), 0)
    assert bal(user, "bitcoin") == (Decimal("1"), 0)


@pytest.mark.parametrize(
    "price", [{"source": "simulated"}, {"age_seconds": -3600}], ids=["simulated", "future"]
)
def test_no_fill_on_simulated_or_future_prices(price):
    user = user_create(usd="100000", bitcoin="1")
    coins_and_prices({"bitcoin": "65000"}, **price)
    buy = place(user, quantity="0.1")  # reserved against the display price
    sell = place(user, side="sell", quantity="0.2")
    resting = place(user, type="limit", limit_price="70000", quantity="0.1")  # would cross
    process(user)
    for order in (buy, sell, resting):
        order.refresh_from_db()
    assert [buy.reject_reason, sell.reject_reason] == ["stale_price", "stale_price"]
    assert (buy.status, sell.status, resting.status) == ("rejected", "rejected", "open")
    assert bal(user, "bitcoin") == (Decimal("1"), 0)


def test_a_price_within_the_clock_skew_allowance_is_used():
    user = user_create(usd="10000")
    coins_and_prices({"bitcoin": "65000"}, age_seconds=-1)
    order = place(user, quantity="0.1")
    process(user)
    order.refresh_from_db()
    assert (order.status, order.filled_price) == ("filled", 65000)


def test_market_buy_without_any_price_is_refused_at_once():
    user = user_create(usd="10000")
    from markets.services import coins_seed

    coins_seed(coin_ids=["solana"])
    with pytest.raises(ApplicationError) as exc:
        place(user, coin_id="solana")
    assert (exc.value.code, exc.value.status_code) == ("price_unavailable", 503)


def test_untracked_coin_is_refused():
    user = user_create(usd="10000")
    with pytest.raises(ApplicationError) as exc:
        place(user, coin_id="not-a-coin")
    assert exc.value.code == "unknown_coin"


def test_limit_buy_rests_open_then_fills_on_the_first_crossing_poll_at_the_better_price():
    user = user_create(usd="10000")
    order = place(user, type="limit", limit_price="60000", quantity="0.1")
    # 6000 + 6 fee reserved, exactly.
    assert bal(user) == (Decimal("3994"), Decimal("6006"))
    process(user)
    order.refresh_from_db()
    assert order.status == "open"

    assert match({"bitcoin": "60001"}) == 0
    order.refresh_from_db()
    assert order.status == "open"

    assert match({"bitcoin": "59000"}) == 1
    order.refresh_from_db()
    assert (order.status, order.filled_price, order.fee) == ("filled", 59000, Decimal("5.9"))
    assert bal(user) == (Decimal("10000") - Decimal("5905.9"), 0)
    assert bal(user, "bitcoin") == (Decimal("0.1"), 0)
    # A later poll finds nothing more to do.
    assert match({"bitcoin": "58000"}) == 0


def test_limit_sell_fills_when_the_price_reaches_it():
    user = user_create(usd="0", ethereum="2")
    order = place(
        user, coin_id="ethereum", side="sell", type="limit", limit_price="3500", quantity="2"
    )
    process(user)
    assert match({"ethereum": "3499.99"}) == 0
    assert match({"ethereum": "3600"}) == 1
    order.refresh_from_db()
    assert (order.status, order.filled_price, order.fee) == ("filled", 3600, Decimal("7.2"))
    assert bal(user) == (Decimal("7192.8"), 0)
    assert bal(user, "ethereum") == (0, 0)


def test_marketable_limit_fills_at_once_at_the_market_price():
    user = user_create(usd="10000")
    order = place(user, type="limit", limit_price="70000", quantity="0.1")
    process(user)
    order.refresh_from_db()
    assert (order.status, order.filled_price) == ("filled", 65000)
    assert bal(user) == (Decimal("3493.5"), 0)


def test_limit_matching_ignores_stale_future_and_simulated_prices():
    user = user_create(usd="10000")
    order = place(user, type="limit", limit_price="60000", quantity="0.1")
    process(user)
    assert match({"bitcoin": "1"}, age_seconds=3600) == 0
    assert match({"bitcoin": "1"}, age_seconds=-3600) == 0
    assert match({"bitcoin": "1"}, source="simulated") == 0
    order.refresh_from_db()
    assert order.status == "open"


def test_cancel_pending_and_open_release_funds_anything_else_is_409():
    user = user_create(usd="10000")
    pending = place(user, type="limit", limit_price="60000", quantity="0.1")
    services.order_cancel(order_id=pending.pk, user=user)
    assert bal(user) == (Decimal("10000"), 0)

    resting = place(user, type="limit", limit_price="60000", quantity="0.1")
    process(user)
    cancelled = services.order_cancel(order_id=resting.pk, user=user)
    assert cancelled.status == "cancelled"
    assert bal(user) == (Decimal("10000"), 0)

    with pytest.raises(ApplicationError) as exc:
        services.order_cancel(order_id=resting.pk, user=user)
    assert (exc.value.status_code, exc.value.code) == (409, "order_not_cancellable")
    # A cancelled order no longer fills.
    assert match({"bitcoin": "1"}) == 0


def test_cancel_of_someone_elses_order_is_not_found():
    owner, other = user_create(usd="10000"), user_create(usd="10000")
    order = place(owner, type="limit", limit_price="60000", quantity="0.1")
    with pytest.raises(ApplicationError) as exc:
        services.order_cancel(order_id=order.pk, user=other)
    assert exc.value.status_code == 404


def test_queue_processes_each_users_orders_in_the_order_received():
    user = user_create(usd="100000", bitcoin="1")
    orders = [
        place(user, quantity="0.1"),
        place(user, side="sell", quantity="0.3"),
        place(user, coin_id="ethereum", quantity="1"),
        place(user, side="sell", quantity="0.2"),
    ]
    process(user)
    filled_in = list(
        LedgerEntry.objects.filter(user=user, order__isnull=False)
        .order_by("id")
        .values_list("order_id", flat=True)
        .distinct()
    )
    assert list(dict.fromkeys(filled_in)) == [o.pk for o in orders]


@pytest.mark.parametrize(("users", "orders"), [(1, 1), (1, 5), (3, 4)])
def test_a_queue_run_costs_the_same_statements_for_any_number_of_orders_and_users(
    users, orders, django_assert_num_queries
):
    """BEGIN, the queue locks of the users that have pending orders with their orders
    (one statement), the balances (locked), one INSERT of notifications with their
    email outbox rows (fills are emailed), the users' rows and their event ids and
    events (the event log: one statement), one UPDATE of orders, one ledger
    INSERT, one balances UPDATE, COMMIT; then one look for orders that came in
    meanwhile, and one more once the run has let go of the queue's mark."""
    traders = [user_create(usd="100000", bitcoin="1") for _ in range(users)]
    for _ in range(orders):
        for trader in traders:
            place(trader, quantity="0.01")
    with django_assert_num_queries(11):
        assert services.order_queue_process() == users * orders
    assert Order.objects.filter(status="filled").count() == users * orders


def test_client_order_id_repeat_returns_the_first_order_and_reserves_once():
    user = user_create(usd="10000")
    first = place(user, quantity="0.1", client_order_id="abc-1")
    again, created = place_or_repeat(user, quantity="0.1", client_order_id="abc-1")
    assert (created, again.pk) == (False, first.pk)
    assert Order.objects.filter(user=user).count() == 1
    assert bal(user)[1] == Decimal("6636.63")
    # The same key belongs to each user separately.
    other = user_create(usd="10000")
    place(other, quantity="0.1", client_order_id="abc-1")


def test_a_crash_mid_queue_loses_nothing_and_a_rerun_fills_once():
    user = user_create(usd="10000")
    order = place(user, quantity="0.1")

    class WorkerKilled(Exception):
        pass

    with pytest.raises(WorkerKilled), transaction.atomic():
        process(user)
        raise WorkerKilled
    order.refresh_from_db()
    assert order.status == "pending"
    assert not LedgerEntry.objects.filter(order=order).exists()

    process(user)
    process(user)  # the redelivered message
    order.refresh_from_db()
    assert order.status == "filled"
    assert LedgerEntry.objects.filter(order=order).count() == 3


def test_an_order_worth_too_much_at_its_fill_price_is_rejected_without_blocking_the_queue():
    user = user_create(usd="10000", bitcoin="999999999999")
    coins_and_prices({"bitcoin": "0.001"})
    huge = place(user, side="sell", quantity="999999999999")
    normal = place(user, quantity="0.0000001")
    # The price jumps before the queue runs: 10^12 coins at 10^10 usd is beyond the cap.
    coins_and_prices({"bitcoin": "10000000000"})
    process(user)
    huge.refresh_from_db()
    normal.refresh_from_db()
    assert huge.status == "rejected"
    assert huge.reject_reason.startswith("notional_too_large")
    assert normal.status == "filled"
    assert bal(user, "bitcoin") == (Decimal("999999999999.0000001"), 0)


def test_terminal_status_changes_notify_the_user():
    from notifications.models import Notification

    user = user_create(usd="10000", bitcoin="1")
    filled = place(user, quantity="0.01")
    process(user)
    cancelled = place(user, type="limit", limit_price="1000", quantity="0.01")
    services.order_cancel(order_id=cancelled.pk, user=user)
    coins_and_prices({"bitcoin": "65000"}, age_seconds=3600)
    rejected = place(user, side="sell", quantity="0.5")
    process(user)
    notes = {n.data["order_id"]: n for n in Notification.objects.filter(user=user)}
    assert {pk: n.kind for pk, n in notes.items()} == {
        filled.pk: "order_filled",
        cancelled.pk: "order_cancelled",
        rejected.pk: "order_rejected",
    }
    assert "filled at 65000 usd (fee 0.65 usd)" in notes[filled.pk].body
    assert "stale" in notes[rejected.pk].body


def test_a_zero_price_is_never_traded_on():
    user = user_create(usd="10000", bitcoin="1")
    order = place(user, side="sell", quantity="0.5")
    coins_and_prices({"bitcoin": "0"})
    process(user)
    order.refresh_from_db()
    assert order.status == "rejected"
    assert bal(user, "bitcoin") == (Decimal("1"), 0)
    resting = place(user, type="limit", limit_price="60000", quantity="0.1")
    coins_and_prices({"bitcoin": "65000"})
    process(user)
    assert match({"bitcoin": "0"}) == 0
    resting.refresh_from_db()
    assert resting.status == "open"


# --- The limit book, set-based ---------------------------------------------------------


def _rest(user, n: int, limit: str = "60000") -> list[int]:
    """``n`` limit buys of ``user`` resting open at ``limit``."""
    ids = [place(user, type="limit", quantity="0.001", limit_price=limit).pk for _ in range(n)]
    process(user)
    assert Order.objects.filter(pk__in=ids, status="open").count() == n
    return ids


def test_a_large_crossing_fills_in_one_batch_with_a_fixed_number_of_statements(monkeypatch):
    """Two users' 300 orders fill in one transaction, with as many statements as one
    order takes: no statement (and no model instance) per order."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    monkeypatch.setattr(services, "LIMIT_FILL_BATCH", 1000)
    alice, bob = user_create(usd="1000000"), user_create(usd="1000000")
    placed = {alice.pk: _rest(alice, 150), bob.pk: _rest(bob, 150)}
    lonely = user_create(usd="1000000")
    _rest(lonely, 1, limit="59500")
    coins_and_prices({"bitcoin": "59600"})  # crosses the 300, not the lonely one
    with CaptureQueriesContext(connection) as many:
        assert services.limit_orders_fill() == 300
    coins_and_prices({"bitcoin": "59000"})
    with CaptureQueriesContext(connection) as one:
        assert services.limit_orders_fill() == 1
    assert len(many) == len(one) <= 20
    for user_id, ids in placed.items():
        booked = LedgerEntry.objects.filter(user_id=user_id, order__isnull=False).order_by("id")
        assert list(dict.fromkeys(booked.values_list("order_id", flat=True))) == ids
    assert Order.objects.filter(status="filled").count() == 301


def test_one_users_failing_limit_order_does_not_block_another_users(monkeypatch, caplog):
    alice, bob = user_create(usd="100000"), user_create(usd="100000")
    (bad,) = _rest(alice, 1)
    good = _rest(bob, 2)
    fill = services._order_fill

    def failing(*, order, **kwargs):
        if order.id == bad:
            raise ValueError("this order cannot be booked")
        fill(order=order, **kwargs)

    monkeypatch.setattr(services, "_order_fill", failing)
    assert match({"bitcoin": "59000"}) == 2
    assert Order.objects.get(pk=bad).status == "open"  # logged, left for the next poll
    assert set(Order.objects.filter(pk__in=good).values_list("status", flat=True)) == {"filled"}
    assert bal(alice)[1] == Decimal("60.06")  # still reserved
    assert f"limit order {bad} could not be filled" in caplog.text


def test_a_limit_batch_killed_mid_write_rolls_back_and_the_redelivery_books_once(monkeypatch):
    from django.db import OperationalError

    alice, bob = user_create(usd="100000"), user_create(usd="100000")
    ids = _rest(alice, 3) + _rest(bob, 3)
    coins_and_prices({"bitcoin": "59000"})
    save = services._balances_save

    def killed(balances):
        save(balances)  # the orders, the ledger and the events are written by now
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "_balances_save", killed)
    with pytest.raises(OperationalError):  # an outage: the task retries, nothing isolated
        services.limit_orders_fill()
    assert Order.objects.filter(pk__in=ids, status="open").count() == 6
    assert not LedgerEntry.objects.filter(order__in=ids).exists()
    monkeypatch.setattr(services, "_balances_save", save)
    assert services.limit_orders_fill() == 6  # the redelivered message
    assert services.limit_orders_fill() == 0  # and a duplicate of it
    assert LedgerEntry.objects.filter(order__in=ids).count() == 6 * 3
    from orders.selectors import ledger_mismatches, reservation_mismatches

    assert ledger_mismatches() == [] and reservation_mismatches() == []


def test_a_batch_pushes_the_frames_the_serializers_produce(django_capture_on_commit_callbacks):
    """Fills build their order and notification frames from plain values: they must be
    what OrderOutputSerializer and NotificationSerializer make of the rows."""
    from notifications.models import Notification, OutboxEmail, UserEvent
    from notifications.serializers import notification_output
    from orders.serializers import order_output

    user = user_create(usd="100000")
    ids = _rest(user, 2)
    Order.objects.filter(pk=ids[0]).update(client_order_id="mine-1")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert match({"bitcoin": "59000.5"}) == 2
    (deliveries,) = [
        c.__self__ for c in callbacks if hasattr(getattr(c, "__self__", None), "frames")
    ]
    frames = deliveries.frames[user.pk]
    assert [f["type"] for f in frames] == ["order", "notification"] * 2
    for order_frame, notification_frame in zip(frames[::2], frames[1::2], strict=True):
        order = Order.objects.get(pk=order_frame["order"]["id"])
        assert order_frame["order"] == order_output(order)
        notification = Notification.objects.get(pk=notification_frame["notification"]["id"])
        assert notification_frame["notification"] == notification_output(notification)
        assert notification.data["order_id"] == order.pk
    # The log holds what is pushed, ids gapless; the fills are emailed (the default).
    logged = list(UserEvent.objects.filter(user=user).order_by("event_id"))
    assert [e.frame for e in logged[-4:]] == deliveries.texts[user.pk]
    assert [e.event_id for e in logged] == list(range(1, len(logged) + 1))
    assert OutboxEmail.objects.filter(user=user, notification__kind="order_filled").count() == 2
