"""Market data in the shapes of Binance's spot REST API, read from the platform's own
stores: the tracked coins, the price store and price history (``markets.selectors``),
and the platform's fills (``orders``). Numbers are decimal strings, times epoch ms.

Symbols are ``<SYMBOL>USD`` (``BTCUSD``): base asset the coin's upper-case symbol, quote
asset ``USD``, the paper wallet's usd.

A symbol is ``TRADING`` while its latest price is one orders fill on (real and current),
else ``BREAK``: the price is stale, or made up by the ``simulated`` fallback, or there is
none. Market data keeps showing the latest stored price either way, as Binance shows the
last prices of a symbol in a break; a market order placed then is rejected, a limit
order waits for a real price, exactly as on the native API.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal

from django.db.models import QuerySet

from accounts.models import User
from bots import errors
from bots.params import SYMBOL_RE
from cryptovault.decimals import PRICE_MAX, decimal_str
from markets import selectors as market_selectors
from markets.models import Coin
from orders.models import USD, Balance, Order
from orders.services import (
    ORDER_NOTIONAL_MAX,
    ORDER_PRICE_PLACES,
    ORDER_QUANTITY_MAX,
    ORDER_QUANTITY_PLACES,
)

QUOTE_ASSET = "USD"
PRICE_TICK = Decimal(1).scaleb(-ORDER_PRICE_PLACES)
QUANTITY_STEP = Decimal(1).scaleb(-ORDER_QUANTITY_PLACES)
STATUS_TRADING = "TRADING"
STATUS_BREAK = "BREAK"

# The synthetic book (``depth``, ``bookTicker``, bid/ask of ``ticker/24hr``): the best bid
# and ask sit half the venues' spread (at least DEPTH_MIN_HALF_SPREAD) either side of the
# latest price; each further level is DEPTH_LEVEL_STEP worse and offers DEPTH_LEVEL_USD
# more usd than the one before. Nothing rests there: it shows where the price is.
DEPTH_MIN_HALF_SPREAD = Decimal("0.0005")
DEPTH_MAX_HALF_SPREAD = Decimal("0.01")
DEPTH_LEVEL_STEP = Decimal("0.0002")
DEPTH_LEVEL_USD = Decimal(1000)
DEPTH_LIMIT_DEFAULT = 100
DEPTH_LIMIT_MAX = 5000

TRADES_LIMIT_DEFAULT = 500
TRADES_LIMIT_MAX = 1000
AVG_PRICE_MINUTES = 5


@dataclass(frozen=True, slots=True)
class Market:
    """A tracked coin as a Binance market: ``BTCUSD`` (``symbol``) trades ``BTC``
    (``base_asset``, the coin ``bitcoin``) against ``QUOTE_ASSET``."""

    symbol: str
    base_asset: str
    coin_id: str


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def now_ms() -> int:
    return int(time.time() * 1000)


def _num(value: Decimal | None) -> str:
    return decimal_str(value) or "0"


def market_table() -> dict[str, Market]:
    """The tracked coins by Binance symbol. A coin whose symbol is no valid Binance
    symbol is left out; of two coins with one symbol, the first by id keeps it."""
    table: dict[str, Market] = {}
    for coin_id, symbol in Coin.objects.filter(tracked=True).values_list("id", "symbol"):
        base = symbol.upper()
        name = f"{base}{QUOTE_ASSET}"
        if SYMBOL_RE.match(name) and name not in table:
            table[name] = Market(symbol=name, base_asset=base, coin_id=coin_id)
    return table


def markets_select(*, symbol: str | None, symbols: list[str] | None) -> list[Market]:
    """The markets a request names (``symbol`` or ``symbols``), or all of them; an
    unknown symbol is -1121 ``Invalid symbol.``"""
    table = market_table()
    wanted = [symbol] if symbol is not None else symbols
    if wanted is None:
        return list(table.values())
    if any(name not in table for name in wanted):
        raise errors.bad_symbol()
    return [table[name] for name in wanted]


def market_get(*, symbol: str) -> Market:
    return markets_select(symbol=symbol, symbols=None)[0]


def symbol_status(quote: dict | None) -> str:
    if quote is not None and market_selectors.quote_is_tradable(quote):
        return STATUS_TRADING
    return STATUS_BREAK


# --- exchangeInfo ------------------------------------------------------------------------------
def _filters() -> list[dict]:
    """The native API's bounds on an order (``orders/apis.py``, ``orders/services.py``) as
    Binance filters: prices to 12 places up to PRICE_MAX, quantities to 8 places up to
    ORDER_QUANTITY_MAX, a notional (at the limit, or the latest price for market orders)
    up to ORDER_NOTIONAL_MAX."""
    lot = {
        "minQty": decimal_str(QUANTITY_STEP),
        "maxQty": decimal_str(ORDER_QUANTITY_MAX),
        "stepSize": decimal_str(QUANTITY_STEP),
    }
    return [
        {
            "filterType": "PRICE_FILTER",
            "minPrice": decimal_str(PRICE_TICK),
            "maxPrice": decimal_str(PRICE_MAX),
            "tickSize": decimal_str(PRICE_TICK),
        },
        {"filterType": "LOT_SIZE", **lot},
        {"filterType": "MARKET_LOT_SIZE", **lot},
        {
            "filterType": "NOTIONAL",
            "minNotional": "0",
            "applyMinToMarket": False,
            "maxNotional": decimal_str(ORDER_NOTIONAL_MAX),
            "applyMaxToMarket": True,
            "avgPriceMins": 0,
        },
    ]


def exchange_info(*, markets: list[Market], weight_limit: int) -> dict:
    quotes = market_selectors.price_quotes()
    filters = _filters()
    return {
        "timezone": "UTC",
        "serverTime": now_ms(),
        "rateLimits": [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": weight_limit,
            }
        ],
        "exchangeFilters": [],
        "symbols": [
            {
                "symbol": market.symbol,
                "status": symbol_status(quotes.get(market.coin_id)),
                "baseAsset": market.base_asset,
                "baseAssetPrecision": ORDER_QUANTITY_PLACES,
                "quoteAsset": QUOTE_ASSET,
                "quotePrecision": ORDER_QUANTITY_PLACES,
                "quoteAssetPrecision": ORDER_QUANTITY_PLACES,
                "baseCommissionPrecision": ORDER_QUANTITY_PLACES,
                "quoteCommissionPrecision": ORDER_QUANTITY_PLACES,
                "orderTypes": ["LIMIT", "MARKET"],
                "icebergAllowed": False,
                "ocoAllowed": False,
                "otoAllowed": False,
                "opoAllowed": False,
                "quoteOrderQtyMarketAllowed": True,
                "allowTrailingStop": False,
                "cancelReplaceAllowed": False,
                "amendAllowed": False,
                "pegInstructionsAllowed": False,
                "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False,
                "filters": filters,
                "permissions": ["SPOT"],
                "permissionSets": [["SPOT"]],
                "defaultSelfTradePreventionMode": "NONE",
                "allowedSelfTradePreventionModes": ["NONE"],
            }
            for market in markets
        ],
    }


# --- prices and the synthetic book -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Book:
    """The synthetic book of one market: ``(price, quantity)`` levels, best first."""

    last_update_id: int
    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]


def _half_spread(coin_id: str) -> Decimal:
    spread = market_selectors.venue_spread(coin_id=coin_id)
    half = spread / 2 if spread is not None else DEPTH_MIN_HALF_SPREAD
    return min(max(half, DEPTH_MIN_HALF_SPREAD), DEPTH_MAX_HALF_SPREAD)


def book_build(*, coin_id: str, quote: dict | None, levels: int) -> Book:
    """The synthetic book around the latest stored price (empty without one)."""
    if quote is None:
        return Book(last_update_id=0, bids=[], asks=[])
    mid = Decimal(quote["usd"])
    half = _half_spread(coin_id)
    # Levels priced to 7 significant digits of the price (0.01 at 65000), on PRICE_TICK.
    tick = max(Decimal(1).scaleb(mid.adjusted() - 6), PRICE_TICK)
    bids, asks = [], []
    bid, ask = mid * (1 - half), mid * (1 + half)
    for level in range(levels):
        usd = DEPTH_LEVEL_USD * (level + 1)
        bid_price = bid.quantize(tick, rounding=ROUND_DOWN)
        ask_price = ask.quantize(tick, rounding=ROUND_UP)
        if bid_price > 0:
            bids.append((bid_price, (usd / bid_price).quantize(QUANTITY_STEP, ROUND_DOWN)))
        asks.append((ask_price, (usd / ask_price).quantize(QUANTITY_STEP, ROUND_DOWN)))
        bid, ask = bid * (1 - DEPTH_LEVEL_STEP), ask * (1 + DEPTH_LEVEL_STEP)
    return Book(last_update_id=int(quote["as_of"] * 1000), bids=bids, asks=asks)


def depth(*, market: Market, limit: int) -> dict:
    """``GET depth``: Binance's order book, synthetic (``"synthetic": true``)."""
    quote = market_selectors.price_quotes().get(market.coin_id)
    book = book_build(coin_id=market.coin_id, quote=quote, levels=limit)
    return {
        "lastUpdateId": book.last_update_id,
        "bids": [[decimal_str(p), decimal_str(q)] for p, q in book.bids],
        "asks": [[decimal_str(p), decimal_str(q)] for p, q in book.asks],
        "synthetic": True,
    }


