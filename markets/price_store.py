"""The price store: the latest prices in Redis, their keys, encoding and decoding, and
its refill from PostgreSQL. Selectors read it, ``markets.services`` writes it.

Redis layout (written by ``markets.services.prices_record`` and ``prices_restore``):

- ``PRICES_AS_OF_KEY``: epoch seconds of the latest write (``/health`` reports its age).
- ``PRICES_BODY_KEY``: the exact bytes of ``GET /api/v1/prices`` with ``"stale":false``;
  the read path flips that one flag when the prices are old, nothing else is encoded
  per request.
- ``READS_VERSION_KEY`` and ``READS_INDEX_KEY``: the public read cache's version and
  the set of its entries (``markets.read_cache``); ``reads_invalidate`` runs after every
  write of market data (here, the price history, tickers, coins).
- ``PRICES_QUOTES_KEY``: a hash ``coin id -> JSON quote`` (price, 24h change, market cap,
  volume, per-coin ``as_of`` and ``source``) for callers that need one coin or typed values.

Redis is a cache here: the record is PostgreSQL (``LatestPrice``). A reader that finds
the store empty (Redis came back empty) refills it from there once
(``price_store_refill``), so prices survive a Redis restart with their true age.
"""

import asyncio
import logging
import time
import weakref
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import redis.asyncio as aioredis
from django.conf import settings
from django.db import DatabaseError
from django_redis import get_redis_connection
from redis.exceptions import LockError

from cryptovault.decimals import decimal_str
from cryptovault.reconnect import RetryingAsyncRedisConnection
from markets.models import LatestPrice

logger = logging.getLogger(__name__)

PRICES_AS_OF_KEY = "cv:markets:prices:as_of"
PRICES_BODY_KEY = "cv:markets:prices:body"
PRICES_QUOTES_KEY = "cv:markets:prices:quotes"
READS_VERSION_KEY = "cv:markets:reads:version"
READS_INDEX_KEY = "cv:markets:reads:index"
# Set after a refill from PostgreSQL, for a poll period: an empty store is refilled once,
# not on every read (a fresh install with no recorded price stays empty until its poll).
PRICES_REFILLED_KEY = "cv:markets:prices:refilled"
PRICES_REFILL_LOCK = "cv:markets:lock:prices_refill"
# How long a reader waits for another reader's refill before it answers without it.
PRICES_REFILL_WAIT_SECONDS = 3
# Each coin's venue tickers (``{"as_of", "venues"}``), read by the arbitrage maths.
TICKERS_KEY_PREFIX = "cv:markets:tickers:coin:"

# The stale flag sits before "prices" in the stored body, so the first match is the flag.
STALE_FALSE = b'"stale":false'
STALE_TRUE = b'"stale":true'
EMPTY_PRICES_BODY = b'{"as_of":null,"source":null,"stale":true,"prices":{}}'

# What the fallback marks its made-up prices with: served for display, never traded on.
SIMULATED_SOURCE = "simulated"
# A price stamped up to this far ahead of our clock counts as current (web, worker and
# Redis hosts drift a little); further ahead it is refused: no source reports prices
# from the future, so such a stamp was written by mistake or on purpose.
PRICE_CLOCK_SKEW_SECONDS = 2.0


def prices_are_stale(*, as_of_epoch: float | None) -> bool:
    """Older than ``PRICE_STALE_SECONDS``, or stamped in the future (beyond
    ``PRICE_CLOCK_SKEW_SECONDS``): either way not a price to use."""
    if as_of_epoch is None:
        return True
    age = time.time() - as_of_epoch
    return age > settings.PRICE_STALE_SECONDS or age < -PRICE_CLOCK_SKEW_SECONDS


def prices_body_render(*, body: bytes | None, as_of_raw: bytes | None) -> bytes:
    """The ``GET /prices`` bytes from what Redis holds, with the stale flag of this moment."""
    if body is None:
        return EMPTY_PRICES_BODY
    as_of_epoch = float(as_of_raw) if as_of_raw is not None else None
    if prices_are_stale(as_of_epoch=as_of_epoch):
        return body.replace(STALE_FALSE, STALE_TRUE, 1)
    return body


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def snapshot_body(*, as_of: datetime, source: str, quotes: dict[bytes, bytes]) -> bytes:
    entries = {}
    for key in sorted(quotes):
        quote = orjson.loads(quotes[key])
        entries[key.decode()] = {"usd": quote["usd"], "change_24h_pct": quote["change_24h_pct"]}
    # Key order matters: "stale" must precede "prices" (see STALE_FALSE).
    return orjson.dumps(
        {"as_of": iso_utc(as_of), "source": source, "stale": False, "prices": entries}
    )


def quote_bytes(*, price: Decimal, fields: dict, as_of: datetime, source: str) -> bytes:
    last_updated = fields.get("last_updated")
    return orjson.dumps(
        {
            "usd": decimal_str(price),
            "change_24h_pct": decimal_str(fields.get("change_24h_pct")),
            "market_cap": decimal_str(fields.get("market_cap")),
            "volume_24h": decimal_str(fields.get("volume_24h")),
            "last_updated": iso_utc(last_updated or as_of),
            "as_of": as_of.timestamp(),
            "source": source,
        }
    )


