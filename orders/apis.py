"""Trading API: one class per operation (orders list/create share a URL, hence one class
with ``get``/``post``), each validating input, calling one service, serializing output."""

from collections.abc import Mapping

from django.http import Http404
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
)
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from cryptovault.decimals import PRICE_MAX, PlainDecimalField
from cryptovault.pagination import CursorPagination, paginated_response
from markets.fields import CoinIdField
from orders import selectors, services
from orders.limits import order_create_rate_limit
from orders.models import LedgerEntry, Order
from orders.serializers import OrderOutputSerializer, order_output


class OrderListCreateApi(APIView):
    # What an API key needs here (accounts.authentication.ApiKeyAuthentication).
    api_key_scopes = {"GET": "read", "POST": "trade"}

    class FilterSerializer(serializers.Serializer):
        # Blank values (``?status=&coin=``) mean "no filter".
        status = serializers.ChoiceField(
            choices=Order.Status.choices, required=False, allow_blank=True
        )
        coin = CoinIdField(required=False, allow_blank=True)

    # Also the body of an ``order.place`` message on /ws/user (orders.socket_api).
    class InputSerializer(serializers.Serializer):
        coin = CoinIdField()
        side = serializers.ChoiceField(choices=Order.Side.choices)
        type = serializers.ChoiceField(choices=Order.Type.choices)
        quantity = PlainDecimalField(
            decimal_places=services.ORDER_QUANTITY_PLACES, max_value=services.ORDER_QUANTITY_MAX
        )
        limit_price = PlainDecimalField(
            decimal_places=services.ORDER_PRICE_PLACES,
            max_value=PRICE_MAX,
            required=False,
            allow_null=True,
        )
        client_order_id = serializers.RegexField(
            r"^[A-Za-z0-9_.:-]{1,64}$",
            required=False,
            allow_null=True,
            error_messages={"invalid": "1-64 characters of letters, digits and _ . : -"},
        )

        class Meta:
            ref_name = "OrderPlace"

        def validate(self, attrs: dict) -> dict:
            is_limit = attrs["type"] == Order.Type.LIMIT
            if is_limit and attrs.get("limit_price") is None:
                raise serializers.ValidationError({"limit_price": ["Required for limit orders."]})
            if not is_limit and attrs.get("limit_price") is not None:
                raise serializers.ValidationError(
                    {"limit_price": ["Only limit orders take a limit price."]}
                )
            return attrs

    OutputSerializer = OrderOutputSerializer
    pagination_class = CursorPagination

    @extend_schema(parameters=[FilterSerializer], responses=OrderOutputSerializer(many=True))
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        orders = selectors.order_list(user=request.user, **filters.validated_data)
        return paginated_response(
            view=self, request=request, items=orders, serializer_class=self.OutputSerializer
        )

    @extend_schema(
        request=InputSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                location=OpenApiParameter.HEADER,
                required=False,
                description="Same as client_order_id: a repeat returns the first order (200).",
            )
        ],
        responses={201: OrderOutputSerializer, 200: OrderOutputSerializer},
    )
    def post(self, request):
        order_create_rate_limit(user=request.user)
        data = order_input(request.data)
        header_key = request.headers.get("Idempotency-Key")
        client_order_id = data.get("client_order_id")
        if client_order_id is None and header_key is not None:
            key_field = _ORDER_INPUT.fields["client_order_id"]
            try:
                client_order_id = key_field.run_validation(header_key.strip())
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"Idempotency-Key": exc.detail}) from None
        order, created = services.order_place(
            user=request.user,
            coin_id=data["coin"],
            side=data["side"],
            type=data["type"],
            quantity=data["quantity"],
            limit_price=data.get("limit_price"),
            client_order_id=client_order_id,
        )
        return Response(
            order_output(order),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


# Built once, as orders.serializers builds its output serializer: instantiating a
# serializer deep-copies its declared fields, most of what validating an order costs.
# Validation keeps no state on the serializer, so request threads share it.
_ORDER_INPUT = OrderListCreateApi.InputSerializer()


def order_input(data) -> dict:
    """``InputSerializer(data=data)``'s validated data, or its ``ValidationError``.

    A JSON object is validated by the shared serializer; anything else (``null``, a list,
    a string) by a serializer of its own, for its ``is_valid``'s exact errors."""
    if not isinstance(data, Mapping):
        serializer = OrderListCreateApi.InputSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data
    return _ORDER_INPUT.run_validation(data)


class OrderDetailApi(APIView):
    api_key_scopes = {"GET": "read"}

    OutputSerializer = OrderOutputSerializer

    @extend_schema(responses=OutputSerializer)
    def get(self, request, order_id: int):
        order = selectors.order_get(user=request.user, order_id=order_id)
        if order is None:
            raise Http404
        return Response(self.OutputSerializer(order).data)


class OrderCancelApi(APIView):
    api_key_scopes = {"POST": "trade"}

    OutputSerializer = OrderOutputSerializer

    @extend_schema(request=None, responses=OutputSerializer)
    def post(self, request, order_id: int):
        order = services.order_cancel(order_id=order_id, user=request.user)
        return Response(self.OutputSerializer(order).data)


class PortfolioApi(APIView):
    api_key_scopes = {"GET": "read"}

    class OutputSerializer(serializers.Serializer):
        class BalanceSerializer(serializers.Serializer):
            asset = serializers.CharField()
            available = PlainDecimalField()
            locked = PlainDecimalField()
            price = PlainDecimalField()
            value_usd = PlainDecimalField()

        balances = BalanceSerializer(many=True)
        total_value_usd = PlainDecimalField()

        class Meta:
            ref_name = "Portfolio"

    @extend_schema(responses=OutputSerializer)
    def get(self, request):
        portfolio = selectors.portfolio_get(user=request.user)
        return Response(self.OutputSerializer(portfolio).data)


class TransactionListApi(APIView):
    api_key_scopes = {"GET": "read"}

    class OutputSerializer(serializers.ModelSerializer):
        amount = PlainDecimalField()
        balance_after = PlainDecimalField()
        order = serializers.IntegerField(source="order_id", allow_null=True)

        class Meta:
            model = LedgerEntry
            ref_name = "Transaction"
            fields = ("id", "kind", "asset", "amount", "balance_after", "order", "created_at")
            read_only_fields = fields

    pagination_class = CursorPagination

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request):
        entries = selectors.ledger_entry_list(user=request.user)
        return paginated_response(
            view=self, request=request, items=entries, serializer_class=self.OutputSerializer
        )