def _book_top(market: Market, quote: dict | None) -> dict:
    book = book_build(coin_id=market.coin_id, quote=quote, levels=1)
    bid = book.bids[0] if book.bids else (None, None)
    ask = book.asks[0] if book.asks else (None, None)
    return {
        "bidPrice": _num(bid[0]),
        "bidQty": _num(bid[1]),
        "askPrice": _num(ask[0]),
        "askQty": _num(ask[1]),
    }


def ticker_prices(*, markets: list[Market]) -> list[dict]:
    quotes = market_selectors.price_quotes()
    return [
        {"symbol": m.symbol, "price": quotes[m.coin_id]["usd"] if m.coin_id in quotes else "0"}
        for m in markets
    ]


def book_tickers(*, markets: list[Market]) -> list[dict]:
    quotes = market_selectors.price_quotes()
    return [{"symbol": m.symbol, **_book_top(m, quotes.get(m.coin_id))} for m in markets]


TICKER_MINI_FIELDS = (
    "symbol",
    "openPrice",
    "highPrice",
    "lowPrice",
    "lastPrice",
    "volume",
    "quoteVolume",
    "openTime",
    "closeTime",
    "firstId",
    "lastId",
    "count",
)


def tickers_24hr(*, markets: list[Market], mini: bool = False) -> list[dict]:
    """``GET ticker/24hr``: the last price and 24 h change of the price source, the high
    and low of the stored history over 24 h (and the last price), the source's 24 h usd
    volume as ``quoteVolume``, the synthetic book's best bid and ask. Trade ids and
    counts are Binance's "no trades" values (-1, -1, 0)."""
    quotes = market_selectors.price_quotes()
    now = datetime.now(tz=UTC)
    ranges = market_selectors.price_ranges(
        coin_ids=[m.coin_id for m in markets], since=now - timedelta(days=1)
    )
    rows = []
    for market in markets:
        quote = quotes.get(market.coin_id)
        last = Decimal(quote["usd"]) if quote else None
        change_pct = Decimal(quote["change_24h_pct"]) if quote and quote["change_24h_pct"] else None
        open_ = last
        if last is not None and change_pct is not None and change_pct > -100:
            open_ = (last / (1 + change_pct / 100)).quantize(PRICE_TICK)
        high, low = ranges.get(market.coin_id, (last, last))
        if last is not None:
            high = last if high is None else max(high, last)
            low = last if low is None else min(low, last)
        quote_volume = Decimal(quote["volume_24h"]) if quote and quote["volume_24h"] else None
        volume = quote_volume / last if quote_volume and last else None
        close_time = int(quote["as_of"] * 1000) if quote else ms(now)
        row = {
            "symbol": market.symbol,
            "priceChange": _num(last - open_ if last is not None and open_ is not None else None),
            "priceChangePercent": _num(change_pct),
            "weightedAvgPrice": _num(last),
            "prevClosePrice": _num(open_),
            "lastPrice": _num(last),
            "lastQty": "0",
            **_book_top(market, quote),
            "openPrice": _num(open_),
            "highPrice": _num(high),
            "lowPrice": _num(low),
            "volume": _num(volume),
            "quoteVolume": _num(quote_volume),
            "openTime": close_time - 86_400_000,
            "closeTime": close_time,
            "firstId": -1,
            "lastId": -1,
            "count": 0,
        }
        rows.append({k: row[k] for k in TICKER_MINI_FIELDS} if mini else row)
    return rows


