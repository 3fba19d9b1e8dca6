"""Writes of market data: coins in PostgreSQL, the latest prices in Redis."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_redis import get_redis_connection

from cryptovault.decimals import decimal_str
from cryptovault.exceptions import STATUS_READ_ERRORS
from cryptovault.metrics import queue_depths
from markets import realtime
from markets.catalogue import coin_names
from markets.models import Coin, LatestPrice, PricePoint, StatusSample
from markets.price_store import (
    PRICES_AS_OF_KEY,
    PRICES_BODY_KEY,
    PRICES_QUOTES_KEY,
    TICKERS_KEY_PREFIX,
    prices_are_stale,
    quote_bytes,
    reads_invalidate,
    snapshot_body,
)
from markets.selectors import price_quotes, prices_age_seconds, prices_snapshot
from markets.sources import (
    CoinGeckoClient,
    MarketQuote,
    SourceError,
    simulated_quotes,
    source_client,
)

logger = logging.getLogger(__name__)

TICKERS_CURSOR_KEY = "cv:markets:tickers:cursor"
# Samples are charted over the last hour, and their stale minutes shade the 24 h prices.
STATUS_SAMPLE_RETENTION = timedelta(hours=24)


@transaction.atomic
def coins_seed(*, coin_ids: list[str]) -> list[Coin]:
    """Ensure a tracked row for each id; idempotent, never un-tracks anything."""
    coins = []
    for coin_id in coin_ids:
        symbol, name = coin_names(coin_id)
        coin, created = Coin.objects.get_or_create(
            id=coin_id, defaults={"symbol": symbol, "name": name, "tracked": True}
        )
        if not created and not coin.tracked:
            coin.tracked = True
            coin.save(update_fields=["tracked", "updated_at"])
        coins.append(coin)
    transaction.on_commit(reads_invalidate)
    return coins


def coin_set_tracked(*, coin: Coin, tracked: bool) -> Coin:
    """Track or untrack a coin (operators, from the admin). An untracked coin leaves the
    price snapshot at once; the next poll picks up a newly tracked one."""
    if coin.tracked != tracked:
        coin.tracked = tracked
        coin.save(update_fields=["tracked", "updated_at"])
    if not tracked:
        prices_forget(coin_ids=[coin.id])
    reads_invalidate()
    return coin


def prices_record(
    *,
    prices: dict[str, Decimal],
    source: str = "coingecko",
    as_of: datetime | None = None,
    extra: dict[str, dict] | None = None,
) -> datetime:
    """Write the latest usd prices to Redis and re-encode the ``GET /prices`` body.

    Quotes are merged per coin (a coin missing from this write keeps its last good price
    and its own ``as_of``). ``extra`` optionally carries per-coin market fields:
    ``{coin: {"change_24h_pct", "market_cap", "volume_24h": Decimal, "last_updated": datetime}}``.
    No tick fan-out here; the poller calls ``prices_on_tick`` afterwards.
    """
    as_of = as_of or timezone.now()
    epoch = as_of.timestamp()
    extra = extra or {}
    mapping = {
        coin_id: quote_bytes(price=price, fields=extra.get(coin_id, {}), as_of=as_of, source=source)
        for coin_id, price in prices.items()
    }
    redis = get_redis_connection("default")
    pipe = redis.pipeline(transaction=True)
    if mapping:
        pipe.hset(PRICES_QUOTES_KEY, mapping=mapping)
    pipe.hgetall(PRICES_QUOTES_KEY)
    quotes = pipe.execute()[-1]
    body = snapshot_body(as_of=as_of, source=source, quotes=quotes)
    pipe = redis.pipeline(transaction=True)
    pipe.set(PRICES_BODY_KEY, body)
    pipe.set(PRICES_AS_OF_KEY, repr(epoch))
    pipe.execute()
    reads_invalidate()
    return as_of


# The figures of a quote a ``LatestPrice`` row keeps as they are (same names on both).
LATEST_PRICE_QUOTE_FIELDS = ("price", "change_24h_pct", "market_cap", "volume_24h")


def latest_prices_record(*, as_of: datetime, source: str, quotes: list[MarketQuote]) -> None:
    """Upsert each coin's latest real quote (one statement per poll), the record
    ``prices_restore`` refills Redis from."""
    LatestPrice.objects.bulk_create(
        [
            LatestPrice(
                coin_id=quote.id,
                **{field: getattr(quote, field) for field in LATEST_PRICE_QUOTE_FIELDS},
                last_updated=quote.last_updated or as_of,
                as_of=as_of,
                source=source,
            )
            for quote in quotes
        ],
        update_conflicts=True,
        unique_fields=["coin"],
        update_fields=[*LATEST_PRICE_QUOTE_FIELDS, "last_updated", "as_of", "source"],
    )


def prices_forget(*, coin_ids: list[str]) -> None:
    """Drop coins from the price store (untracked coins) and re-encode the body."""
    redis = get_redis_connection("default")
    pipe = redis.pipeline(transaction=True)
    pipe.hdel(PRICES_QUOTES_KEY, *coin_ids)
    pipe.hgetall(PRICES_QUOTES_KEY)
    pipe.get(PRICES_AS_OF_KEY)
    pipe.get(PRICES_BODY_KEY)
    _, quotes, as_of_raw, body = pipe.execute()
    if body is None or as_of_raw is None:
        return
    source = orjson.loads(body)["source"]
    as_of = datetime.fromtimestamp(float(as_of_raw), tz=UTC)
    redis.set(PRICES_BODY_KEY, snapshot_body(as_of=as_of, source=source, quotes=quotes))
    reads_invalidate()


def _tick_hook(hook: Callable[..., object], **kwargs: Any) -> None:
    # One failing subscriber must not keep the tick from the others, nor fail the poll
    # (the prices are already recorded).
    try:
        hook(**kwargs)
    except Exception:
        logger.exception("price tick hook failed", extra={"hook": hook.__qualname__})


def prices_on_tick(*, as_of: datetime, prices: dict[str, Decimal], changed: list[str]) -> None:
    """Fan a successful poll out to whoever reacts to prices. Each hook must be cheap
    (enqueue a Celery task or publish to the channel layer): this runs inside the poll.
    A new subscriber is one more ``_tick_hook(...)`` line."""
    # A documented cycle: orders and notifications import markets (prices, coins) at
    # module level; the tick calls back up into them, so they are imported here.
    from notifications.services import price_alerts_evaluate
    from orders.services import limit_orders_on_prices

    snapshot = prices_snapshot()
    _tick_hook(realtime.prices_tick_publish, as_of=snapshot["as_of"], prices=snapshot["prices"])
    # These two read the prices from the store themselves (only real, current ones).
    _tick_hook(limit_orders_on_prices)
    _tick_hook(price_alerts_evaluate)


@dataclass(frozen=True)
class PollResult:
    as_of: datetime
    source: str
    prices: dict[str, Decimal]
    changed: list[str]


def prices_poll(*, client: CoinGeckoClient | None = None) -> PollResult | None:
    """One price poll: fetch ``coins/markets`` for every tracked coin in one call, record
    the prices in Redis, append history and fan the tick out.

    On a source failure the last good prices stay as they are (they turn stale on their
    own). With ``MARKET_DATA_FALLBACK=simulated`` and no fresh prices left, the simulator's
    model serves instead, continuing from the last good prices, marked ``simulated``.
    Returns ``None`` when nothing was recorded.
    """
    coins = {c.id: c for c in Coin.objects.filter(tracked=True)}
    if not coins:
        return None
    source = "coingecko"
    try:
        if client is None:
            with source_client() as own_client:
                quotes = own_client.coins_markets(ids=sorted(coins))
        else:
            quotes = client.coins_markets(ids=sorted(coins))
    except SourceError as exc:
        logger.warning("price poll failed", extra={"error": str(exc)})
        fallback = _fallback_quotes(coins)
        if fallback is None:
            return None
        quotes, source = fallback, "simulated"
    if not quotes:
        return None
    previous = {coin_id: quote["usd"] for coin_id, quote in price_quotes().items()}
    prices = {quote.id: quote.price for quote in quotes}
    as_of = prices_record(
        prices=prices,
        source=source,
        extra={
            quote.id: {
                "change_24h_pct": quote.change_24h_pct,
                "market_cap": quote.market_cap,
                "volume_24h": quote.volume_24h,
                "last_updated": quote.last_updated,
            }
            for quote in quotes
        },
    )
    if source == "coingecko":
        # Simulated prices are not history: charts show only what a source reported.
        history_append(as_of=as_of, prices=prices)
        latest_prices_record(as_of=as_of, source=source, quotes=quotes)
        _coins_refresh_names(coins=coins, quotes=quotes)
    changed = [
        coin_id for coin_id, price in prices.items() if previous.get(coin_id) != decimal_str(price)
    ]
    prices_on_tick(as_of=as_of, prices=prices, changed=changed)
    return PollResult(as_of=as_of, source=source, prices=prices, changed=changed)


def _fallback_quotes(coins: dict[str, Coin]) -> list[MarketQuote] | None:
    if settings.MARKET_DATA_FALLBACK != "simulated":
        return None
    as_of_raw = get_redis_connection("default").get(PRICES_AS_OF_KEY)
    last_as_of = float(as_of_raw) if as_of_raw else None
    last = price_quotes()
    last_source = next(iter(last.values()), {}).get("source")
    if last_source == "coingecko" and not prices_are_stale(as_of_epoch=last_as_of):
        return None  # the last good prices still serve; no need to make any up
    return simulated_quotes(
        coins={c.id: (c.symbol, c.name) for c in coins.values()},
        last=last,
        last_as_of=last_as_of,
    )


def _coins_refresh_names(*, coins: dict[str, Coin], quotes: list[MarketQuote]) -> None:
    """Take symbol and name from the source (seeded rows may carry placeholder names)."""
    for quote in quotes:
        coin = coins.get(quote.id)
        if coin is not None and (coin.symbol, coin.name) != (quote.symbol, quote.name):
            coin.symbol, coin.name = quote.symbol, quote.name
            coin.save(update_fields=["symbol", "name", "updated_at"])
            reads_invalidate()


def history_append(*, as_of: datetime, prices: dict[str, Decimal]) -> int:
    """One row per coin per history interval; a second write in the same interval is a
    no-op (idempotent retries, and a 10 s poll does not grow the table 6x)."""
    interval = settings.PRICE_HISTORY_INTERVAL_SECONDS
    bucket = datetime.fromtimestamp(as_of.timestamp() // interval * interval, tz=UTC)
    rows = [
        PricePoint(coin_id=coin_id, ts=bucket, price=price) for coin_id, price in prices.items()
    ]
    added = len(PricePoint.objects.bulk_create(rows, ignore_conflicts=True))
    if added:
        reads_invalidate()
    return added


def history_prune() -> int:
    cutoff = timezone.now() - timedelta(days=settings.PRICE_HISTORY_RETENTION_DAYS)
    deleted, _ = PricePoint.objects.filter(ts__lt=cutoff).delete()
    if deleted:
        reads_invalidate()
    return deleted


def status_sample_record() -> StatusSample:
    """Record this minute's price age and source and the Celery queue depths (one row per
    minute: a retry or a second beat overwrites it), and drop samples past
    ``STATUS_SAMPLE_RETENTION``. With Redis unreachable the minute is still recorded, as
    stale with no figures: that outage is what the chart has to show."""
    now = timezone.now()
    try:
        snapshot = prices_snapshot()
        age, source, stale = prices_age_seconds(), snapshot["source"], snapshot["stale"]
    except (redis.RedisError, OSError):
        age, source, stale = None, None, True
    try:
        queues = queue_depths()
        waiting, unacked = sum(queues["waiting"].values()), queues["unacked"]
    except STATUS_READ_ERRORS:
        waiting = unacked = None
    sample, _ = StatusSample.objects.update_or_create(
        ts=now.replace(second=0, microsecond=0),
        defaults={
            "price_age_seconds": age,
            "price_source": source,
            "price_stale": stale,
            "queue_waiting": waiting,
            "queue_unacked": unacked,
        },
    )
    StatusSample.objects.filter(ts__lt=now - STATUS_SAMPLE_RETENTION).delete()
    return sample


def tickers_poll(*, client: CoinGeckoClient | None = None) -> str | None:
    """Fetch venue tickers for the next tracked coin (round-robin, one call per run, so the
    call rate stays fixed however many coins are tracked) and store them for arbitrage."""
    coin_ids = sorted(Coin.objects.filter(tracked=True).values_list("id", flat=True))
    if not coin_ids:
        return None
    redis = get_redis_connection("default")
    coin_id = coin_ids[(redis.incr(TICKERS_CURSOR_KEY) - 1) % len(coin_ids)]
    try:
        if client is None:
            with source_client() as own_client:
                venues = own_client.tickers(coin_id=coin_id)
        else:
            venues = client.tickers(coin_id=coin_id)
    except SourceError as exc:
        logger.warning("tickers poll failed", extra={"coin": coin_id, "error": str(exc)})
        return None
    tickers_record(coin_id=coin_id, venues=[(v.exchange, v.name, v.price) for v in venues])
    return coin_id


def tickers_record(
    *, coin_id: str, venues: list[tuple[str, str, Decimal]], as_of: datetime | None = None
) -> None:
    """Store one coin's venue quotes ``[(exchange id, name, usd price)]``; they expire
    after ``ARBITRAGE_MAX_AGE_SECONDS`` so arbitrage never runs on old quotes."""
    as_of = as_of or timezone.now()
    body = orjson.dumps(
        {
            "as_of": as_of.timestamp(),
            "venues": [
                {"exchange": exchange, "name": name, "price": decimal_str(price)}
                for exchange, name, price in venues
            ],
        }
    )
    get_redis_connection("default").set(
        TICKERS_KEY_PREFIX + coin_id, body, ex=settings.ARBITRAGE_MAX_AGE_SECONDS
    )
    reads_invalidate()
