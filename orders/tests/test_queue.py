"""The order queue end to end: real worker thread, real broker, racing requests."""

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
import redis.exceptions
from django.db import connection, transaction

from cryptovault.exceptions import ApplicationError
from cryptovault.testing import TcpProxy
from orders import services
from orders.models import USD, Balance, LedgerEntry, Order
from orders.tasks import order_queue_process
from orders.tests.factories import coins_and_prices, limit_order_place, user_create
from orders.tests.helpers import market_order_settled, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _market():
    coins_and_prices({"bitcoin": "65000", "ethereum": "3000"})


def _queued() -> int:
    from django_redis import get_redis_connection

    return get_redis_connection("default").llen("orders")


def race(n: int, fn):
    """Run ``fn(i)`` in ``n`` threads released together; returns results/exceptions."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_api_order_is_filled_by_the_worker(celery_worker, api_client):
    user = user_create(usd="10000")
    api_client.force_authenticate(user)
    order_id = market_order_settled(api_client, side="buy", quantity="0.1", ends="filled")
    body = api_client.get(f"/api/v1/orders/{order_id}").json()
    assert (body["filled_price"], body["fee"]) == ("65000", "6.5")
    assert Balance.objects.get(user=user, asset=USD).available == Decimal("3493.5")


def test_16_concurrent_orders_racing_for_one_balance_never_overspend(celery_worker):
    # Each order costs 650 + 0.65 fee; 10000 covers 15 of them, not 16.
    user = user_create(usd="10000")

    def place(_):
        return limit_order_place(user, quantity="0.01", limit_price="65000")

    results = race(16, place)
    accepted = [r for r in results if isinstance(r, Order)]
    refused = [r for r in results if isinstance(r, ApplicationError)]
    assert (len(accepted), len(refused)) == (15, 1), results
    assert refused[0].code == "insufficient_funds"
    wait_until(lambda: Order.objects.filter(user=user, status="filled").count() == 15)
    usd = Balance.objects.get(user=user, asset=USD)
    assert (usd.available, usd.locked) == (Decimal("10000") - 15 * Decimal("650.65"), 0)
    assert Balance.objects.get(user=user, asset="bitcoin").available == Decimal("0.15")


def test_racing_repeats_of_one_client_order_id_create_one_order_and_one_reservation():
    user = user_create(usd="10000")

    def place(i):
        # Half buy, half sell: the twins lock different balance rows, so only the
        # unique constraint can stop the second one.
        return services.order_place(
            user=user,
            coin_id="bitcoin",
            side="buy" if i % 2 else "sell",
            type="limit",
            quantity=Decimal("0.01"),
            limit_price=Decimal("60000"),
            client_order_id="twin",
        )

    services.wallet_adjust(user=user, asset="bitcoin", amount=Decimal("1"), reason="sells")
    results = race(8, place)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(created for _, created in results) == 1
    assert len({order.pk for order, _ in results}) == 1
    assert Order.objects.filter(user=user).count() == 1
    locked = Balance.objects.filter(user=user).values_list("locked", flat=True)
    assert sorted(locked) == sorted([Decimal(0), Order.objects.get().reserved_amount])


def test_cancel_racing_a_fill_resolves_to_one_outcome():
    for _ in range(5):
        coins_and_prices({"bitcoin": "65000"})
        user = user_create(usd="10000")
        order = limit_order_place(user, quantity="0.1", limit_price="60000")
        services.order_queue_process(user_id=user.pk)
        coins_and_prices({"bitcoin": "59000"})  # the poll the fill races the cancel on

        def act(i, order=order, user=user):
            if i == 0:
                return services.order_cancel(order_id=order.pk, user=user).status
            return services.limit_orders_fill()

        outcome = race(2, act)
        order.refresh_from_db()
        if order.status == "cancelled":
            assert outcome == ["cancelled", 0]
            assert not LedgerEntry.objects.filter(order=order).exists()
        else:
            assert order.status == "filled"
            assert isinstance(outcome[0], ApplicationError) and outcome[1] == 1
            assert LedgerEntry.objects.filter(order=order).count() == 3
        assert Balance.objects.get(user=user, asset=USD).locked == 0


def test_redelivered_task_fills_once(celery_worker):
    user = user_create(usd="10000")
    order = services.order_place(
        user=user, coin_id="bitcoin", side="buy", type="market", quantity=Decimal("0.1")
    )[0]
    wait_until(lambda: Order.objects.get(pk=order.pk).status == "filled")
    # The broker hands the same message out again (worker died before the ack).
    order_queue_process.delay(user.pk)
    order_queue_process.apply(args=(user.pk,))
    wait_until(lambda: not _queued())
    assert LedgerEntry.objects.filter(order=order).count() == 3
    assert Balance.objects.get(user=user, asset=USD).available == Decimal("3493.5")


def _interleaved_orders(users, *, rounds: int) -> dict[int, list[int]]:
    """Each round, every user places a 0.1 bitcoin market order (buy, then sell, by
    turns): the ids each user placed, in order."""
    placed: dict[int, list[int]] = {u.pk: [] for u in users}
    for i in range(rounds):
        for u in users:
            side = "sell" if i % 2 else "buy"
            placed[u.pk].append(
                services.order_place(
                    user=u, coin_id="bitcoin", side=side, type="market", quantity=Decimal("0.1")
                )[0].pk
            )
    return placed


def _assert_booked_in_order(placed: dict[int, list[int]]) -> None:
    """Each user's orders were booked in the order the user placed them."""
    for user_id, order_ids in placed.items():
        booked = LedgerEntry.objects.filter(user_id=user_id, order__isnull=False).order_by("id")
        assert list(dict.fromkeys(booked.values_list("order_id", flat=True))) == order_ids


