"""Output shapes shared by the REST API and the realtime push, so both agree."""

from decimal import Decimal
from typing import TypedDict

from rest_framework import serializers

from cryptovault.decimals import PRICE_MAX, PlainDecimalField
from notifications.models import Notification, PriceAlert


class PriceBounds(TypedDict):
    decimal_places: int
    max_value: Decimal


# Alert prices: bounded as an order's limit price (12 places for sub-cent coins).
PRICE_FIELD: PriceBounds = {"decimal_places": 12, "max_value": PRICE_MAX}


class NotificationSerializer(serializers.ModelSerializer):
    read = serializers.BooleanField()

    class Meta:
        model = Notification
        fields = ("id", "kind", "title", "body", "data", "read", "created_at")
        read_only_fields = fields


class PriceAlertSerializer(serializers.ModelSerializer):
    coin = serializers.CharField(source="coin_id")
    price = PlainDecimalField(**PRICE_FIELD)
    triggered_price = PlainDecimalField(**PRICE_FIELD, allow_null=True)

    class Meta:
        model = PriceAlert
        fields = (
            "id",
            "coin",
            "condition",
            "price",
            "active",
            "triggered_at",
            "triggered_price",
            "created_at",
        )
        read_only_fields = fields


# Built once (see orders.serializers.order_output): a batch notifies thousands.
_NOTIFICATION_OUTPUT = NotificationSerializer()


def notification_output(notification: Notification) -> dict:
    """``NotificationSerializer(notification).data``, without a serializer per call."""
    return dict(_NOTIFICATION_OUTPUT.to_representation(notification))