def avg_price(*, market: Market) -> dict:
    """``GET avgPrice``: the mean of the stored price points of the last 5 minutes (the
    latest price when there are none)."""
    since = datetime.now(tz=UTC) - timedelta(minutes=AVG_PRICE_MINUTES)
    average = market_selectors.price_average(coin_id=market.coin_id, since=since)
    quote = market_selectors.price_quotes().get(market.coin_id)
    if average is None and quote is not None:
        average = Decimal(quote["usd"])
    return {
        "mins": AVG_PRICE_MINUTES,
        "price": _num(average.quantize(PRICE_TICK) if average is not None else None),
        "closeTime": int(quote["as_of"] * 1000) if quote else now_ms(),
    }


# --- klines -------------------------------------------------------------------------------------
def klines(
    *,
    market: Market,
    interval: str,
    limit: int,
    start: datetime | None,
    end: datetime | None,
) -> list[list]:
    """``GET klines`` from the candles of the native ``coins/<id>/ohlc``
    (``markets.selectors.candle_list``): gaps stay gaps. The price source has no
    per-candle volume and the platform's fills are not the market's, so the volumes
    and the trade count are 0."""
    step_ms = market_selectors.CANDLE_INTERVALS[interval] * 1000
    candles = market_selectors.candle_list(
        coin_id=market.coin_id, interval=interval, limit=limit, start=start, end=end
    )
    rows = []
    for candle in candles:
        open_ms = ms(candle.open_time)
        rows.append(
            [
                open_ms,
                *(decimal_str(p) for p in (candle.open, candle.high, candle.low, candle.close)),
                "0",
                open_ms + step_ms - 1,
                "0",
                0,
                "0",
                "0",
                "0",
            ]
        )
    return rows


