"""Order serializers shared by the orders API and the ``/ws/user`` pushes."""

from rest_framework import serializers

from cryptovault.decimals import PlainDecimalField
from orders.models import Order


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


# Built once: instantiating a serializer deep-copies its declared fields, which is most
# of what serializing one order costs; a batch of fills serializes thousands.
_ORDER_OUTPUT = OrderOutputSerializer()
# Each field's name, the attribute it reads (every source is a plain attribute) and how
# it shows a value: what ``to_representation`` walks, without its generic steps.
_ORDER_OUTPUT_FIELDS = tuple(
    (name, field.source or name, field.to_representation)
    for name, field in _ORDER_OUTPUT.fields.items()
)


def order_output(order: Order) -> dict:
    """``OrderOutputSerializer(order).data``, without building a serializer per order:
    as ``Serializer.to_representation``, None stays None and every other value is shown
    by its field."""
    output = {}
    for name, source, show in _ORDER_OUTPUT_FIELDS:
        value = getattr(order, source)
        output[name] = None if value is None else show(value)
    return output