def test_users_are_processed_in_parallel_each_in_arrival_order(celery_worker):
    users = [user_create(usd="100000", bitcoin="2") for _ in range(4)]
    placed = _interleaved_orders(users, rounds=6)
    wait_until(lambda: Order.objects.filter(status="filled").count() == 24)
    _assert_booked_in_order(placed)


def test_a_price_poll_fills_crossing_limit_orders_through_the_tick_hook(celery_worker):
    from markets.services import prices_on_tick, prices_record

    buyer, seller = user_create(usd="10000"), user_create(ethereum="1")
    # One in each part of the book: the tick enqueues a match per part.
    assert buyer.pk % services.LIMIT_FILL_PARTS != seller.pk % services.LIMIT_FILL_PARTS
    buy = limit_order_place(buyer, quantity="0.1", limit_price="60000")
    sell = limit_order_place(
        seller, side="sell", quantity="1", limit_price="3100", coin_id="ethereum"
    )
    wait_until(lambda: Order.objects.filter(status="open").count() == 2)

    prices = {"bitcoin": Decimal("59500"), "ethereum": Decimal("3050")}
    prices_on_tick(as_of=prices_record(prices=prices), prices=prices, changed=list(prices))
    wait_until(lambda: Order.objects.get(pk=buy.pk).status == "filled")
    assert Order.objects.get(pk=buy.pk).filled_price == Decimal("59500")
    assert Order.objects.get(pk=sell.pk).status == "open"

    prices = {"bitcoin": Decimal("59500"), "ethereum": Decimal("3200")}
    prices_on_tick(as_of=prices_record(prices=prices), prices=prices, changed=["ethereum"])
    wait_until(lambda: Order.objects.get(pk=sell.pk).status == "filled")
    assert Balance.objects.get(user=seller, asset=USD).available == Decimal("3196.8")


def test_limit_matching_reads_the_price_store_never_its_message(celery_worker, celery_task_results):
    from orders.tasks import limit_orders_match

    user = user_create(usd="10000")
    order = limit_order_place(user, quantity="0.1", limit_price="60000")
    wait_until(lambda: Order.objects.get(pk=order.pk).status == "open")
    # Made-up crossing prices in the message: the old signature (prices, as_of), as a
    # queued message from before a deploy or a periodic task's args would carry them.
    made_up = {"bitcoin": "1"}
    for sent in (
        limit_orders_match.delay(made_up, time.time()),
        limit_orders_match.delay(prices=made_up, as_of=time.time() + 3600),
    ):
        assert celery_task_results.wait(sent.id) == ("SUCCESS", 0)
    assert Order.objects.get(pk=order.pk).status == "open"

    coins_and_prices({"bitcoin": "59000"}, source="simulated")
    assert celery_task_results.wait(limit_orders_match.delay().id) == ("SUCCESS", 0)
    assert Order.objects.get(pk=order.pk).status == "open"

    coins_and_prices({"bitcoin": "59000"})  # a real, fresh crossing price in the store
    assert celery_task_results.wait(limit_orders_match.delay(made_up).id) == ("SUCCESS", 1)
    order.refresh_from_db()
    assert (order.status, order.filled_price) == ("filled", Decimal("59000"))
    assert Balance.objects.get(user=user, asset=USD).available == Decimal("10000") - Decimal(
        "5905.9"
    )


