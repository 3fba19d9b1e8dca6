"""Reads of market data: the latest prices from the price store (``markets.price_store``,
Redis, refilled from PostgreSQL when empty), coins from PostgreSQL. Reads that call the
source live in ``markets.upstream``, the arbitrage maths in ``markets.arbitrage``."""

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from django.db import connections, router
from django.db.models import Avg, Case, IntegerField, Max, Min, Q, QuerySet, Value, When
from django_redis import get_redis_connection
from rest_framework import status

from cryptovault.exceptions import ApplicationError
from markets.models import Coin, PricePoint
from markets.price_store import (
    PRICES_AS_OF_KEY,
    PRICES_QUOTES_KEY,
    SIMULATED_SOURCE,
    TICKERS_KEY_PREFIX,
    price_store_refill,
    prices_are_stale,
    prices_snapshot_bytes,
)


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
        if quote_is_tradable(quote)
    }


def quote_is_tradable(quote: dict) -> bool:
    """Whether a stored quote (an entry of ``price_quotes``) is one orders fill on: real
    (not the ``simulated`` fallback's), current, not stamped in the future."""
    return quote["source"] != SIMULATED_SOURCE and not prices_are_stale(as_of_epoch=quote["as_of"])


def venue_spread(*, coin_id: str) -> Decimal | None:
    """How far apart the venues quote ``coin_id`` (``(highest - lowest) / lowest``) in the
    latest polled tickers (``TICKERS_KEY_PREFIX``, the arbitrage input), or None when
    fewer than two venues are known or the tickers have expired."""
    raw = get_redis_connection("default").get(TICKERS_KEY_PREFIX + coin_id)
    if raw is None:
        return None
    prices = [Decimal(venue["price"]) for venue in orjson.loads(raw)["venues"]]
    prices = [price for price in prices if price.is_finite() and price > 0]
    if len(prices) < 2:
        return None
    return (max(prices) - min(prices)) / min(prices)


# --- coins -----------------------------------------------------------------------------------
def coin_get(*, coin_id: str) -> Coin | None:
    return Coin.objects.filter(pk=coin_id).first()


def coin_ids_tracked() -> frozenset[str]:
    return frozenset(Coin.objects.filter(tracked=True).values_list("id", flat=True))


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


# --- candles ---------------------------------------------------------------------------------
# Every fixed-length interval candles are built for, in seconds, by Binance's names. Buckets
# start on multiples of the interval since the Unix epoch (UTC), as Binance aligns klines.
CANDLE_INTERVALS = {
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "4h": 14400,
    "6h": 21600,
    "8h": 28800,
    "12h": 43200,
    "1d": 86400,
}
CANDLES_LIMIT_DEFAULT = 500
CANDLES_LIMIT_MAX = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Candle:
    open_time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal


def candle_list(
    *,
    coin_id: str,
    interval: str,
    limit: int = CANDLES_LIMIT_DEFAULT,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[Candle]:
    """OHLC candles of ``coin_id`` from the stored price points (``PricePoint``, one per
    ``PRICE_HISTORY_INTERVAL_SECONDS``), oldest first, at most ``limit``.

    The window is ``limit`` intervals long: from the bucket holding ``start`` when given,
    else ending at ``end`` (default now, the current candle included). A bucket without a
    stored point yields no candle: gaps stay gaps, so a window with gaps holds fewer.
    """
    step = CANDLE_INTERVALS[interval]
    span = timedelta(seconds=step * limit)
    if start is not None:
        since = _EPOCH + timedelta(seconds=(start - _EPOCH).total_seconds() // step * step)
        until = since + span if end is None else min(end + timedelta(microseconds=1), since + span)
    else:
        until = (end or datetime.now(tz=UTC)) + timedelta(microseconds=1)
        last_open = _EPOCH + timedelta(seconds=(until - _EPOCH).total_seconds() // step * step)
        since = last_open + timedelta(seconds=step) - span
    # Bucketed by PostgreSQL: a day of 1-minute points per 1d candle, only buckets travel.
    # Lag-tolerant, so the router may send it to the replica like any PricePoint read.
    params: list[Any] = [timedelta(seconds=step), _EPOCH, coin_id, since, until, limit]
    with connections[router.db_for_read(PricePoint)].cursor() as cursor:
        cursor.execute(
            f"""
            SELECT date_bin(%s::interval, ts, %s) AS bucket,
                   (array_agg(price ORDER BY ts))[1], max(price), min(price),
                   (array_agg(price ORDER BY ts DESC))[1]
            FROM {PricePoint._meta.db_table}
            WHERE coin_id = %s AND ts >= %s AND ts < %s
            GROUP BY bucket
            ORDER BY bucket
            LIMIT %s
            """,  # noqa: S608 - the table name is ours, every value is a parameter
            params,
        )
        return [Candle(*row) for row in cursor.fetchall()]


def price_ranges(*, coin_ids: list[str], since: datetime) -> dict[str, tuple[Decimal, Decimal]]:
    """``{coin: (high, low)}`` of the stored price points since ``since``, in one query;
    coins without a point in the window are absent."""
    rows = (
        PricePoint.objects.filter(coin_id__in=coin_ids, ts__gte=since)
        .values("coin_id")
        .annotate(high=Max("price"), low=Min("price"))
        .order_by()
    )
    return {row["coin_id"]: (row["high"], row["low"]) for row in rows}


def price_average(*, coin_id: str, since: datetime) -> Decimal | None:
    """The mean of the stored price points of ``coin_id`` since ``since`` (None: none)."""
    return PricePoint.objects.filter(coin_id=coin_id, ts__gte=since).aggregate(avg=Avg("price"))[
        "avg"
    ]
