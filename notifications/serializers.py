"""Output shapes shared by the REST API and the realtime push, so both agree."""

from decimal import Decimal

from rest_framework import serializers

from notifications.models import Notification, PriceAlert


def decimal_str(value: Decimal | None) -> str | None:
    """A plain decimal string without exponent or trailing zeros (``"0.00001"``, ``"70000"``)."""
    if value is None:
        return None
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class PlainDecimalField(serializers.DecimalField):
    def to_representation(self, value):
        return decimal_str(Decimal(value))


class NotificationSerializer(serializers.ModelSerializer):
    read = serializers.BooleanField()

    class Meta:
        model = Notification
        fields = ("id", "kind", "title", "body", "data", "read", "created_at")
        read_only_fields = fields


class PriceAlertSerializer(serializers.ModelSerializer):
    coin = serializers.CharField(source="coin_id")
    price = PlainDecimalField(max_digits=38, decimal_places=18)
    triggered_price = PlainDecimalField(max_digits=38, decimal_places=18, allow_null=True)

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