def test_a_users_orders_pile_up_behind_one_queued_run():
    user = user_create(usd="10000")

    def place():
        return services.order_place(
            user=user, coin_id="bitcoin", side="buy", type="market", quantity=Decimal("0.01")
        )[0]

    for _ in range(5):
        place()
    assert _queued() == 1
    assert services.order_queue_process(user_id=user.pk) == 5
    # The run cleared its mark as it started: the next order enqueues a new run.
    place()
    assert _queued() == 2
    assert services.order_queue_process(user_id=user.pk) == 1
    assert Order.objects.filter(user=user, status="filled").count() == 6


def test_the_sweep_recovers_an_order_whose_enqueue_was_lost():
    from datetime import timedelta

    from django.utils import timezone
    from django_redis import get_redis_connection

    user = user_create(usd="10000")
    order = services.order_place(
        user=user, coin_id="bitcoin", side="buy", type="market", quantity=Decimal("0.01")
    )[0]
    get_redis_connection("default").delete("orders")  # the message is lost
    assert services.order_queue_sweep() == 0  # too young to be considered stuck
    Order.objects.filter(pk=order.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    assert services.order_queue_sweep() == 1
    assert _queued() == 1
    services.order_queue_process(user_id=user.pk)
    assert Order.objects.get(pk=order.pk).status == "filled"
    assert services.order_queue_sweep() == 0


def _pending_orders_reserved(users, n: int) -> list[int]:
    """``n`` pending market buys spread over ``users``, reserved as order_place reserves,
    written straight to the database (placing them one by one takes long); no run is
    enqueued for them."""
    from django.db.models import F

    reserve = Decimal("70")  # 0.001 bitcoin at 65,000 plus the fee, with room to spare
    orders = Order.objects.bulk_create(
        Order(
            user=users[i % len(users)], coin_id="bitcoin", side="buy", type="market",
            quantity=Decimal("0.001"), reserved_asset=USD, reserved_amount=reserve,
        )
        for i in range(n)
    )  # fmt: skip
    for user in users:
        count = sum(1 for order in orders if order.user_id == user.pk)
        Balance.objects.filter(user=user, asset=USD).update(
            available=F("available") - count * reserve, locked=F("locked") + count * reserve
        )
    return [order.pk for order in orders]


def _queue_locks_held() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [services.QUEUE_LOCK_NAMESPACE],
        )
        return cursor.fetchone()[0]


def test_a_worker_killed_mid_batch_loses_nothing_and_fills_nothing_twice(tmp_path):
    """A real prefork worker; its pool children are SIGKILLed while a batch that holds
    every user's queue is in flight (held there: another connection holds one balance row
    the batch must lock). The batch rolls back, the message is redelivered (acks_late,
    reject on worker lost) and the next run fills everything once, in order."""
    import os
    import shutil
    import signal

    from django.db.models import Count

    users = [user_create(usd="100000") for _ in range(6)]
    orders = _pending_orders_reserved(users, 600)
    order_queue_process.delay()  # the one run for all of them
    mine = Order.objects.filter(pk__in=orders)
    last_balance = Balance.objects.select_for_update().filter(user=users[-1], asset=USD)
    with _worker_process(tmp_path / "worker.log", concurrency=2) as worker:
        with held_elsewhere(last_balance.get):
            wait_until(lambda: _queue_locks_held() >= 1 and _lock_waiters() >= 1, timeout=90)
            assert mine.filter(status="pending").count() == 600  # mid-batch: nothing committed
            pgrep = shutil.which("pgrep")
            children = subprocess.run(  # noqa: S603
                [pgrep, "-P", str(worker.pid)], capture_output=True, text=True, check=False
            ).stdout.split()
            assert children
            for pid in children:
                os.kill(int(pid), signal.SIGKILL)
        wait_until(lambda: not mine.filter(status="pending").exists(), timeout=120)
    assert mine.filter(status="filled").count() == 600
    per_order = LedgerEntry.objects.filter(order__in=orders).values("order").annotate(n=Count("id"))
    assert {row["n"] for row in per_order} == {3}
    for user in users:
        booked = LedgerEntry.objects.filter(user=user, order__in=orders).order_by("id")
        sequence = list(dict.fromkeys(booked.values_list("order_id", flat=True)))
        assert sequence == sorted(sequence)


