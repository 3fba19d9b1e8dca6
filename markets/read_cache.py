"""The public read cache: the encoded bodies of the public market reads (``coins``,
``coins/<id>``, ``coins/<id>/history``, ``coins/<id>/ohlc``, ``arbitrage``) in Redis,
their ETag and Cache-Control, and the per-IP counters those reads are limited by.

Django fills the cache (``cached_response``, from ``markets.apis``); the ASGI lane in
``markets.asgi`` serves from it with one Redis GET and no database query. An entry is one
Redis value, ``<prices as_of>\n<headers JSON>\n<body>``, keyed by scheme, host, path and
raw query (the body's pagination links hold scheme and host), and listed in
``READS_INDEX_KEY``. Every write of market data (the price store, price history, venue
tickers, coins) runs ``price_store.reads_invalidate`` after writing: it bumps
``READS_VERSION_KEY`` and deletes every listed entry, in one atomic step. A reader reads
the version before it builds a body and stores it only if the version is still the same
(``_FILL``, atomic too), so a body is never stored after a write of newer data, and an
entry in Redis is always current (its ``as_of`` too). Entries also expire after
``PRICE_POLL_SECONDS``, which bounds what changes with time alone (candle and history
windows, expiring tickers, the upstream copies of details and charts, which refresh on a
miss).

``GET /prices`` is not stored here: its body is the price store's own
(``PRICES_BODY_KEY``), its stale flag set per request; its ETag is the hash of those
bytes, so a 304 never confirms a body whose flag has changed since.

ETags are strong: a hash of the exact bytes. ``Cache-Control`` lets a CDN or nginx keep
a body for one poll period, never past the moment the prices turn stale.
"""

import hashlib
import math
import time
from typing import cast
from urllib.parse import parse_qsl

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import get_conditional_response
from django_redis import get_redis_connection
from redis.asyncio import ConnectionError as AsyncConnectionError

from markets.price_store import (
    PRICES_AS_OF_KEY,
    PRICES_BODY_KEY,
    READS_INDEX_KEY,
    READS_VERSION_KEY,
    async_redis,
    prices_body_render,
    prices_snapshot_bytes,
)

READS_KEY_PREFIX = "cv:markets:reads:"
RATE_KEY_PREFIX = "cv:markets:ratelimit:"
# Per client IP and minute (fixed windows), shared by the lane and Django. Details and
# history may reach the source, so they are the tightest; a page polling /prices every
# second fits five times over.
READS_PER_MINUTE = {
    "prices": 300,
    "coins": 120,
    "coin-detail": 30,
    "coin-history": 30,
    "coin-ohlc": 120,
    "arbitrage": 60,
}


# --- ETag, Cache-Control --------------------------------------------------------------------
def etag_of(body: bytes) -> str:
    return f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'


def cache_control(as_of_raw: bytes | None) -> str:
    """``public, max-age=N, s-maxage=N``: one poll period, or less when the prices turn
    stale sooner (a body cached downstream must not outlive its freshness)."""
    seconds = settings.PRICE_POLL_SECONDS
    if as_of_raw is not None:
        until_stale = float(as_of_raw) + settings.PRICE_STALE_SECONDS - time.time()
        if until_stale > 0:
            seconds = min(seconds, math.floor(until_stale))
    return f"public, max-age={seconds}, s-maxage={seconds}"


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, as
    Django's ``get_conditional_response`` makes it)."""
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


# --- entries ------------------------------------------------------------------------------
def entry_key(*, scheme: str, host: str, path: str, query: str) -> str:
    return f"{READS_KEY_PREFIX}{scheme}://{host}{path}?{query}"


def cacheable_query(query: str, params: frozenset[str]) -> bool:
    """Only queries made of the view's own parameters, each once, are stored: the key
    space stays what the view can answer."""
    names = [name for name, _ in parse_qsl(query, keep_blank_values=True)]
    return len(names) == len(set(names)) and set(names) <= params


def entry_encode(*, as_of_raw: bytes | None, headers: list[tuple[str, str]], body: bytes) -> bytes:
    return b"\n".join((as_of_raw or b"", orjson.dumps(headers), body))


def entry_decode(raw: bytes) -> tuple[bytes | None, list, bytes]:
    """``(prices as_of, headers, body)`` of a stored entry."""
    as_of_raw, meta, body = raw.split(b"\n", 2)
    return as_of_raw or None, orjson.loads(meta), body


# Store the entry only while the version is the one read before its body was built.
_FILL = """
if (redis.call('GET', KEYS[1]) or '') == ARGV[1] then
    redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
    redis.call('SADD', KEYS[3], KEYS[2])
    redis.call('EXPIRE', KEYS[3], ARGV[3])
end
"""


def read_state() -> tuple[bytes, bytes | None]:
    """The version and the prices' ``as_of``, read before a body is built."""
    version, as_of_raw = get_redis_connection("default").mget(READS_VERSION_KEY, PRICES_AS_OF_KEY)
    return version or b"", as_of_raw