def price_store_refill() -> bool:
    """Refill an empty price store from PostgreSQL's latest recorded real prices, once,
    under a lock (``prices_restore``). Called by the readers when they
    find nothing; True when the store was empty and holds prices now (read again)."""
    redis = get_redis_connection("default")
    if redis.exists(PRICES_AS_OF_KEY, PRICES_REFILLED_KEY):
        return False  # not empty (what the caller read is the answer), or already refilled
    lock = redis.lock(PRICES_REFILL_LOCK, timeout=10)
    if not lock.acquire(blocking=True, blocking_timeout=PRICES_REFILL_WAIT_SECONDS):
        return False
    try:
        # Another reader may have refilled it while we waited for the lock.
        if not redis.exists(PRICES_AS_OF_KEY, PRICES_REFILLED_KEY):
            try:
                restored = prices_restore()
            except DatabaseError as exc:
                # Without PostgreSQL there is nothing to refill from: answer as before
                # (no prices) and let the next poll fill the store.
                logger.warning("price store refill failed", extra={"error": str(exc)})
            else:
                logger.info("price store refilled", extra={"coins": restored})
            redis.set(PRICES_REFILLED_KEY, 1, ex=settings.PRICE_POLL_SECONDS)
    finally:
        try:
            lock.release()
        except LockError:
            logger.warning("price store refill outlived its lock")
    return bool(redis.exists(PRICES_AS_OF_KEY))


def prices_restore() -> int:
    """Refill the price store from the latest real quotes recorded in PostgreSQL
    (``LatestPrice``), each with its own true ``as_of``: never restamped, so a recorded
    price older than ``PRICE_STALE_SECONDS`` is served as stale and refused by orders,
    exactly as if Redis had kept it. A quote already in the store wins (a poll that
    landed meanwhile is newer). Returns the number of quotes restored."""
    rows = list(LatestPrice.objects.filter(coin__tracked=True))
    if not rows:
        return 0
    restored = {
        row.coin_id: quote_bytes(
            price=row.price,
            fields={
                "change_24h_pct": row.change_24h_pct,
                "market_cap": row.market_cap,
                "volume_24h": row.volume_24h,
                "last_updated": row.last_updated,
            },
            as_of=row.as_of,
            source=row.source,
        )
        for row in rows
    }
    newest = max(rows, key=lambda row: row.as_of)
    added = 0

    def write(pipe) -> None:
        nonlocal added
        # WATCH makes this all-or-nothing against a concurrent prices_record.
        if pipe.exists(PRICES_AS_OF_KEY):
            return
        existing = pipe.hgetall(PRICES_QUOTES_KEY)
        quotes = {key.encode(): value for key, value in restored.items()} | existing
        added = len(quotes) - len(existing)
        pipe.multi()
        pipe.hset(PRICES_QUOTES_KEY, mapping=quotes)
        pipe.set(
            PRICES_BODY_KEY,
            snapshot_body(as_of=newest.as_of, source=newest.source, quotes=quotes),
        )
        pipe.set(PRICES_AS_OF_KEY, repr(newest.as_of.timestamp()))

    get_redis_connection("default").transaction(write, PRICES_AS_OF_KEY, PRICES_QUOTES_KEY)
    reads_invalidate()
    return added


# One atomic step: a fill (``markets.read_cache``) lands wholly before it (and is
# deleted) or after it (and is refused: its version is old).
_READS_INVALIDATE = """
redis.call('INCR', KEYS[1])
local entries = redis.call('SMEMBERS', KEYS[2])
for i = 1, #entries, 1000 do
    redis.call('DEL', unpack(entries, i, math.min(i + 999, #entries)))
end
redis.call('DEL', KEYS[2])
"""


def reads_invalidate() -> None:
    """Retire every cached public read; called after a write of what they show, never
    before (a reader may otherwise cache what it read just before the write)."""
    get_redis_connection("default").eval(_READS_INVALIDATE, 2, READS_VERSION_KEY, READS_INDEX_KEY)


def prices_snapshot_bytes() -> bytes:
    redis = get_redis_connection("default")
    body, as_of_raw = redis.mget(PRICES_BODY_KEY, PRICES_AS_OF_KEY)
    if body is None and price_store_refill():
        body, as_of_raw = redis.mget(PRICES_BODY_KEY, PRICES_AS_OF_KEY)
    return prices_body_render(body=body, as_of_raw=as_of_raw)


_async_redis_by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]" = (
    weakref.WeakKeyDictionary()
)


def async_redis() -> aioredis.Redis:
    # redis.asyncio connections belong to one event loop; tests run several loops.
    loop = asyncio.get_running_loop()
    client = _async_redis_by_loop.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=2,
            socket_connect_timeout=2,
            connection_class=RetryingAsyncRedisConnection,
        )
        _async_redis_by_loop[loop] = client
    return client
