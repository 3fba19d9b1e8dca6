"""Arbitrage maths: the best buy and sell venue per tracked coin from the polled venue
tickers, after both venues' taker fees."""

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal

import orjson
from django.conf import settings
from django_redis import get_redis_connection

from markets.models import Coin
from markets.price_store import TICKERS_KEY_PREFIX

PCT = Decimal("0.0001")


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