# --- trades -------------------------------------------------------------------------------------
def fills_recent(
    *, market: Market, limit: int, start: datetime | None = None, end: datetime | None = None
) -> list[Order]:
    """The platform's latest fills on the market's coin (whoever placed them), oldest
    first. A filled order is final, so its ``updated_at`` is its fill time."""
    fills = Order.objects.filter(coin_id=market.coin_id, status=Order.Status.FILLED)
    if start is not None:
        fills = fills.filter(updated_at__gte=start)
    if end is not None:
        fills = fills.filter(updated_at__lte=end)
    latest = fills.only("id", "side", "type", "quantity", "filled_price", "updated_at").order_by(
        "-updated_at", "-id"
    )[:limit]
    return list(reversed(latest))


def _buyer_is_maker(order: Order) -> bool:
    # A limit order is the maker (it waited for the price), a market order the taker;
    # the other side of each fill is the outside market.
    is_buy = order.side == Order.Side.BUY
    return is_buy if order.type == Order.Type.LIMIT else not is_buy


def trades(*, fills: list[Order]) -> list[dict]:
    """``GET trades``: one trade per fill, anonymised (no user, no client order id); the
    trade id is the order's id."""
    return [
        {
            "id": order.pk,
            "price": decimal_str(order.filled_price),
            "qty": decimal_str(order.quantity),
            "quoteQty": decimal_str((order.quantity * price).quantize(QUANTITY_STEP)),
            "time": ms(order.updated_at),
            "isBuyerMaker": _buyer_is_maker(order),
            "isBestMatch": True,
        }
        for order in fills
        if (price := order.filled_price) is not None
    ]


