"""Market data API. Every endpoint is public (market data is not personal), so none runs
authentication: a stale or bogus token in a browser never breaks a price chart.

Every read is the same for every client: each answer carries a strong ETag and a
Cache-Control for CDNs, and its encoded body is stored for ``markets.asgi``'s lane,
which serves the next requests from Redis (``markets.read_cache``)."""

import logging
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from cryptovault.decimals import decimal_str
from cryptovault.exceptions import read_only_method_check
from cryptovault.net import client_ip
from cryptovault.pagination import PageNumberPagination, paginated_response
from cryptovault.ratelimit import RateLimited, rate_limited_body
from markets import arbitrage, read_cache, selectors, upstream

logger = logging.getLogger(__name__)


class PublicApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    # Its group in ``read_cache.READS_PER_MINUTE``.
    rate_group: str
    # The query parameters it reads (what a cached answer is keyed by), set for each
    # subclass: its InputSerializer's fields and its paginator's page parameters.
    query_params: frozenset[str] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        params = set(cls.InputSerializer().fields) if hasattr(cls, "InputSerializer") else set()
        if paginator := getattr(cls, "pagination_class", None):
            params |= {paginator.page_query_param, paginator.page_size_query_param}
        cls.query_params = frozenset(params - {None})

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        # Before anything else, unknown coins included: probing ids costs the same.
        retry_after = read_cache.read_count(group=self.rate_group, client_ip=client_ip(request))
        if retry_after:
            raise RateLimited(retry_after)
        # Read before the body is built: a body is never stored as newer than its data.
        self.read_version, self.read_as_of = read_cache.read_state()

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.status_code != 200 or request.method not in ("GET", "HEAD"):
            return response
        response.render()
        return read_cache.cached_response(
            request,
            response,
            version=self.read_version,
            as_of_raw=self.read_as_of,
            params=self.query_params,
        )


# A coin and its latest quote: the fields the list and the detail share. (A comment, not
# a docstring: drf-spectacular would publish it as both components' description.)
class CoinQuoteSerializer(serializers.Serializer):
    id = serializers.CharField()
    symbol = serializers.CharField()
    name = serializers.CharField()
    price = serializers.CharField(allow_null=True)
    change_24h_pct = serializers.CharField(allow_null=True)
    market_cap = serializers.CharField(allow_null=True)
    volume_24h = serializers.CharField(allow_null=True)
    last_updated = serializers.CharField(allow_null=True)


class CoinListApi(PublicApi):
    rate_group = "coins"

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "CoinListInput"

        search = serializers.CharField(required=False, allow_blank=True, max_length=100)

    class OutputSerializer(CoinQuoteSerializer):
        class Meta:
            ref_name = "CoinListItem"

    pagination_class = PageNumberPagination

    @extend_schema(parameters=[InputSerializer], responses=OutputSerializer(many=True))
    def get(self, request):
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        coins = selectors.coin_list(search=params.validated_data.get("search"))
        return paginated_response(
            view=self, request=request, items=coins, serializer_class=self.OutputSerializer
        )


def _coin_or_404(coin_id: str):
    coin = selectors.coin_get(coin_id=coin_id)
    if coin is None:
        raise Http404
    return coin


class CoinDetailApi(PublicApi):
    rate_group = "coin-detail"

    class OutputSerializer(CoinQuoteSerializer):
        class Meta:
            ref_name = "CoinDetail"

        tracked = serializers.BooleanField()
        high_24h = serializers.CharField(allow_null=True)
        low_24h = serializers.CharField(allow_null=True)
        market_cap_rank = serializers.CharField(allow_null=True)
        description = serializers.CharField(allow_blank=True)
        categories = serializers.ListField(child=serializers.CharField())
        genesis_date = serializers.CharField(allow_null=True)
        image = serializers.CharField(allow_null=True)
        links = serializers.JSONField()
        supply = serializers.JSONField()
        ath = serializers.JSONField()
        atl = serializers.JSONField()

    @extend_schema(responses=OutputSerializer)
    def get(self, request, coin_id: str):
        details = upstream.coin_details(coin=_coin_or_404(coin_id))
        return Response(self.OutputSerializer(details).data)


