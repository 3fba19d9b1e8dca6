"""Reads of market data: the latest prices live in Redis, coins and history in PostgreSQL.

Redis layout of the price store (written only by ``markets.services.prices_record``):

- ``PRICES_AS_OF_KEY``: epoch seconds of the latest write (``/health`` reports its age).
- ``PRICES_BODY_KEY``: the exact bytes of ``GET /api/v1/prices`` with ``"stale":false``;
  the read path flips that one flag when the prices are old, nothing else is encoded
  per request.
- ``PRICES_QUOTES_KEY``: a hash ``coin id -> JSON quote`` (price, 24h change, market cap,
  volume, per-coin ``as_of`` and ``source``) for callers that need one coin or typed values.

Redis is a cache here: the record is PostgreSQL (``LatestPrice``). A reader that finds
the store empty (Redis came back empty) refills it from there once
(``price_store_refill``), so prices survive a Redis restart with their true age.
"""

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import orjson
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connections, router
from django.db.models import Case, IntegerField, Q, QuerySet, Value, When
from django.utils import timezone
from django_redis import get_redis_connection
from redis.exceptions import LockError
from rest_framework import status

from cryptovault.exceptions import ApplicationError
from cryptovault.reconnect import RetryingAsyncRedisConnection
from markets.models import Coin, PricePoint
from markets.sources import (
    SourceError,
    SourceNotFound,
    SourceRateLimited,
    fetch_seconds_max,
    source_client,
)

logger = logging.getLogger(__name__)

PRICES_AS_OF_KEY = "cv:markets:prices:as_of"
PRICES_BODY_KEY = "cv:markets:prices:body"
PRICES_QUOTES_KEY = "cv:markets:prices:quotes"
# Set after a refill from PostgreSQL, for a poll period: an empty store is refilled once,
# not on every read (a fresh install with no recorded price stays empty until its poll).
PRICES_REFILLED_KEY = "cv:markets:prices:refilled"
PRICES_REFILL_LOCK = "cv:markets:lock:prices_refill"
# How long a reader waits for another reader's refill before it answers without it.
PRICES_REFILL_WAIT_SECONDS = 3
TICKERS_KEY_PREFIX = "cv:markets:tickers:coin:"
# Upstream-backed reads: ``{"at": epoch fetched, "data": ...}``, kept past freshness.
DETAILS_KEY_PREFIX = "cv:markets:upstream:details:"
CHART_KEY_PREFIX = "cv:markets:upstream:chart:"
PCT = Decimal("0.0001")
# GET /prices per client IP and minute (fixed windows): a page polling every second fits
# five times over. The other market endpoints use django-ratelimit (markets/apis.py).
PRICES_PER_MINUTE = 300
PRICES_RATE_KEY_PREFIX = "cv:markets:ratelimit:prices:"

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


class PriceUnavailable(ApplicationError):
    """No usable price for a coin: none recorded (``price_unavailable``) or too old
    (``price_stale``). A dependency problem, hence 503 rather than a client error."""

    def __init__(self, message: str, *, code: str = "price_unavailable") -> None:
        super().__init__(message, code=code, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class PriceQuote:
    price: Decimal
    as_of: datetime
    source: str


def prices_age_seconds() -> float | None:
    raw = get_redis_connection("default").get(PRICES_AS_OF_KEY)
    if raw is None:
        return None
    return round(max(0.0, time.time() - float(raw)), 3)


def prices_age_by_source() -> dict[str, float]:
    """Seconds since the newest stored quote of each source (``coingecko``, ``simulated``):
    a source whose quotes were all replaced by another's is no longer listed."""
    newest: dict[str, float] = {}
    for quote in price_quotes().values():
        newest[quote["source"]] = max(newest.get(quote["source"], quote["as_of"]), quote["as_of"])
    now = time.time()
    return {source: max(0.0, now - as_of) for source, as_of in newest.items()}


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


def price_store_refill() -> bool:
    """Refill an empty price store from PostgreSQL's latest recorded real prices, once,
    under a lock (``markets.services.prices_restore``). Called by the readers when they
    find nothing; True when the store was empty and holds prices now (read again)."""
    from markets.services import prices_restore  # services import this module

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


def prices_snapshot_bytes() -> bytes:
    redis = get_redis_connection("default")
    body, as_of_raw = redis.mget(PRICES_BODY_KEY, PRICES_AS_OF_KEY)
    if body is None and price_store_refill():
        body, as_of_raw = redis.mget(PRICES_BODY_KEY, PRICES_AS_OF_KEY)
    return prices_body_render(body=body, as_of_raw=as_of_raw)


_async_redis_by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]" = (
    weakref.WeakKeyDictionary()
)