def _lock_waiters() -> int:
    """Backends of this test database waiting for a row lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@contextmanager
def held_elsewhere(take: Callable[[], object]) -> Iterator[threading.Event]:
    """Run ``take`` (a lock) in a transaction of another connection and hold it until the
    yielded event is set (or the block ends): who needs that lock here waits."""
    acquired, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                take()
                acquired.set()
                release.wait(timeout=60)
        finally:
            connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert acquired.wait(timeout=10)
    try:
        yield release
    finally:
        release.set()
        thread.join()


def row_lock_held(balance: Balance):
    """Hold ``balance``'s row lock from another connection (see ``held_elsewhere``): a
    fill that needs the row waits, as behind a slow fill."""
    return held_elsewhere(lambda: Balance.objects.select_for_update().get(pk=balance.pk))


@pytest.fixture
def redis_proxy(settings):
    """The cache's Redis (the queue's marks, the prices) behind a proxy the test cuts;
    the broker stays direct, so retries are still delivered."""
    from urllib.parse import urlsplit

    url = urlsplit(settings.REDIS_URL)
    proxy = TcpProxy((url.hostname or "localhost", url.port or 6379))
    location = url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": location}}
    yield proxy
    proxy.down()


def test_a_redis_outage_mid_fill_retries_and_the_order_then_fills(celery_worker, redis_proxy):
    from celery.signals import task_retry

    user = user_create(usd="10000", bitcoin="1")
    retried: list[BaseException] = []

    def on_retry(sender=None, reason=None, **_):
        if sender is not None and sender.name == "orders.queue_process":
            retried.append(reason)

    task_retry.connect(on_retry, weak=False)
    try:
        with row_lock_held(Balance.objects.get(user=user, asset="bitcoin")) as release:
            order = services.order_place(
                user=user, coin_id="bitcoin", side="buy", type="market", quantity=Decimal("0.1")
            )[0]
            wait_until(lambda: _lock_waiters() == 1)  # the worker is mid-fill
            redis_proxy.down()
            release.set()  # the fill goes on and needs the price from Redis: gone
            wait_until(lambda: retried)
        order.refresh_from_db()
        assert (order.status, order.reject_reason) == ("pending", None)
        redis_proxy.up()
        wait_until(lambda: Order.objects.get(pk=order.pk).status != "pending", timeout=60)
    finally:
        task_retry.disconnect(on_retry)
    order.refresh_from_db()
    assert (order.status, order.reject_reason) == ("filled", None)
    assert isinstance(retried[0].exc, redis.exceptions.ConnectionError)
    assert LedgerEntry.objects.filter(order=order).count() == 3


def test_a_soft_time_limit_retries_instead_of_rejecting(tmp_path):
    """A real prefork worker; its run waits on a row lock the test holds past the run's
    1 s soft limit, the limit fires, and the run is retried, not rejected."""
    from django_redis import get_redis_connection

    user = user_create(usd="10000", bitcoin="1")
    order = services.order_place(
        user=user, coin_id="bitcoin", side="buy", type="market", quantity=Decimal("0.1")
    )[0]
    get_redis_connection("default").delete("orders")  # the run enqueued with 60 s limits
    # A message carries its time limits (the publisher's), its retries too.
    order_queue_process.apply_async((user.pk,), soft_time_limit=1, time_limit=30)
    log = tmp_path / "worker.log"
    with row_lock_held(Balance.objects.get(user=user, asset="bitcoin")) as release:
        with _worker_process(log):
            wait_until(lambda: _lock_waiters() == 1, timeout=60)
            time.sleep(2)  # hold the lock past the soft limit
            release.set()
            wait_until(lambda: Order.objects.get(pk=order.pk).status != "pending", timeout=30)
    order.refresh_from_db()
    assert (order.status, order.reject_reason) == ("filled", None)
    text = log.read_text()
    assert "Soft time limit (1s) exceeded for orders.queue_process" in text
    assert "retry: Retry in" in text and "SoftTimeLimitExceeded" in text
    assert LedgerEntry.objects.filter(order=order).count() == 3


@contextmanager
def _worker_process(log, concurrency: int = 1) -> Iterator[subprocess.Popen]:
    """A real ``celery worker`` (prefork, ``concurrency`` children) on the orders queue
    and the test database, logging to ``log``."""
    import os
    import sys

    from django.conf import settings

    db = settings.DATABASES["default"]
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    address = (db["HOST"] or "localhost") + (f":{db['PORT']}" if db["PORT"] else "")
    with open(log, "w") as output:
        worker = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
            [sys.executable, "-m", "celery", "-A", "cryptovault", "worker", "-Q", "orders",
             "-P", "prefork", "--concurrency", str(concurrency), "--loglevel", "INFO",
             "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            env={
                **os.environ,
                "DATABASE_URL": f"postgres://{credentials}@{address}/{db['NAME']}",
                "REDIS_URL": settings.REDIS_URL,
            },
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield worker
        finally:
            worker.terminate()
            worker.wait(timeout=30)


def test_after_redis_comes_back_empty_a_market_order_fills_on_the_recorded_price(
    celery_worker, api_client
):
    from django.utils import timezone
    from django_redis import get_redis_connection

    from markets.services import latest_prices_record
    from markets.sources import MarketQuote

    as_of = timezone.now()
    quote = MarketQuote("bitcoin", "btc", "Bitcoin", Decimal("64000"), None, None, None, None)
    latest_prices_record(as_of=as_of, source="coingecko", quotes=[quote])
    get_redis_connection("default").flushdb()  # Redis restarted empty, before any poll

    user = user_create(usd="10000")
    api_client.force_authenticate(user)
    order_id = market_order_settled(api_client, side="buy", quantity="0.1", ends="filled")
    assert Order.objects.get(pk=order_id).filled_price == Decimal("64000")


def _commits(queries) -> int:
    return sum(1 for query in queries if query["sql"] == "COMMIT")


def test_one_run_drains_every_users_queue_in_one_transaction_each_in_order():
    from django.test.utils import CaptureQueriesContext

    users = [user_create(usd="100000", bitcoin="1") for _ in range(2)]
    placed = _interleaved_orders(users, rounds=3)
    assert _queued() == 1  # one run serves every user
    with CaptureQueriesContext(connection) as queries:
        assert services.order_queue_process() == 6
    assert _commits(queries.captured_queries) == 1
    _assert_booked_in_order(placed)


def _credit_beyond_the_ledger_range(user) -> None:
    """An operator credit larger than the API allows: the user's bitcoin balance is one
    coin below what a balance can hold (numeric(38, 18)), so any buy overflows it."""
    amount = Decimal("99999999999999999999") - Decimal(1)
    LedgerEntry.objects.create(
        user=user, asset="bitcoin", kind="operator_credit", amount=amount, balance_after=amount
    )
    Balance.objects.create(user=user, asset="bitcoin", available=amount)


def test_a_user_whose_batch_fails_does_not_block_the_others():
    broken, fine = user_create(usd="1000000"), user_create(usd="100000")
    _credit_beyond_the_ledger_range(broken)
    doomed = services.order_place(
        user=broken, coin_id="bitcoin", side="buy", type="market", quantity=Decimal("2")
    )[0]
    others = [
        services.order_place(
            user=fine, coin_id="bitcoin", side="buy", type="market", quantity=Decimal("0.1")
        )[0]
        for _ in range(2)
    ]
    assert services.order_queue_process() == 3
    doomed.refresh_from_db()
    assert (doomed.status, doomed.reject_reason) == (
        "rejected",
        "unprocessable: the order could not be booked.",
    )
    assert Balance.objects.get(user=broken, asset=USD).locked == 0
    assert [Order.objects.get(pk=o.pk).status for o in others] == ["filled", "filled"]


def test_a_run_skips_a_user_another_run_holds_and_the_next_run_takes_it():
    held, free = user_create(usd="10000"), user_create(usd="10000")
    orders = [
        services.order_place(
            user=u, coin_id="bitcoin", side="buy", type="market", quantity=Decimal("0.01")
        )[0]
        for u in (held, free)
    ]

    def lock_the_held_users_queue():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", [services.QUEUE_LOCK_NAMESPACE, held.pk]
            )

    with held_elsewhere(lock_the_held_users_queue):
        assert services.order_queue_process() == 1
        statuses = [Order.objects.get(pk=o.pk).status for o in orders]
        assert statuses == ["pending", "filled"]
    assert services.order_queue_process() == 1
    assert Order.objects.get(pk=orders[0].pk).status == "filled"


def test_a_limit_book_crossed_at_once_fills_in_batches_each_user_in_order(monkeypatch):
    monkeypatch.setattr(services, "LIMIT_FILL_BATCH", 4)
    users = [user_create(usd="100000") for _ in range(3)]
    placed = {u.pk: [] for u in users}
    for limit in ("60000", "61000", "60500"):
        for u in users:
            placed[u.pk].append(limit_order_place(u, quantity="0.1", limit_price=limit).pk)
    services.order_queue_process()
    assert Order.objects.filter(status="open").count() == 9
    coins_and_prices({"bitcoin": "59000"})
    assert services.limit_orders_fill() == 9
    for u in users:
        booked = LedgerEntry.objects.filter(user=u, order__isnull=False).order_by("id")
        assert list(dict.fromkeys(booked.values_list("order_id", flat=True))) == placed[u.pk]
    assert set(Order.objects.values_list("filled_price", flat=True)) == {Decimal("59000")}


def _crossing_book(n_users: int) -> dict[int, list[int]]:
    """Three open limit buys per user (users of both parities), then a crossing price:
    the ids of each user's orders in the order placed."""
    users = [user_create(usd="100000") for _ in range(n_users)]
    assert {u.pk % 2 for u in users} == {0, 1}
    placed: dict[int, list[int]] = {u.pk: [] for u in users}
    for limit in ("60000", "61000", "60500"):
        for u in users:
            placed[u.pk].append(limit_order_place(u, quantity="0.1", limit_price=limit).pk)
    services.order_queue_process()
    coins_and_prices({"bitcoin": "59000"})
    return placed


