"""The realtime hand-off of each price tick (owned by the realtime issue).

``markets.services.prices_on_tick`` calls ``prices_tick_publish`` after every
successful write of prices to Redis. It must stay cheap (a channel-layer
``group_send`` or an enqueue), because it runs inside the poll task.
"""

import functools

import orjson
from django.conf import settings
from django_redis import get_redis_connection
from redis.connection import parse_url


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