def _async_redis() -> aioredis.Redis:
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


async def prices_snapshot_bytes_async(*, client_ip: str) -> tuple[bytes, int]:
    """``prices_snapshot_bytes`` for async callers, counted against ``client_ip``'s
    ``PRICES_PER_MINUTE`` (unless ``RATELIMIT_ENABLE`` is off): ``(body, 0)``, or
    ``(b"", seconds to wait)`` when over the rate. No thread hop, no ORM, and one round
    trip: the MGET and the per-minute counter travel in one pipeline."""
    redis = _async_redis()
    if not settings.RATELIMIT_ENABLE:
        body, as_of_raw = await _prices_mget_async(redis)
        if body is None:
            return await _prices_refilled_bytes(), 0
        return prices_body_render(body=body, as_of_raw=as_of_raw), 0
    now = time.time()
    window = int(now // 60)
    key = f"{PRICES_RATE_KEY_PREFIX}{client_ip}:{window}"
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.mget(PRICES_BODY_KEY, PRICES_AS_OF_KEY)
            pipe.incr(key)
            pipe.expire(key, 120)
            (body, as_of_raw), count, _ = await pipe.execute()
    except aioredis.ConnectionError:
        # A pooled connection that Redis closed (it restarted). The INCR may have run,
        # so it is not sent again: this one request goes uncounted.
        body, as_of_raw = await _prices_mget_async(redis)
        count = 0
    if count > PRICES_PER_MINUTE:
        return b"", max(1, math.ceil((window + 1) * 60 - now))
    if body is None:
        return await _prices_refilled_bytes(), 0
    return prices_body_render(body=body, as_of_raw=as_of_raw), 0


async def _prices_mget_async(redis: aioredis.Redis) -> list:
    try:
        return await redis.mget(PRICES_BODY_KEY, PRICES_AS_OF_KEY)
    except aioredis.ConnectionError:
        # A pooled connection that Redis closed (it restarted): a read is safe to repeat.
        return await redis.mget(PRICES_BODY_KEY, PRICES_AS_OF_KEY)


async def _prices_refilled_bytes() -> bytes:
    # Rare (Redis came back empty): the refill reads PostgreSQL, so it takes a thread.
    return await sync_to_async(prices_snapshot_bytes, thread_sensitive=False)()


def prices_snapshot() -> dict:
    """``{"as_of","source","stale","prices":{coin:{"usd","change_24h_pct"}}}`` exactly as
    ``GET /api/v1/prices`` answers it (decimal strings, ISO ``as_of``)."""
    return orjson.loads(prices_snapshot_bytes())


def price_quotes() -> dict[str, dict]:
    """Every stored quote, decoded: ``{coin: {"usd", "change_24h_pct", "market_cap",
    "volume_24h", "last_updated", "as_of", "source"}}`` (numbers as strings)."""
    redis = get_redis_connection("default")
    raw = redis.hgetall(PRICES_QUOTES_KEY)
    if not raw and price_store_refill():
        raw = redis.hgetall(PRICES_QUOTES_KEY)
    return {key.decode(): orjson.loads(value) for key, value in raw.items()}


def price_get_fresh(*, coin_id: str) -> PriceQuote:
    """The latest price of ``coin_id`` in usd, or ``PriceUnavailable`` when there is none
    (``price_unavailable``) or it is not a real, current one (``price_stale``): older
    than ``PRICE_STALE_SECONDS``, stamped in the future, or made up by the ``simulated``
    fallback. Orders never fill on such a price."""
    redis = get_redis_connection("default")
    raw = redis.hget(PRICES_QUOTES_KEY, coin_id)
    if raw is None and price_store_refill():
        raw = redis.hget(PRICES_QUOTES_KEY, coin_id)
    if raw is None:
        raise PriceUnavailable(f"No price available for {coin_id}.", code="price_unavailable")
    quote = orjson.loads(raw)
    if prices_are_stale(as_of_epoch=quote["as_of"]):
        raise PriceUnavailable(f"The latest price of {coin_id} is stale.", code="price_stale")
    if quote["source"] == SIMULATED_SOURCE:
        raise PriceUnavailable(
            f"The latest price of {coin_id} is simulated (the market source is unreachable).",
            code="price_stale",
        )
    return PriceQuote(
        price=Decimal(quote["usd"]),
        as_of=datetime.fromtimestamp(quote["as_of"], tz=UTC),
        source=quote["source"],
    )


def prices_tradable() -> dict[str, Decimal]:
    """``{coin: usd price}`` of every stored price that ``price_get_fresh`` accepts (real,
    current, not from the future), in one read. The tasks that fill orders or fire
    alerts read their prices here, never from their message: nobody can hand them one."""
    return {
        coin_id: Decimal(quote["usd"])
        for coin_id, quote in price_quotes().items()
        if quote["source"] != SIMULATED_SOURCE and not prices_are_stale(as_of_epoch=quote["as_of"])
    }


# --- upstream-backed reads -------------------------------------------------------------------
def _copy_get(redis, key: str) -> dict | None:
    raw = redis.get(key)
    return orjson.loads(raw) if raw is not None else None


def upstream_read(*, key: str, fresh_seconds: int, fetch: Callable[[], Any]) -> Any:
    """``fetch()``'s result, cached under ``key`` for ``fresh_seconds``, single-flight.

    One request at a time fetches a key (a Redis lock); the others wait up to
    ``MARKET_DATA_SINGLE_FLIGHT_WAIT`` for its result and never fetch themselves, so a
    burst on one key costs one upstream call. The copy outlives its freshness by
    ``MARKET_DATA_LAST_COPY_SECONDS`` and serves whenever a fresh one cannot be had (the
    source failed, the budget said no, a fetch is taking long). Raises ``SourceError``
    only when there is no copy at all.
    """
    redis = get_redis_connection("default")
    copy = _copy_get(redis, key)
    if copy is not None and time.time() - copy["at"] < fresh_seconds:
        return copy["data"]
    lock = redis.lock(f"{key}:lock", timeout=fetch_seconds_max())
    if lock.acquire(blocking=False):
        try:
            data = fetch()
            redis.set(
                key,
                orjson.dumps({"at": time.time(), "data": data}),
                ex=fresh_seconds + settings.MARKET_DATA_LAST_COPY_SECONDS,
            )
            return data
        except SourceError:
            if copy is None:
                raise
            logger.warning("upstream read failed, last copy served", extra={"key": key})
            return copy["data"]
        finally:
            try:
                lock.release()
            except LockError:  # expired meanwhile; nothing of ours to release
                logger.warning("upstream read outlived its lock", extra={"key": key})
    # Someone else is fetching: its release is our signal that the copy is as new as it gets.
    if lock.acquire(blocking=True, blocking_timeout=settings.MARKET_DATA_SINGLE_FLIGHT_WAIT):
        lock.release()
        copy = _copy_get(redis, key) or copy
    if copy is None:
        raise SourceError(f"{key}: another request's fetch did not answer in time")
    return copy["data"]


# --- coins -----------------------------------------------------------------------------------
def coin_get(*, coin_id: str) -> Coin | None:
    return Coin.objects.filter(pk=coin_id).first()


def _coins_matching(search: str) -> QuerySet[Coin]:
    """Tracked coins matching ``search``, annotated with ``rank``: 0 exact id or symbol,
    1 prefix of id, symbol or name, 2 name (or id) contains."""
    term = search.strip()
    return (
        Coin.objects.filter(tracked=True)
        .annotate(
            rank=Case(
                When(Q(id__iexact=term) | Q(symbol__iexact=term), then=Value(0)),
                When(
                    Q(id__istartswith=term)
                    | Q(symbol__istartswith=term)
                    | Q(name__istartswith=term),
                    then=Value(1),
                ),
                When(Q(name__icontains=term) | Q(id__icontains=term), then=Value(2)),
                default=None,
                output_field=IntegerField(),
            )
        )
        .filter(rank__isnull=False)
    )


def coin_list(*, search: str | None = None) -> list[dict]:
    """Tracked coins with their latest quote, biggest market cap first (or, when searching,
    best match first). Tracked coins are few, so ranking happens here, not in SQL."""
    coins = (
        _coins_matching(search) if search and search.strip() else Coin.objects.filter(tracked=True)
    )
    quotes = price_quotes()
    rows = []
    for coin in coins:
        quote = quotes.get(coin.id, {})
        rows.append(
            {
                "id": coin.id,
                "symbol": coin.symbol,
                "name": coin.name,
                "price": quote.get("usd"),
                "change_24h_pct": quote.get("change_24h_pct"),
                "market_cap": quote.get("market_cap"),
                "volume_24h": quote.get("volume_24h"),
                "last_updated": quote.get("last_updated"),
                "_rank": getattr(coin, "rank", 0),
            }
        )
    rows.sort(
        key=lambda r: (
            r.pop("_rank"),
            r["market_cap"] is None,
            -Decimal(r["market_cap"] or 0),
            r["id"],
        )
    )
    return rows


def coin_details(*, coin: Coin) -> dict:
    """Description, links, supply, ATH/ATL from the source (fresh for
    ``COIN_DETAILS_CACHE_SECONDS``, fetched single-flight), with our own latest quote on
    top. When the source cannot answer, the last copy serves; with none, the coin is still
    served, with empty details."""

    def fetch() -> dict:
        try:
            with source_client() as client:
                return client.coin_details(coin_id=coin.id)
        except SourceNotFound:
            return {}

    try:
        details = upstream_read(
            key=DETAILS_KEY_PREFIX + coin.id,
            fresh_seconds=settings.COIN_DETAILS_CACHE_SECONDS,
            fetch=fetch,
        )
    except SourceError as exc:
        logger.warning("coin details unavailable", extra={"coin": coin.id, "error": str(exc)})
        details = None
    details = details or {}
    market = details.get("market_data") or {}
    quote = price_quotes().get(coin.id, {})
    empty_extreme = {"price": None, "change_pct": None, "date": None}
    return {
        "id": coin.id,
        "symbol": coin.symbol,
        "name": coin.name,
        "tracked": coin.tracked,
        "price": quote.get("usd") or market.get("price"),
        "change_24h_pct": quote.get("change_24h_pct") or market.get("change_24h_pct"),
        "market_cap": quote.get("market_cap") or market.get("market_cap"),
        "volume_24h": quote.get("volume_24h") or market.get("volume_24h"),
        "high_24h": market.get("high_24h"),
        "low_24h": market.get("low_24h"),
        "last_updated": quote.get("last_updated") or market.get("last_updated"),
        "market_cap_rank": details.get("market_cap_rank"),
        "description": details.get("description", ""),
        "categories": details.get("categories", []),
        "genesis_date": details.get("genesis_date"),
        "image": details.get("image"),
        "links": details.get("links", {}),
        "supply": details.get("supply", {"circulating": None, "total": None, "max": None}),
        "ath": details.get("ath", empty_extreme),
        "atl": details.get("atl", empty_extreme),
    }


# --- history -----------------------------------------------------------------------------------
def history_step_seconds(days: int) -> int:
    """CoinGecko's market_chart granularity: 5-minutely for 1 day, hourly to 90, daily beyond."""
    return 300 if days <= 1 else 3600 if days <= 90 else 86400


def history_fetch_days(days: int) -> int:
    """The ``days`` fetched upstream for a request of ``days``: the longest span of the
    same granularity, sliced down after. Every request then maps to one of three cache
    keys per coin, so a client walking through ``days`` cannot spend the budget."""
    return 1 if days <= 1 else 90 if days <= 90 else 365


def _history_from_db(*, coin_id: str, since: datetime, step: int) -> list[list]:
    # The last price of each step-wide bucket, bucketed by PostgreSQL (a year of minutes
    # is half a million rows; only the buckets travel). Lag-tolerant: the router may
    # send it to the replica like any ORM read of PricePoint.
    with connections[router.db_for_read(PricePoint)].cursor() as cursor:
        cursor.execute(
            f"""
            SELECT DISTINCT ON (bucket) date_bin(%s::interval, ts, %s) AS bucket, ts, price
            FROM {PricePoint._meta.db_table}
            WHERE coin_id = %s AND ts >= %s
            ORDER BY bucket, ts DESC
            """,  # noqa: S608 - the table name is ours, every value is a parameter
            [timedelta(seconds=step), datetime(2000, 1, 1, tzinfo=UTC), coin_id, since],
        )
        return [
            [int(ts.timestamp() * 1000), format(price.normalize(), "f")]
            for _bucket, ts, price in cursor.fetchall()
        ]


def coin_history(*, coin_id: str, days: int) -> list[list]:
    """``[[epoch ms, "price"], ...]`` over the last ``days``: from our own history when it
    reaches back that far, else from the source's ``market_chart`` (cached)."""
    step = history_step_seconds(days)
    since = timezone.now() - timedelta(days=days)
    earliest = (
        PricePoint.objects.filter(coin_id=coin_id)
        .order_by("ts")
        .values_list("ts", flat=True)
        .first()
    )
    covered = earliest is not None and earliest <= since + timedelta(
        seconds=max(step, settings.PRICE_HISTORY_INTERVAL_SECONDS)
    )
    if covered:
        return _history_from_db(coin_id=coin_id, since=since, step=step)
    fetch_days = history_fetch_days(days)

    def fetch() -> list[list]:
        with source_client() as client:
            points = client.market_chart(coin_id=coin_id, days=fetch_days)
        return [[ms, format(price.normalize(), "f")] for ms, price in points]

    try:
        points = upstream_read(
            key=f"{CHART_KEY_PREFIX}{coin_id}:{fetch_days}",
            fresh_seconds=min(history_step_seconds(fetch_days), 3600),
            fetch=fetch,
        )
    except SourceError as exc:
        logger.warning("market chart unavailable", extra={"coin": coin_id, "error": str(exc)})
        if earliest is not None:  # a partial history beats none
            return _history_from_db(coin_id=coin_id, since=since, step=step)
        retry_after = exc.retry_after if isinstance(exc, SourceRateLimited) else None
        raise ApplicationError(
            "Price history is unavailable right now.",
            code="history_unavailable",
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(math.ceil(retry_after))} if retry_after else None,
        ) from exc
    if not points:
        return points
    # Relative to the series' own end (when it was fetched), as CoinGecko counts days.
    since_ms = points[-1][0] - days * 86_400_000
    return [point for point in points if point[0] >= since_ms]


