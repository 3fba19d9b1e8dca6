"""Binance's spot REST API (``/binance/api/v3/``), the public subset: one view per
endpoint, as Binance's docs define it (rest-api.md of binance/binance-spot-api-docs).

Plain Django views rather than DRF: the answers are Binance's, not ours. Every error,
whatever raised it, is Binance's ``{"code", "msg"}`` (``bots.errors``), never DRF's
``{"detail"}``; every answer carries ``X-MBX-USED-WEIGHT-1M`` (``bots.weights``). A
dependency outage (PostgreSQL, Redis) is left to ``DependencyOutageMiddleware``: the
platform's JSON 503 with ``Retry-After``, which Binance's clients treat by its status
(ccxt: ``ExchangeNotAvailable``), as Binance's docs say of every 5xx.

Signed endpoints slot in as subclasses of ``BinanceApi`` that authenticate in
``handle`` and map orders and balances with ``bots.mapping``.
"""

import logging

import orjson
from django.http import HttpRequest, HttpResponse, QueryDict
from django.http.response import HttpResponseBase
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from bots import errors, params, selectors, weights
from cryptovault.exceptions import DEPENDENCY_ERRORS, ApplicationError
from cryptovault.net import client_ip
from markets.selectors import CANDLE_INTERVALS, CANDLES_LIMIT_DEFAULT, CANDLES_LIMIT_MAX

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


class TickerPriceApi(BinanceApi):
    def request_weight(self, query):
        return _many_symbols_weight(query, one=2, many=4)

    def handle(self, request, query):
        symbol, symbols = params.symbol_or_symbols(query)
        markets = selectors.markets_select(symbol=symbol, symbols=symbols)
        return _one_or_list(selectors.ticker_prices(markets=markets), single=symbol is not None)


class BookTickerApi(BinanceApi):
    def request_weight(self, query):
        return _many_symbols_weight(query, one=2, many=4)

    def handle(self, request, query):
        symbol, symbols = params.symbol_or_symbols(query)
        markets = selectors.markets_select(symbol=symbol, symbols=symbols)
        return _one_or_list(selectors.book_tickers(markets=markets), single=symbol is not None)


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
        limit = params.int_param(
            query, "limit", default=CANDLES_LIMIT_DEFAULT, minimum=1, maximum=CANDLES_LIMIT_MAX
        )
        market = selectors.market_get(symbol=symbol)
        return selectors.klines(market=market, interval=interval, limit=limit, start=start, end=end)


class TradesApi(BinanceApi):
    """The platform's own fills on the symbol, anonymised (empty when nobody traded)."""

    weight = 25

    def handle(self, request, query):
        market = selectors.market_get(symbol=params.symbol_param(query, required=True))
        limit = params.int_param(
            query,
            "limit",
            default=selectors.TRADES_LIMIT_DEFAULT,
            minimum=1,
            maximum=selectors.TRADES_LIMIT_MAX,
        )
        return selectors.trades(fills=selectors.fills_recent(market=market, limit=limit))


class AggTradesApi(BinanceApi):
    """``trades`` in the aggregate shape, for ccxt's ``fetch_trades``."""

    weight = 4

    def handle(self, request, query):
        market = selectors.market_get(symbol=params.symbol_param(query, required=True))
        limit = params.int_param(
            query,
            "limit",
            default=selectors.TRADES_LIMIT_DEFAULT,
            minimum=1,
            maximum=selectors.TRADES_LIMIT_MAX,
        )
        fills = selectors.fills_recent(
            market=market,
            limit=limit,
            start=params.time_param(query, "startTime"),
            end=params.time_param(query, "endTime"),
        )
        return selectors.agg_trades(fills=fills)


class UnknownEndpointApi(BinanceApi):
    """Any other path under ``/binance/``: Binance's 404, in its error shape."""

    http_method_names = ["get", "head", "post", "put", "delete", "patch", "options"]

    def handle(self, request, query):
        raise errors.unsupported()

    def post(self, request, *args, **kwargs):
        return self.get(request)

    put = delete = patch = options = post