def test_a_part_of_the_crossing_fills_only_its_users():
    placed = _crossing_book(4)
    even = {pk for user_id, pks in placed.items() if user_id % 2 == 0 for pk in pks}
    assert services.limit_orders_fill(part=0, parts=2) == len(even)
    assert set(Order.objects.filter(status="filled").values_list("pk", flat=True)) == even
    assert services.limit_orders_fill(part=1, parts=2) == 12 - len(even)
    assert not Order.objects.filter(status="open").exists()
    with pytest.raises(ValueError, match="part 2 of 2"):
        services.limit_orders_fill(part=2, parts=2)


def test_parts_of_a_crossing_run_side_by_side_and_fill_each_order_once_in_order(monkeypatch):
    """Both parts at once (several batches each), with a duplicate of one and a whole-book
    run racing them: every order fills exactly once, each user's in the order placed."""
    from orders.selectors import ledger_mismatches, reservation_mismatches

    monkeypatch.setattr(services, "LIMIT_FILL_BATCH", 2)
    placed = _crossing_book(6)
    runs = [(0, 2), (1, 2), (0, 2), (0, 1)]
    results = race(
        len(runs), lambda i: services.limit_orders_fill(part=runs[i][0], parts=runs[i][1])
    )
    assert all(isinstance(r, int) for r in results), results
    assert sum(results) == 18
    assert set(Order.objects.values_list("status", flat=True)) == {"filled"}
    for user_id, pks in placed.items():
        booked = LedgerEntry.objects.filter(user_id=user_id, order__isnull=False).order_by("id")
        assert booked.count() == 3 * len(pks)
        assert list(dict.fromkeys(booked.values_list("order_id", flat=True))) == pks
    assert ledger_mismatches() == [] and reservation_mismatches() == []