# --- arbitrage ---------------------------------------------------------------------------
def _venue_fee(exchange: str) -> Decimal:
    return settings.ARBITRAGE_VENUE_FEES.get(exchange, settings.ARBITRAGE_DEFAULT_FEE)


def _best_pair(venues: list[dict]) -> dict | None:
    """The (buy, sell) venue pair with the best return after both taker fees."""
    best = None
    for buy in venues:
        cost = Decimal(buy["price"]) * (1 + _venue_fee(buy["exchange"]))
        for sell in venues:
            if sell is buy:
                continue
            proceeds = Decimal(sell["price"]) * (1 - _venue_fee(sell["exchange"]))
            net_pct = (proceeds - cost) / cost * 100
            if best is None or net_pct > best[0]:
                best = (net_pct, buy, sell)
    if best is None:
        return None
    net_pct, buy, sell = best
    buy_price, sell_price = Decimal(buy["price"]), Decimal(sell["price"])
    return {
        "buy_exchange": buy["exchange"],
        "buy_price": buy["price"],
        "buy_fee_rate": format(_venue_fee(buy["exchange"]), "f"),
        "sell_exchange": sell["exchange"],
        "sell_price": sell["price"],
        "sell_fee_rate": format(_venue_fee(sell["exchange"]), "f"),
        "spread_pct": (sell_price - buy_price) / buy_price * 100,
        "net_pct": net_pct,
    }


