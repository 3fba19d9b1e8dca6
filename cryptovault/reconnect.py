"""Riding through brief restarts of PostgreSQL and Redis: connecting is retried for a
few seconds with backoff, so a restart shorter than that costs a slower request, not a
503. Only establishing a connection is retried, never a statement or command (it may
have run); a longer outage still fails within the budget and becomes the JSON 503."""

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import redis.asyncio
from django.conf import settings
from redis import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

FIRST_DELAY_SECONDS = 0.1
MAX_DELAY_SECONDS = 1.0
REDIS_CONNECT_ERRORS = (RedisConnectionError, RedisTimeoutError)

T = TypeVar("T")


def backoff_delays(seconds: float) -> Iterator[float]:
    """The waits between connect attempts: doubling from ``FIRST_DELAY_SECONDS`` (capped
    at ``MAX_DELAY_SECONDS``), for ``seconds`` after the first failure."""
    deadline = time.monotonic() + seconds
    delay = FIRST_DELAY_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        yield min(delay, remaining)
        delay = min(delay * 2, MAX_DELAY_SECONDS)


def connect_with_retry(
    connect: Callable[[], T], *, errors: tuple[type[Exception], ...], seconds: float
) -> T:
    """``connect()``, retried on ``errors`` (``backoff_delays(seconds)``); the last error
    is raised once the budget is spent."""
    delays = backoff_delays(seconds)
    while True:
        try:
            return connect()
        except errors:
            wait = next(delays, None)
            if wait is None:
                raise
            time.sleep(wait)


class RetryingRedisConnection(Connection):
    """redis-py's connection (``connection_class`` of the pool) whose ``connect`` rides
    through a restart. redis-py's own ``Retry`` would also repeat commands whose reply
    was lost, so it stays off (the default): a command is never sent twice."""

    def connect(self) -> None:
        connect_with_retry(
            super().connect,
            errors=REDIS_CONNECT_ERRORS,
            seconds=settings.REDIS_CONNECT_RETRY_SECONDS,
        )


class RetryingAsyncRedisConnection(redis.asyncio.Connection):
    """``RetryingRedisConnection`` for ``redis.asyncio`` clients."""

    async def connect(self) -> None:
        if self.is_connected:
            return  # the pool asks on every command: the common case stays cheap
        delays = backoff_delays(settings.REDIS_CONNECT_RETRY_SECONDS)
        while True:
            try:
                return await super().connect()
            except REDIS_CONNECT_ERRORS:
                wait = next(delays, None)
                if wait is None:
                    raise
                await asyncio.sleep(wait)