def _mark_set() -> bool:
    from django_redis import get_redis_connection

    return bool(get_redis_connection("default").exists(services.QUEUE_RUN_KEY))


def _market_buy(user) -> Order:
    return services.order_place(
        user=user, coin_id="bitcoin", side="buy", type="market", quantity=Decimal("0.01")
    )[0]


def _run_while_held(user, meanwhile: Callable[[], Any]) -> tuple[list[int], Any]:
    """``order_queue_process`` in a thread, its first batch held up by ``user``'s usd row
    (held here) while ``meanwhile()`` runs: (what the run returned, what meanwhile did)."""
    processed: list[int] = []

    def run() -> None:
        try:
            processed.append(services.order_queue_process())
        finally:
            connection.close()

    with row_lock_held(Balance.objects.get(user=user, asset=USD)):
        thread = threading.Thread(target=run)
        thread.start()
        # The run's first batch holds ``user``'s queue and waits for the usd row.
        wait_until(lambda: _queue_locks_held() >= 1 and _lock_waiters() >= 1)
        outcome = meanwhile()
    thread.join(timeout=60)
    return processed, outcome


def test_orders_placed_while_a_run_works_join_its_next_batch_with_no_task_between():
    """A run holds the queue's mark while it works: orders placed meanwhile enqueue no
    run and are booked by its next batch, each user's in order; the mark is released
    once nothing is left, and the next order enqueues a run again."""
    first = user_create(usd="10000", bitcoin="1")
    others = [user_create(usd="10000") for _ in range(2)]
    head = _market_buy(first)
    assert (_queued(), _mark_set()) == (1, True)

    def meanwhile() -> dict[int, list[int]]:
        placed = {u.pk: [_market_buy(u).pk for _ in range(2)] for u in others}
        sell = services.order_place(
            user=first, coin_id="bitcoin", side="sell", type="market", quantity=Decimal("0.01")
        )[0]
        placed[first.pk] = [head.pk, sell.pk]
        assert (_queued(), _mark_set()) == (1, True)  # nothing enqueued meanwhile
        return placed

    processed, placed = _run_while_held(first, meanwhile)
    assert processed == [6]
    assert set(Order.objects.values_list("status", flat=True)) == {"filled"}
    _assert_booked_in_order(placed)
    assert not _mark_set()
    _market_buy(first)
    assert _queued() == 2


