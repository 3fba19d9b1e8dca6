"""Market data polling on beat. Each run holds a Redis lock so runs never overlap, and
expires (see ``CELERY_BEAT_SCHEDULE``) so a worker back from downtime skips the backlog
instead of replaying it."""

import logging
from collections.abc import Callable

from celery import shared_task
from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import LockError

from markets import services
from markets.sources import fetch_seconds_max

logger = logging.getLogger(__name__)

PRICES_POLL_LOCK = "cv:markets:lock:prices_poll"
TICKERS_POLL_LOCK = "cv:markets:lock:tickers_poll"


def run_exclusive(lock_name: str, work: Callable[[], object]) -> object | None:
    """Run ``work`` unless another run holds the lock. The lock expires on its own if a
    worker dies mid-run, after the longest a run can take."""
    lock = get_redis_connection("default").lock(lock_name, timeout=fetch_seconds_max())
    if not lock.acquire(blocking=False):
        logger.info("previous run still going, skipped", extra={"lock": lock_name})
        return None
    try:
        return work()
    finally:
        try:
            lock.release()
        except LockError:  # expired meanwhile; nothing of ours to release
            logger.warning("poll lock expired before release", extra={"lock": lock_name})


# A poll fetches from the market source: no result kept; stopped past the fetch budget,
# which also bounds its ``run_exclusive`` lock.
_POLL_OPTIONS = {
    "ignore_result": True,
    "soft_time_limit": fetch_seconds_max(),
    "time_limit": fetch_seconds_max() + 5,
}


@shared_task(name="markets.prices_poll", expires=settings.PRICE_POLL_SECONDS, **_POLL_OPTIONS)
def prices_poll() -> None:
    run_exclusive(PRICES_POLL_LOCK, services.prices_poll)


@shared_task(name="markets.tickers_poll", expires=settings.TICKERS_POLL_SECONDS, **_POLL_OPTIONS)
def tickers_poll() -> None:
    run_exclusive(TICKERS_POLL_LOCK, services.tickers_poll)


@shared_task(name="markets.history_prune", ignore_result=True, time_limit=600)
def history_prune() -> None:
    services.history_prune()


@shared_task(name="markets.status_sample", ignore_result=True, time_limit=30)
def status_sample() -> None:
    services.status_sample_record()
