"""Binance's spot REST API (``/binance/api/v3/``): one view per endpoint, as Binance's
docs define it (rest-api.md of binance/binance-spot-api-docs), public and SIGNED.

Plain Django views rather than DRF: the answers are Binance's, not ours. Every error,
whatever raised it, is Binance's ``{"code", "msg"}`` (``bots.errors``), never DRF's
``{"detail"}``; every answer carries ``X-MBX-USED-WEIGHT-1M`` (``bots.weights``). A
dependency outage (PostgreSQL, Redis) is left to ``DependencyOutageMiddleware``: the
platform's JSON 503 with ``Retry-After``, which Binance's clients treat by its status
(ccxt: ``ExchangeNotAvailable``), as Binance's docs say of every 5xx.

Signed endpoints are ``SignedApi`` subclasses: ``bots.signing`` authenticates the key,
``bots.services`` places and cancels through the native order services, ``bots.mapping``
renders orders and balances.
"""

import logging
import re
from dataclasses import dataclass
from decimal import Decimal

import orjson
from django.http import HttpRequest, HttpResponse, QueryDict
from django.http.response import HttpResponseBase
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from accounts.models import User
from bots import errors, mapping, params, selectors, services, signing, weights
from cryptovault.decimals import PRICE_MAX
from cryptovault.exceptions import DEPENDENCY_ERRORS, ApplicationError
from cryptovault.net import client_ip
from markets.selectors import CANDLE_INTERVALS, CANDLES_LIMIT_DEFAULT, CANDLES_LIMIT_MAX
from orders.limits import order_create_rate_limit
from orders.models import Order
from orders.services import (
    ORDER_NOTIONAL_MAX,
    ORDER_PRICE_PLACES,
    ORDER_QUANTITY_MAX,
    ORDER_QUANTITY_PLACES,
    order_cancel,
)

logger = logging.getLogger(__name__)