class CoinHistoryApi(PublicApi):
    rate_group = "coin-history"

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "CoinHistoryInput"

        days = serializers.IntegerField(min_value=1, max_value=365, default=7)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "CoinHistory"

        coin = serializers.CharField()
        days = serializers.IntegerField()
        prices = serializers.ListField(child=serializers.ListField())

    @extend_schema(parameters=[InputSerializer], responses=OutputSerializer)
    def get(self, request, coin_id: str):
        coin = _coin_or_404(coin_id)
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        days = params.validated_data["days"]
        prices = upstream.coin_history(coin_id=coin.id, days=days)
        return Response(
            self.OutputSerializer({"coin": coin.id, "days": days, "prices": prices}).data
        )


# The intervals the contract names; ``selectors.CANDLE_INTERVALS`` holds more (for Binance).
OHLC_INTERVALS = ("1m", "5m", "15m", "1h", "4h", "1d")

OHLC_SCHEMA = {
    "type": "array",
    "description": "Candles, oldest first: [open time (epoch ms), open, high, low, close].",
    "items": {
        "type": "array",
        "minItems": 5,
        "maxItems": 5,
        "items": {"oneOf": [{"type": "integer"}, {"type": "string", "format": "decimal"}]},
    },
    "example": [[1767225600000, "65000", "65100.5", "64900", "65050"]],
}


class CoinOhlcApi(PublicApi):
    """Candles built from the stored price points (one per price-history interval, 1 min
    by default); no invented candle fills a gap."""

    rate_group = "coin-ohlc"

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "CoinOhlcInput"

        interval = serializers.ChoiceField(choices=OHLC_INTERVALS)
        limit = serializers.IntegerField(
            min_value=1,
            max_value=selectors.CANDLES_LIMIT_MAX,
            default=selectors.CANDLES_LIMIT_DEFAULT,
            help_text="How many intervals back from now (the current one included); "
            "a gap in the history yields fewer candles.",
        )

    @extend_schema(
        parameters=[InputSerializer],
        responses={200: OHLC_SCHEMA},
        operation_id="coins_ohlc_list",
    )
    def get(self, request, coin_id: str):
        coin = _coin_or_404(coin_id)
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        candles = selectors.candle_list(coin_id=coin.id, **params.validated_data)
        return Response(
            [
                [
                    int(c.open_time.timestamp() * 1000),
                    *(decimal_str(price) for price in (c.open, c.high, c.low, c.close)),
                ]
                for c in candles
            ]
        )


class ArbitrageApi(PublicApi):
    rate_group = "arbitrage"

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ArbitrageInput"

        min_net_pct = serializers.DecimalField(
            max_digits=12, decimal_places=4, required=False, min_value=-100, max_value=1000
        )

    class OpportunitySerializer(serializers.Serializer):
        class Meta:
            ref_name = "ArbitrageOpportunity"

        coin = serializers.CharField()
        buy_exchange = serializers.CharField()
        buy_price = serializers.CharField()
        buy_fee_rate = serializers.CharField()
        sell_exchange = serializers.CharField()
        sell_price = serializers.CharField()
        sell_fee_rate = serializers.CharField()
        spread_pct = serializers.CharField()
        net_pct = serializers.CharField()

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "Arbitrage"

        as_of = serializers.DateTimeField(allow_null=True)
        opportunities = serializers.ListField()

    @extend_schema(parameters=[InputSerializer], responses=OutputSerializer)
    def get(self, request):
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        result = arbitrage.arbitrage_opportunities(
            min_net_pct=params.validated_data.get("min_net_pct")
        )
        result["opportunities"] = self.OpportunitySerializer(
            result["opportunities"], many=True
        ).data
        return Response(self.OutputSerializer(result).data)


# --- GET /prices: the hottest endpoint -----------------------------------------------------------
# A plain async Django view rather than DRF: no ORM, no serializer. The body is encoded
# once per poll by ``prices_record``; a request costs one Redis MGET. In production
# ``markets.asgi.public_reads_lane`` answers most requests before Django's middleware;
# this view serves whatever that lane hands on.
@csrf_exempt  # read-only: any unsafe method gets a 405, never a CSRF 403
async def prices(request: HttpRequest) -> HttpResponse:
    if (refused := read_only_method_check(request)) is not None:
        return refused
    # Redis down: DependencyOutageMiddleware answers 503 service_unavailable.
    body, as_of_raw, retry_after = await read_cache.prices_read_async(client_ip=client_ip(request))
    if retry_after:
        return HttpResponse(
            rate_limited_body(retry_after),
            status=429,
            content_type="application/json",
            headers={"Retry-After": str(retry_after)},
        )
    response = HttpResponse(body, content_type="application/json")
    return read_cache.conditional_response(request, response, as_of_raw=as_of_raw)
