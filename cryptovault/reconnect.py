"""Riding through brief restarts of PostgreSQL and Redis: connecting is retried for a
few seconds with backoff, so a restart shorter than that costs a slower request, not a
503. Only establishing a connection is retried, never a statement or command (it may
have run); a longer outage still fails within the budget and becomes the JSON 503."""

import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from redis import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

FIRST_DELAY_SECONDS = 0.1
MAX_DELAY_SECONDS = 1.0

T = TypeVar("T")


def connect_with_retry(
    connect: Callable[[], T], *, errors: tuple[type[Exception], ...], seconds: float
) -> T:
    """``connect()``, retried on ``errors`` with doubling delays until ``seconds`` have
    passed since the first attempt; the last error is raised after that."""
    deadline = time.monotonic() + seconds
    delay = FIRST_DELAY_SECONDS
    while True:
        try:
            return connect()
        except errors:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_DELAY_SECONDS)


class RetryingRedisConnection(Connection):
    """redis-py's connection (``connection_class`` of the pool) whose ``connect`` rides
    through a restart. redis-py's own ``Retry`` would also repeat commands whose reply
    was lost, so it stays off (the default): a command is never sent twice."""

    def connect(self) -> None:
        connect_with_retry(
            super().connect,
            errors=(RedisConnectionError, RedisTimeoutError),
            seconds=settings.REDIS_CONNECT_RETRY_SECONDS,
        )