@method_decorator(csrf_exempt, name="dispatch")  # no cookie ever authenticates here
class BinanceApi(View):
    """Spends the request's weight, runs ``handle`` and renders what it returns (or the
    error it raises) as Binance does."""

    http_method_names = ["get", "head"]
    weight = 1

    def request_weight(self, query: QueryDict) -> int:
        """The endpoint's weight for this request (Binance's table); must not raise."""
        return self.weight

    def handle(self, request: HttpRequest, query: QueryDict):
        raise NotImplementedError

    def get(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        return self._answer(self.handle(request, request.GET), status=200)

    def dispatch(self, request: HttpRequest, *args, **kwargs) -> HttpResponseBase:
        used = None
        try:
            used = weights.weight_spend(
                ip=client_ip(request), weight=self.request_weight(request.GET)
            )
            if any(len(values) > 1 for _name, values in request.GET.lists()):
                raise errors.BinanceError(
                    errors.TOO_MANY_PARAMETERS, "Duplicate values for a parameter detected."
                )
            response = super().dispatch(request, *args, **kwargs)
        except errors.BinanceError as exc:
            response = self._error(exc)
        except ApplicationError as exc:
            response = self._error(errors.from_application_error(exc))
        except DEPENDENCY_ERRORS:
            raise  # the platform's JSON 503 (DependencyOutageMiddleware)
        except Exception:
            logger.exception("binance api error", extra={"path": request.path})
            response = self._error(
                errors.BinanceError(
                    errors.UNKNOWN,
                    "An unknown error occurred while processing the request.",
                    status=500,
                )
            )
        if used is not None:
            response.setdefault(weights.WEIGHT_HEADER, str(used))
        return response

    def http_method_not_allowed(self, request, *args, **kwargs) -> HttpResponse:
        response = self._error(errors.unsupported())
        response.status_code = 405
        allowed = (method for method in self.http_method_names if hasattr(self, method))
        response["Allow"] = ", ".join(method.upper() for method in allowed)
        return response

    @staticmethod
    def _answer(data, *, status: int) -> HttpResponse:
        return HttpResponse(orjson.dumps(data), status=status, content_type="application/json")

    def _error(self, exc: errors.BinanceError) -> HttpResponse:
        response = self._answer(exc.body(), status=exc.status)
        for name, value in exc.headers.items():
            response[name] = value
        return response


def _one_or_list(items: list[dict], *, single: bool):
    """Binance answers an object for ``symbol=``, an array otherwise."""
    return items[0] if single else items


def _many_symbols_weight(query: QueryDict, *, one: int, many: int) -> int:
    return one if query.get("symbol") else many


class PingApi(BinanceApi):
    def handle(self, request, query):
        return {}


class TimeApi(BinanceApi):
    def handle(self, request, query):
        return {"serverTime": selectors.now_ms()}


class ExchangeInfoApi(BinanceApi):
    weight = 20

    def handle(self, request, query):
        symbol, symbols = params.symbol_or_symbols(query)
        markets = selectors.markets_select(symbol=symbol, symbols=symbols)
        return selectors.exchange_info(markets=markets, weight_limit=weights.WEIGHT_PER_MINUTE)


class _TickerApi(BinanceApi):
    """A ticker of one symbol (an object), several or all (a list); ``rows`` renders the
    selected markets."""

    def request_weight(self, query):
        return _many_symbols_weight(query, one=2, many=4)

    def handle(self, request, query):
        symbol, symbols = params.symbol_or_symbols(query)
        markets = selectors.markets_select(symbol=symbol, symbols=symbols)
        return _one_or_list(self.rows(markets), single=symbol is not None)

    def rows(self, markets: list[selectors.Market]) -> list[dict]:
        raise NotImplementedError


class TickerPriceApi(_TickerApi):
    def rows(self, markets):
        return selectors.ticker_prices(markets=markets)


class BookTickerApi(_TickerApi):
    def rows(self, markets):
        return selectors.book_tickers(markets=markets)


class Ticker24hrApi(BinanceApi):
    def request_weight(self, query):
        if query.get("symbol"):
            return 2
        try:
            count = len(orjson.loads(query["symbols"]))
        except (KeyError, TypeError, orjson.JSONDecodeError):
            return 80
        return 2 if count <= 20 else 40 if count <= 100 else 80

    def handle(self, request, query):
        symbol, symbols = params.symbol_or_symbols(query)
        kind = query.get("type") or "FULL"
        if kind not in ("FULL", "MINI"):
            raise errors.BinanceError(errors.INVALID_TICKER_TYPE, "Invalid ticker type.")
        markets = selectors.markets_select(symbol=symbol, symbols=symbols)
        rows = selectors.tickers_24hr(markets=markets, mini=kind == "MINI")
        return _one_or_list(rows, single=symbol is not None)


class AvgPriceApi(BinanceApi):
    weight = 2

    def handle(self, request, query):
        market = selectors.market_get(symbol=params.symbol_param(query, required=True))
        return selectors.avg_price(market=market)


class DepthApi(BinanceApi):
    """The order book, **synthetic**: levels around the latest price, half the venues'
    spread either side of it (``bots.selectors.book_build``); nothing rests there. The
    answer says so with ``"synthetic": true``."""

    def request_weight(self, query):
        raw = query.get("limit") or ""
        limit = int(raw) if raw.isdigit() and len(raw) < 10 else selectors.DEPTH_LIMIT_DEFAULT
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250

    def handle(self, request, query):
        market = selectors.market_get(symbol=params.symbol_param(query, required=True))
        # Binance answers at most 5000 levels for any larger limit.
        limit = params.int_param(
            query,
            "limit",
            default=selectors.DEPTH_LIMIT_DEFAULT,
            minimum=1,
            maximum=params.INT_MAX,
        )
        return selectors.depth(market=market, limit=min(limit, selectors.DEPTH_LIMIT_MAX))


class KlinesApi(BinanceApi):
    weight = 2

    def handle(self, request, query):
        symbol = params.symbol_param(query, required=True)
        interval = query.get("interval") or None
        if interval is None:
            raise errors.mandatory_param("interval")
        if interval not in CANDLE_INTERVALS:
            raise errors.BinanceError(errors.BAD_INTERVAL, "Invalid interval.")
        start = params.time_param(query, "startTime")
        end = params.time_param(query, "endTime")
        if start is not None and end is not None and start > end:
            raise errors.invalid_parameter("startTime")
        limit = params.limit_param(query, default=CANDLES_LIMIT_DEFAULT, maximum=CANDLES_LIMIT_MAX)
        market = selectors.market_get(symbol=symbol)
        return selectors.klines(market=market, interval=interval, limit=limit, start=start, end=end)


def _fills_recent(query: QueryDict, *, ranged: bool) -> list[Order]:
    """The symbol's latest fills, up to ``limit``; within ``startTime``..``endTime`` when
    the endpoint takes a range (``ranged``)."""
    market = selectors.market_get(symbol=params.symbol_param(query, required=True))
    limit = params.limit_param(
        query, default=selectors.TRADES_LIMIT_DEFAULT, maximum=selectors.TRADES_LIMIT_MAX
    )
    if not ranged:
        return selectors.fills_recent(market=market, limit=limit)
    start, end = params.time_param(query, "startTime"), params.time_param(query, "endTime")
    return selectors.fills_recent(market=market, limit=limit, start=start, end=end)


class TradesApi(BinanceApi):
    """The platform's own fills on the symbol, anonymised (empty when nobody traded)."""

    weight = 25

    def handle(self, request, query):
        return selectors.trades(fills=_fills_recent(query, ranged=False))


class AggTradesApi(BinanceApi):
    """``trades`` in the aggregate shape, for ccxt's ``fetch_trades``."""

    weight = 4

    def handle(self, request, query):
        return selectors.agg_trades(fills=_fills_recent(query, ranged=True))


class MarginPairsApi(BinanceApi):
    """``/sapi/v1/margin/allPairs`` and ``…/isolated/allPairs``: no margin trading here,
    so no pairs. ccxt reads both in ``load_markets`` once it holds a key (unless its
    ``fetchMargins`` option is off), at ``urls.api.sapi``."""

    def handle(self, request, query):
        return []


class UnknownEndpointApi(BinanceApi):
    """Any other path under ``/binance/``: Binance's 404, in its error shape."""

    http_method_names = ["get", "head", "post", "put", "delete", "patch", "options"]

    def handle(self, request, query):
        raise errors.unsupported()

    def post(self, request, *args, **kwargs):
        return self.get(request)

    put = delete = patch = options = post


# --- signed endpoints ---------------------------------------------------------------------------
class SignedApi(BinanceApi):
    """A SIGNED endpoint (``bots.signing``): the key's user is the account. ``scopes``
    names the key scope each method needs: ``read`` for Binance's USER_DATA endpoints,
    ``trade`` for its TRADE ones. Parameters come from the query string and the form
    body alike, as Binance reads them."""

    scopes: dict[str, str] = {"GET": "read"}

    def handle_signed(self, request: HttpRequest, query: QueryDict, user: User):
        raise NotImplementedError

    def _signed(self, request: HttpRequest) -> HttpResponse:
        query = signing.signed_params(request)
        method = "GET" if request.method == "HEAD" else request.method or "GET"
        api_key = signing.signed_request_authenticate(
            request=request, params=query, scope=self.scopes[method]
        )
        # The per-user limits (cryptovault.ratelimit) key on request.user.
        request.user = api_key.user
        return self._answer(self.handle_signed(request, query, api_key.user), status=200)

    def get(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        return self._signed(request)

    post = delete = get


NEW_ORDER_RESP_TYPES = ("ACK", "RESULT", "FULL")
CLIENT_ORDER_ID_RE = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")
CLIENT_ORDER_ID_LEGAL = "^[a-zA-Z0-9-_]{1,36}$"


@dataclass(frozen=True, slots=True)
class OrderRequest:
    market: selectors.Market
    side: str
    type: str
    quantity: Decimal | None
    quote_order_qty: Decimal | None
    price: Decimal | None
    client_order_id: str | None
    response_type: str


def _client_order_id(query: QueryDict, name: str) -> str | None:
    value = query.get(name) or None
    if value is not None and not CLIENT_ORDER_ID_RE.match(value):
        raise errors.illegal_chars(name, CLIENT_ORDER_ID_LEGAL)
    return value


def _in_filter(value: Decimal | None, *, places: int, maximum: Decimal, name: str) -> None:
    if value is not None and not (0 < value <= maximum and params.places(value) <= places):
        raise errors.filter_failure(name)


def order_request_parse(query: QueryDict) -> OrderRequest:
    """``POST order`` (and ``order/test``) parameters as Binance checks them: a LIMIT
    order takes ``quantity``, ``price`` and ``timeInForce=GTC`` (the one time in force a
    platform order has: it rests until filled or cancelled); a MARKET order takes
    ``quantity`` or ``quoteOrderQty`` and neither ``price`` nor ``timeInForce``. Values
    outside the symbol's filters (exchangeInfo) are ``Filter failure: <FILTER>``."""
    symbol = params.symbol_param(query, required=True)
    side = query.get("side") or None
    if side is None:
        raise errors.mandatory_param("side")
    if side not in ("BUY", "SELL"):
        raise errors.BinanceError(errors.INVALID_SIDE, "Invalid side.")
    kind = query.get("type") or None
    if kind is None:
        raise errors.mandatory_param("type")
    if kind not in ("LIMIT", "MARKET"):
        raise errors.BinanceError(errors.INVALID_ORDER_TYPE, "Invalid orderType.")
    quantity = params.decimal_param(query, "quantity")
    quote_order_qty = params.decimal_param(query, "quoteOrderQty")
    price = params.decimal_param(query, "price")
    time_in_force = query.get("timeInForce") or None
    if kind == "LIMIT":
        required = {"timeInForce": time_in_force, "quantity": quantity, "price": price}
        for name, value in required.items():
            if value is None:
                raise errors.mandatory_param(name)
        if time_in_force != "GTC":
            raise errors.BinanceError(errors.INVALID_TIF, "Invalid timeInForce.")
        if quote_order_qty is not None:
            raise errors.param_not_required("quoteOrderQty")
    else:
        if time_in_force is not None:
            raise errors.param_not_required("timeInForce")
        if price is not None:
            raise errors.param_not_required("price")
        if quantity is None and quote_order_qty is None:
            raise errors.BinanceError(
                errors.MANDATORY_PARAM_EMPTY_OR_MALFORMED,
                "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!",
            )
        if quantity is not None and quote_order_qty is not None:
            raise errors.param_not_required("quoteOrderQty")
    _in_filter(quantity, places=ORDER_QUANTITY_PLACES, maximum=ORDER_QUANTITY_MAX, name="LOT_SIZE")
    _in_filter(price, places=ORDER_PRICE_PLACES, maximum=PRICE_MAX, name="PRICE_FILTER")
    _in_filter(
        quote_order_qty, places=ORDER_QUANTITY_PLACES, maximum=ORDER_NOTIONAL_MAX, name="NOTIONAL"
    )
    if quantity is not None and price is not None and quantity * price > ORDER_NOTIONAL_MAX:
        raise errors.filter_failure("NOTIONAL")
    response_type = params.enum_param(
        query, "newOrderRespType", choices=NEW_ORDER_RESP_TYPES, default="FULL"
    )
    return OrderRequest(
        market=selectors.market_get(symbol=symbol),
        side=side,
        type=kind,
        quantity=quantity,
        quote_order_qty=quote_order_qty,
        price=price,
        client_order_id=_client_order_id(query, "newClientOrderId"),
        response_type=response_type,
    )


def _order_lookup(query: QueryDict, user: User) -> tuple[selectors.Market, Order | None]:
    """The order ``orderId`` or ``origClientOrderId`` names on ``symbol``."""
    market = selectors.market_get(symbol=params.symbol_param(query, required=True))
    order_id = query.get("orderId") or None
    client_order_id = _client_order_id(query, "origClientOrderId")
    if order_id is None and client_order_id is None:
        raise errors.BinanceError(
            errors.MANDATORY_PARAM_EMPTY_OR_MALFORMED,
            "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!",
        )
    if order_id is not None and not params.LONG_RE.match(order_id):
        raise errors.illegal_chars("orderId", params.LONG_LEGAL)
    order = selectors.order_find(
        user=user,
        market=market,
        order_id=int(order_id) if order_id is not None else None,
        client_order_id=client_order_id,
    )
    return market, order


def _order_place(request: HttpRequest, order_request: OrderRequest, user: User) -> Order:
    order_create_rate_limit(user=user)
    order, _created = services.binance_order_place(
        user=user,
        market=order_request.market,
        side=order_request.side,
        type=order_request.type,
        quantity=order_request.quantity,
        quote_order_qty=order_request.quote_order_qty,
        price=order_request.price,
        client_order_id=order_request.client_order_id,
    )
    return order


class OrderApi(SignedApi):
    """``POST`` new order (TRADE), ``GET`` query order (USER_DATA), ``DELETE`` cancel
    order (TRADE). A RESULT or FULL answer to a market order waits up to
    ``services.FINAL_WAIT_SECONDS`` for the queue to fill it (``fills`` then holds the
    fill), else answers it ``NEW``."""

    http_method_names = ["get", "head", "post", "delete"]
    scopes = {"GET": "read", "POST": "trade", "DELETE": "trade"}

    def request_weight(self, query):
        return 4

    def handle_signed(self, request, query, user):
        if request.method == "POST":
            return self._place(request, query, user)
        market, found = _order_lookup(query, user)
        if request.method == "DELETE":
            if found is None:
                raise errors.BinanceError(errors.CANCEL_REJECTED, errors.UNKNOWN_ORDER_MSG)
            cancelled = order_cancel(order_id=found.pk, user=user)
            return mapping.order_cancelled_to_binance(cancelled, symbol=market.symbol)
        if found is None:
            raise errors.BinanceError(errors.NO_SUCH_ORDER, "Order does not exist.")
        return mapping.order_to_binance(found, symbol=market.symbol)

    @staticmethod
    def _place(request: HttpRequest, query: QueryDict, user: User) -> dict:
        order_request = order_request_parse(query)
        order = _order_place(request, order_request, user)
        if order_request.response_type != "ACK" and order.type == Order.Type.MARKET:
            order = services.order_settled_wait(order=order)
        return mapping.order_placed_to_binance(
            order, symbol=order_request.market.symbol, response_type=order_request.response_type
        )


class OrderTestApi(SignedApi):
    """``POST order/test``: the order's checks, nothing placed."""

    http_method_names = ["post"]
    scopes = {"POST": "trade"}

    def handle_signed(self, request, query, user):
        order_request_parse(query)
        return {}


class OpenOrdersApi(SignedApi):
    """``GET`` the open orders (of one symbol, or all), ``DELETE`` cancel a symbol's."""

    http_method_names = ["get", "head", "delete"]
    scopes = {"GET": "read", "DELETE": "trade"}

    def request_weight(self, query):
        return 6 if query.get("symbol") else 80

    def handle_signed(self, request, query, user):
        symbols = {coin: m.symbol for coin, m in selectors.market_by_coin().items()}
        if request.method == "DELETE":
            market = selectors.market_get(symbol=params.symbol_param(query, required=True))
            orders = selectors.orders_open(user=user, market=market)
            cancelled = services.binance_orders_cancel(user=user, orders=orders)
            return [mapping.order_cancelled_to_binance(o, symbol=market.symbol) for o in cancelled]
        symbol = params.symbol_param(query, required=False)
        orders = selectors.orders_open(
            user=user, market=selectors.market_get(symbol=symbol) if symbol else None
        )
        return [
            mapping.order_to_binance(o, symbol=symbols[o.coin_id])
            for o in orders
            if o.coin_id in symbols
        ]


def _long_param(query: QueryDict, name: str) -> int | None:
    return (
        params.int_param(query, name, default=-1, minimum=0, maximum=2**63 - 1)
        if (query.get(name))
        else None
    )


class _HistoryApi(SignedApi):
    """``allOrders`` and ``myTrades``: one symbol's history, paged by the window both read
    the same way; ``from_id_param`` names the parameter a page starts from."""

    weight = 20
    from_id_param: str

    def handle_signed(self, request, query, user):
        market = selectors.market_get(symbol=params.symbol_param(query, required=True))
        window = selectors.HistoryWindow(
            from_id=_long_param(query, self.from_id_param),
            start=params.time_param(query, "startTime"),
            end=params.time_param(query, "endTime"),
            limit=params.limit_param(
                query,
                default=selectors.USER_LIST_LIMIT_DEFAULT,
                maximum=selectors.USER_LIST_LIMIT_MAX,
            ),
        )
        return self.history(query=query, user=user, market=market, window=window)

    def history(
        self,
        *,
        query: QueryDict,
        user: User,
        market: selectors.Market,
        window: selectors.HistoryWindow,
    ) -> list[dict]:
        raise NotImplementedError


class AllOrdersApi(_HistoryApi):
    from_id_param = "orderId"

    def history(self, *, query, user, market, window):
        orders = selectors.orders_all(user=user, market=market, window=window)
        return [mapping.order_to_binance(o, symbol=market.symbol) for o in orders]


class MyTradesApi(_HistoryApi):
    from_id_param = "fromId"

    def history(self, *, query, user, market, window):
        trades = selectors.trades_mine(
            user=user, market=market, order_id=_long_param(query, "orderId"), window=window
        )
        return [mapping.trade_to_binance(o, symbol=market.symbol) for o in trades]


class AccountApi(SignedApi):
    weight = 20

    def handle_signed(self, request, query, user):
        balances = selectors.balances_of(user=user)
        if query.get("omitZeroBalances") == "true":
            balances = [b for b in balances if b.available or b.locked]
        return mapping.account_to_binance(
            balances=balances,
            coin_symbols=selectors.coin_symbols(),
            uid=user.pk,
            can_trade=True,
        )
