"""The realtime hand-off of each price tick (owned by the realtime issue).

``markets.services.prices_on_tick`` calls ``prices_tick_publish`` after every
successful write of prices to Redis. It must stay cheap (a channel-layer
``group_send`` or an enqueue), because it runs inside the poll task.
"""

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable

import orjson
import redis.asyncio as aioredis
from django.conf import settings
from django_redis import get_redis_connection
from redis.connection import parse_url

logger = logging.getLogger(__name__)


@functools.cache
def prices_channel() -> str:
    """The Redis pub/sub channel of price ticks (read by ``markets.consumers.PriceFeed``).

    Pub/sub is server-wide in Redis, not per database, so the database number keeps
    deployments (and test runs) that share a server apart."""
    return f"cv:ws:prices:{parse_url(settings.REDIS_URL).get('db', 0)}"


def prices_tick_publish(*, as_of: str, prices: dict) -> None:
    """Push a ``{"type": "tick", "as_of", "prices"}`` frame to ``/ws/prices`` subscribers.

    ``as_of`` is the ISO-8601 string and ``prices`` the ``{coin: {"usd", "change_24h_pct"}}``
    entries, both exactly as in ``GET /api/v1/prices`` (``prices_snapshot()``).
    One publish per tick, already encoded: each web process receives it once and
    relays the same text to its sockets.
    """
    frame = orjson.dumps({"type": "tick", "as_of": as_of, "prices": prices})
    get_redis_connection("default").publish(prices_channel(), frame)


async def price_ticks_follow(
    *,
    subscribed: Callable[[bool], None],
    lost: Callable[[], None],
    tick: Callable[[bytes], Awaitable[None]],
) -> None:
    """Follow the price-tick channel until cancelled: one Redis subscription, re-made
    with back-off whenever Redis drops it. ``subscribed(again)`` runs once ticks flow
    (``again``: ticks published while unsubscribed are lost, so resync), ``tick(data)``
    for each tick, ``lost()`` when the subscription drops. The web process's price
    sockets and price streams each keep one such follower (one subscriber per process)."""
    delay = 0.2
    subscribed_before = False
    while True:
        # Reads wait in get_message(timeout=...), which bounds them itself; the socket
        # timeout covers the other commands (settings: "Redis timeouts").
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_SOCKET_CONNECT_TIMEOUT,
            socket_keepalive=True,
            health_check_interval=15,
            client_name=f"cv-price-feed-{os.getpid()}",
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(prices_channel())
            subscribed(subscribed_before)
            subscribed_before, delay = True, 0.2
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is not None and message["type"] == "message":
                    await tick(message["data"])
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("price ticks lost Redis; again in %.1fs", delay, exc_info=True)
            lost()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        finally:
            # The connection is being dropped anyway.
            with contextlib.suppress(Exception):
                await pubsub.aclose()
                await client.aclose()