def conditional_response(
    request: HttpRequest, response: HttpResponse, *, as_of_raw: bytes | None
) -> HttpResponse:
    """``response`` with its ETag and Cache-Control, or a 304 when the client has it."""
    response["ETag"] = etag_of(response.content)
    response["Cache-Control"] = cache_control(as_of_raw)
    # With a response given, Django answers it or its 304, never None.
    return get_conditional_response(request, etag=response["ETag"], response=response) or response


def cached_response(
    request: HttpRequest,
    response: HttpResponse,
    *,
    version: bytes,
    as_of_raw: bytes | None,
    params: frozenset[str],
) -> HttpResponse:
    """A rendered 200 of a public read: stored for the lane (``version`` as read before
    the body was built), answered with its ETag and Cache-Control (or a 304)."""
    response = conditional_response(request, response, as_of_raw=as_of_raw)
    query = request.META.get("QUERY_STRING", "")
    if response.status_code == 200 and cacheable_query(query, params):
        headers = [(k.lower(), v) for k, v in response.items() if k.lower() != "cache-control"]
        key = entry_key(
            scheme=request.scheme or "http", host=request.get_host(), path=request.path, query=query
        )
        value = entry_encode(as_of_raw=as_of_raw, headers=headers, body=response.content)
        get_redis_connection("default").eval(
            _FILL,
            3,
            READS_VERSION_KEY,
            key,
            READS_INDEX_KEY,
            version,
            value,
            settings.PRICE_POLL_SECONDS,
        )
    return response


# --- per-IP counts ----------------------------------------------------------------------------
def _rate_window(group: str, client_ip: str) -> tuple[str, int]:
    """The counter key of this minute and the seconds until it ends."""
    now = time.time()
    window = int(now // 60)
    retry_after = max(1, math.ceil((window + 1) * 60 - now))
    return f"{RATE_KEY_PREFIX}{group}:{client_ip}:{window}", retry_after


def read_count(*, group: str, client_ip: str) -> int:
    """Count a read of ``group`` against ``client_ip``: 0, or the seconds to wait when
    over ``READS_PER_MINUTE`` (never over with ``RATELIMIT_ENABLE`` off). Redis errors
    propagate: a read that cannot be counted is not served (a JSON 503)."""
    if not settings.RATELIMIT_ENABLE:
        return 0
    key, retry_after = _rate_window(group, client_ip)
    pipe = get_redis_connection("default").pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 120)
    count, _ = pipe.execute()
    return retry_after if count > READS_PER_MINUTE[group] else 0


async def read_counted_async(*, group: str, client_ip: str, keys: list[str]) -> tuple[list, int]:
    """``(MGET of keys, 0)``, or ``(..., seconds to wait)`` when ``client_ip`` is over
    ``group``'s rate: one round trip, the count and the read in one pipeline."""
    redis = async_redis()
    if not settings.RATELIMIT_ENABLE:
        return await read_async(keys), 0
    key, retry_after = _rate_window(group, client_ip)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.mget(keys)
            pipe.incr(key)
            pipe.expire(key, 120)
            values, count, _ = await pipe.execute()
    except AsyncConnectionError:
        # A pooled connection that Redis closed (it restarted). The INCR may have run,
        # so it is not sent again: this one request goes uncounted.
        return await read_async(keys), 0
    return values, retry_after if count > READS_PER_MINUTE[group] else 0


async def read_uncount_async(*, group: str, client_ip: str) -> None:
    """Take back a count (the lane hands the read to Django, which counts it itself)."""
    if settings.RATELIMIT_ENABLE:
        await async_redis().decr(_rate_window(group, client_ip)[0])


async def read_async(keys: list[str]) -> list:
    """MGET of ``keys``, uncounted."""
    try:
        return await async_redis().mget(keys)
    except AsyncConnectionError:
        # A pooled connection that Redis closed (it restarted): a read is safe to repeat.
        return await async_redis().mget(keys)


async def prices_read_async(*, client_ip: str) -> tuple[bytes, bytes | None, int]:
    """``GET /prices`` for async callers, counted against ``client_ip``: ``(body,
    as_of, 0)`` or ``(b"", None, seconds to wait)``. No thread hop and no ORM unless the
    price store is empty (then it is refilled from PostgreSQL, on a thread)."""
    (body, as_of_raw), retry_after = await read_counted_async(
        group="prices", client_ip=client_ip, keys=[PRICES_BODY_KEY, PRICES_AS_OF_KEY]
    )
    if retry_after:
        return b"", None, retry_after
    if body is None:
        body = await sync_to_async(prices_snapshot_bytes, thread_sensitive=False)()
        as_of_raw = cast(bytes | None, await async_redis().get(PRICES_AS_OF_KEY))
        return body, as_of_raw, 0
    return prices_body_render(body=body, as_of_raw=as_of_raw), as_of_raw, 0