def arbitrage_opportunities(*, min_net_pct: Decimal | None = None) -> dict:
    """Best buy venue vs best sell venue per tracked coin, from the polled venue tickers;
    only pairs whose ``net_pct`` (after both venues' fees) beats the threshold, best first."""
    threshold = settings.ARBITRAGE_MIN_NET_PCT if min_net_pct is None else min_net_pct
    coin_ids = sorted(Coin.objects.filter(tracked=True).values_list("id", flat=True))
    raws = (
        get_redis_connection("default").mget([TICKERS_KEY_PREFIX + c for c in coin_ids])
        if coin_ids
        else []
    )
    opportunities, latest = [], None
    for coin_id, raw in zip(coin_ids, raws, strict=True):
        if raw is None:
            continue
        data = orjson.loads(raw)
        latest = max(latest or 0.0, data["as_of"])
        pair = _best_pair(data["venues"])
        if pair is not None and pair["net_pct"] > threshold:
            opportunities.append({"coin": coin_id, **pair})
    opportunities.sort(key=lambda o: o["net_pct"], reverse=True)
    for opportunity in opportunities:
        for field in ("spread_pct", "net_pct"):
            opportunity[field] = format(opportunity[field].quantize(PCT, ROUND_HALF_EVEN), "f")
    as_of = datetime.fromtimestamp(latest, tz=UTC) if latest is not None else None
    return {"as_of": as_of, "opportunities": opportunities}