def agg_trades(*, fills: list[Order]) -> list[dict]:
    """``GET aggTrades`` (what ccxt's ``fetch_trades`` reads): each fill is its own
    aggregate, with first and last trade id the order's id."""
    return [
        {
            "a": order.pk,
            "p": decimal_str(order.filled_price),
            "q": decimal_str(order.quantity),
            "f": order.pk,
            "l": order.pk,
            "T": ms(order.updated_at),
            "m": _buyer_is_maker(order),
            "M": True,
        }
        for order in fills
    ]


# --- the signed endpoints: a user's orders, trades and balances ---------------------------------
USER_LIST_LIMIT_DEFAULT = 500
USER_LIST_LIMIT_MAX = 1000


def market_by_coin() -> dict[str, Market]:
    return {market.coin_id: market for market in market_table().values()}


def order_find(
    *, user: User, market: Market, order_id: int | None, client_order_id: str | None
) -> Order | None:
    """The user's order on the market by ``orderId`` (first) or ``origClientOrderId``."""
    orders = Order.objects.filter(user=user, coin_id=market.coin_id)
    if order_id is not None:
        return orders.filter(pk=order_id).first()
    return orders.filter(client_order_id=client_order_id).first()


def orders_open(*, user: User, market: Market | None) -> list[Order]:
    """The user's pending and resting orders (on one market, or all), oldest first."""
    orders = Order.objects.filter(user=user, status__in=Order.ACTIVE_STATUSES)
    if market is not None:
        orders = orders.filter(coin_id=market.coin_id)
    return list(orders.order_by("id"))


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    """The paging ``allOrders`` and ``myTrades`` share: from the id ``from_id`` on, else the
    latest ``limit`` rows, within ``start``..``end`` when given."""

    from_id: int | None
    start: datetime | None
    end: datetime | None
    limit: int


def _history_page(
    rows: QuerySet[Order], *, window: HistoryWindow, time_field: str, latest: tuple[str, ...]
) -> list[Order]:
    """``rows`` paged by ``window`` (its time range on ``time_field``, ``latest`` the order
    of "the latest"), oldest first."""
    if window.start is not None:
        rows = rows.filter(**{f"{time_field}__gte": window.start})
    if window.end is not None:
        rows = rows.filter(**{f"{time_field}__lte": window.end})
    if window.from_id is not None:
        return list(rows.filter(pk__gte=window.from_id).order_by("id")[: window.limit])
    return list(reversed(rows.order_by(*latest)[: window.limit]))


def orders_all(*, user: User, market: Market, window: HistoryWindow) -> list[Order]:
    """``allOrders``: the user's orders on the market, by creation time."""
    orders = Order.objects.filter(user=user, coin_id=market.coin_id)
    return _history_page(orders, window=window, time_field="created_at", latest=("-id",))


def trades_mine(
    *, user: User, market: Market, order_id: int | None, window: HistoryWindow
) -> list[Order]:
    """``myTrades``: the user's fills on the market (one trade per filled order, the
    trade id the order's), by fill time."""
    fills = Order.objects.filter(user=user, coin_id=market.coin_id, status=Order.Status.FILLED)
    if order_id is not None:
        fills = fills.filter(pk=order_id)
    return _history_page(
        fills, window=window, time_field="updated_at", latest=("-updated_at", "-id")
    )


def balances_of(*, user: User) -> list[Balance]:
    """The user's balances, usd first (a usd row even before any funding)."""
    balances = list(Balance.objects.filter(user=user).order_by("asset"))
    if not any(b.asset == USD for b in balances):
        balances.append(Balance(user=user, asset=USD))
    balances.sort(key=lambda b: b.asset != USD)
    return balances


def coin_symbols() -> dict[str, str]:
    return dict(Coin.objects.values_list("id", "symbol"))
