"""Writes of market data: coins in PostgreSQL, the latest prices in Redis."""

from datetime import UTC, datetime
from decimal import Decimal

import orjson
from django.db import transaction
from django.utils import timezone
from django_redis import get_redis_connection

from markets import realtime
from markets.models import Coin
from markets.selectors import (
    PRICES_AS_OF_KEY,
    PRICES_BODY_KEY,
    PRICES_QUOTES_KEY,
    prices_snapshot,
)

# Names for the default tracked coins, so a fresh install shows sensible rows
# before the first poll fills in whatever the source reports.
KNOWN_COINS: dict[str, tuple[str, str]] = {
    "bitcoin": ("btc", "Bitcoin"),
    "ethereum": ("eth", "Ethereum"),
    "tether": ("usdt", "Tether"),
    "binancecoin": ("bnb", "BNB"),
    "solana": ("sol", "Solana"),
    "ripple": ("xrp", "XRP"),
    "usd-coin": ("usdc", "USDC"),
    "cardano": ("ada", "Cardano"),
    "dogecoin": ("doge", "Dogecoin"),
    "tron": ("trx", "TRON"),
}


def decimal_str(value: Decimal | None) -> str | None:
    """A plain decimal string (never exponent notation, so ``1E-8`` reads ``0.00000001``)."""
    return None if value is None else format(value, "f")


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@transaction.atomic
def coins_seed(*, coin_ids: list[str]) -> list[Coin]:
    """Ensure a tracked row for each id; idempotent, never un-tracks anything."""
    coins = []
    for coin_id in coin_ids:
        symbol, name = KNOWN_COINS.get(coin_id, (coin_id[:32], coin_id.replace("-", " ").title()))
        coin, created = Coin.objects.get_or_create(
            id=coin_id, defaults={"symbol": symbol, "name": name, "tracked": True}
        )
        if not created and not coin.tracked:
            coin.tracked = True
            coin.save(update_fields=["tracked", "updated_at"])
        coins.append(coin)
    return coins


def coin_set_tracked(*, coin: Coin, tracked: bool) -> Coin:
    """Track or untrack a coin (operators, from the admin). An untracked coin leaves the
    price snapshot at once; the next poll picks up a newly tracked one."""
    if coin.tracked != tracked:
        coin.tracked = tracked
        coin.save(update_fields=["tracked", "updated_at"])
    if not tracked:
        prices_forget(coin_ids=[coin.id])
    return coin


def _snapshot_body(*, as_of: datetime, source: str, quotes: dict[bytes, bytes]) -> bytes:
    entries = {}
    for key in sorted(quotes):
        quote = orjson.loads(quotes[key])
        entries[key.decode()] = {"usd": quote["usd"], "change_24h_pct": quote["change_24h_pct"]}
    # Key order matters: "stale" must precede "prices" (see selectors.STALE_FALSE).
    return orjson.dumps(
        {"as_of": iso_utc(as_of), "source": source, "stale": False, "prices": entries}
    )


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
    mapping = {}
    for coin_id, price in prices.items():
        fields = extra.get(coin_id, {})
        last_updated = fields.get("last_updated")
        mapping[coin_id] = orjson.dumps(
            {
                "usd": decimal_str(price),
                "change_24h_pct": decimal_str(fields.get("change_24h_pct")),
                "market_cap": decimal_str(fields.get("market_cap")),
                "volume_24h": decimal_str(fields.get("volume_24h")),
                "last_updated": iso_utc(last_updated or as_of),
                "as_of": epoch,
                "source": source,
            }
        )
    redis = get_redis_connection("default")
    pipe = redis.pipeline(transaction=True)
    if mapping:
        pipe.hset(PRICES_QUOTES_KEY, mapping=mapping)
    pipe.hgetall(PRICES_QUOTES_KEY)
    quotes = pipe.execute()[-1]
    body = _snapshot_body(as_of=as_of, source=source, quotes=quotes)
    pipe = redis.pipeline(transaction=True)
    pipe.set(PRICES_BODY_KEY, body)
    pipe.set(PRICES_AS_OF_KEY, repr(epoch))
    pipe.execute()
    return as_of


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
    redis.set(PRICES_BODY_KEY, _snapshot_body(as_of=as_of, source=source, quotes=quotes))


def prices_on_tick(*, as_of: datetime, prices: dict[str, Decimal], changed: list[str]) -> None:
    """Fan a successful poll out to whoever reacts to prices. Each hook must be cheap
    (enqueue a Celery task or publish to the channel layer): this runs inside the poll."""
    from orders.services import limit_orders_on_prices

    snapshot = prices_snapshot()
    realtime.prices_tick_publish(as_of=snapshot["as_of"], prices=snapshot["prices"])
    limit_orders_on_prices(prices=prices)
