"""Poll tasks on a real Celery worker and the real Redis broker."""

import time

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings as django_settings
from django_redis import get_redis_connection

from cryptovault.celery import app as celery_app
from markets import tasks
from markets.selectors import prices_snapshot


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_runs_never_overlap(simulator, tracked):
    lock = get_redis_connection("default").lock(tasks.PRICES_POLL_LOCK, timeout=30)
    assert lock.acquire(blocking=False)
    tasks.prices_poll()  # another run holds the lock: skipped without calling the source
    assert simulator.calls == 0
    lock.release()
    tasks.prices_poll()
    assert simulator.calls == 1
    assert "bitcoin" in prices_snapshot()["prices"]
    # The lock is released after a run.
    assert not get_redis_connection("default").exists(tasks.PRICES_POLL_LOCK)


def test_queued_runs_expire_after_one_period():
    assert tasks.prices_poll.expires == django_settings.PRICE_POLL_SECONDS
    assert tasks.tickers_poll.expires == django_settings.TICKERS_POLL_SECONDS
    entry = django_settings.CELERY_BEAT_SCHEDULE["markets-prices-poll"]
    assert entry["schedule"] == django_settings.PRICE_POLL_SECONDS
    # django-celery-beat's DatabaseScheduler reads "expire_seconds".
    assert entry["options"]["expire_seconds"] == django_settings.PRICE_POLL_SECONDS


def test_default_schedule_fits_the_demo_budget():
    calls_per_minute = (
        60 / django_settings.PRICE_POLL_SECONDS + 60 / django_settings.TICKERS_POLL_SECONDS
    )
    assert calls_per_minute <= 20  # of ~30/min, leaving room for details and charts


@pytest.mark.django_db(transaction=True)
def test_worker_skips_backlog_then_polls(simulator, tracked):
    # A worker that was down: runs queued meanwhile have expired and must not replay.
    for _ in range(3):
        tasks.prices_poll.apply_async(expires=0.2)
    time.sleep(0.3)
    with start_worker(
        celery_app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING"
    ):
        tasks.prices_poll.delay()
        _wait_for(lambda: "bitcoin" in prices_snapshot()["prices"])
        tasks.tickers_poll.delay()
        _wait_for(lambda: simulator.calls >= 2)
    assert simulator.calls == 2  # one prices poll, one tickers poll; no replayed backlog
