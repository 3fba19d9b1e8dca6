"""Order serializers shared by the orders API and ``/ws/user`` (its pushes, and the
orders placed on it)."""

from rest_framework import serializers

from cryptovault.decimals import PRICE_MAX, PlainDecimalField
from markets.fields import CoinIdField
from orders.models import ORDER_QUANTITY_MAX, Order


# Declared field by field rather than as a ModelSerializer: it runs twice per placed
# order (response and push) and once per status change, and a ModelSerializer rebuilds
# its fields from the model on every instance.
class OrderOutputSerializer(serializers.Serializer):
    """An order as the API and ``/ws/user`` show it."""

    id = serializers.IntegerField(read_only=True)
    client_order_id = serializers.CharField(read_only=True, allow_null=True)
    coin = serializers.CharField(source="coin_id", read_only=True)
    side = serializers.ChoiceField(choices=Order.Side.choices, read_only=True)
    type = serializers.ChoiceField(choices=Order.Type.choices, read_only=True)
    quantity = PlainDecimalField(read_only=True)
    limit_price = PlainDecimalField(read_only=True, allow_null=True)
    status = serializers.ChoiceField(choices=Order.Status.choices, read_only=True)
    filled_price = PlainDecimalField(read_only=True, allow_null=True)
    fee = PlainDecimalField(read_only=True, allow_null=True)
    reject_reason = serializers.CharField(read_only=True, allow_null=True)
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)


class OrderPlaceInputSerializer(serializers.Serializer):
    """The body of ``POST /api/v1/orders`` and of an ``order.place`` message."""

    coin = CoinIdField()
    side = serializers.ChoiceField(choices=Order.Side.choices)
    type = serializers.ChoiceField(choices=Order.Type.choices)
    quantity = PlainDecimalField(decimal_places=8, max_value=ORDER_QUANTITY_MAX)
    limit_price = PlainDecimalField(
        decimal_places=12,
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