def test_an_order_committed_as_a_run_releases_its_mark_is_never_left_behind(monkeypatch):
    """The moment a run finds nothing and lets go of the mark, an order commits: either
    the run's last look finds it or the order, seeing no mark, enqueues a run."""
    user = user_create(usd="10000")
    _market_buy(user)
    real_has_pending = services._queue_has_pending
    late: list[Order] = []

    def has_pending_then_a_late_order(*, user_id):
        # Just before the run's look after its release, an order commits (it finds no
        # mark and enqueues a run of its own).
        if not _mark_set() and not late:
            late.append(_market_buy(user))
        return real_has_pending(user_id=user_id)

    monkeypatch.setattr(services, "_queue_has_pending", has_pending_then_a_late_order)
    queued = _queued()
    assert services.order_queue_process() == 2
    assert Order.objects.get(pk=late[0].pk).status == "filled"
    assert _queued() == queued + 1  # its own run, which will find nothing: harmless
    # That run finds nothing, releases the mark and ends.
    assert services.order_queue_process() == 0
    assert not _mark_set()


def test_a_busy_run_waits_a_moment_between_batches_and_a_light_one_never(monkeypatch):
    """After a batch of at least QUEUE_GATHER_MIN orders with more pending, a run waits
    QUEUE_GATHER_SECONDS before its next batch (which so gathers more); after a smaller
    batch it goes on at once."""
    monkeypatch.setattr(services, "QUEUE_GATHER_MIN", 3)
    waits: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(services.time, "sleep", sleep)
    busy, light = user_create(usd="10000"), user_create(usd="10000")
    heads = [_market_buy(busy) for _ in range(3)]

    def meanwhile() -> list[Order]:
        waits.clear()  # the helper's own polling
        return [_market_buy(light) for _ in range(2)]  # pending when the first batch ends

    processed, late = _run_while_held(busy, meanwhile)
    assert processed == [5]
    assert waits.count(services.QUEUE_GATHER_SECONDS) == 1  # after the 3, not after the 2
    assert {o.status for o in Order.objects.filter(pk__in=[o.pk for o in heads + late])} == {
        "filled"
    }
