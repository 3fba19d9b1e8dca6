"""Money and quantities as plain decimal strings, in and out of the API.

The contract forbids floats and exponents on the wire: ``"65000"``, ``"0.00001"``.
"""

import re
from decimal import Decimal
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from rest_framework import serializers

# Every price input (an order's limit, an alert) is at most this many usd.
PRICE_MAX = Decimal("1000000000")


def decimal_str(value: Decimal | None) -> str | None:
    """A plain decimal string: no exponent, no trailing zeros (``1E-8`` -> ``"0.00000001"``)."""
    if value is None:
        return None
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class PlainDecimalField(serializers.Field):
    """Decimal in and out as a plain string.

    In: a decimal string like ``"0.0015"`` (JSON numbers are tolerated when they read
    the same way), greater than zero, with at most ``decimal_places`` decimals and at
    most ``max_value``; NaN, infinities, exponents and signs are refused. Parsing and
    comparing cannot overflow, and the bounds keep the services' arithmetic well inside
    Decimal's precision. Out: no exponent, no trailing zeros (``"65000"``, ``"0.00001"``).
    """

    default_error_messages = {
        "invalid": 'Enter a positive decimal number as a string, like "0.0015".',
        "places": "At most {places} decimal places.",
        "max_value": "At most {max_value}.",
        "positive": "Must be greater than zero.",
    }

    def __init__(self, *, decimal_places: int = 8, max_value: Decimal | None = None, **kwargs):
        self.decimal_places = decimal_places
        self.max_value = max_value
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> Decimal:
        if isinstance(data, bool) or not isinstance(data, str | int | float):
            self.fail("invalid")
        text = data.strip() if isinstance(data, str) else repr(data)
        match = re.fullmatch(r"([0-9]+)(?:\.([0-9]+))?", text)
        if match is None:
            self.fail("invalid")
        if len((match.group(2) or "").rstrip("0")) > self.decimal_places:
            self.fail("places", places=self.decimal_places)
        value = Decimal(text)
        if self.max_value is not None and value > self.max_value:
            self.fail("max_value", max_value=decimal_str(self.max_value))
        if value <= 0:
            self.fail("positive")
        return value

    def to_representation(self, value) -> str | None:
        return None if value is None else decimal_str(Decimal(value))


class PlainDecimalFieldSchema(OpenApiSerializerFieldExtension):
    """A decimal string in the schema; on input, with the field's bounds (the pattern
    enforces the decimal places, ``exclusiveMinimum``/``maximum`` state the range)."""

    target_class = PlainDecimalField

    def map_serializer_field(self, auto_schema, direction):
        field: PlainDecimalField = self.target
        schema: dict[str, Any] = {"type": "string", "format": "decimal", "example": "0.0015"}
        if direction == "request":
            schema["pattern"] = rf"^\d+(?:\.\d{{1,{field.decimal_places}}})?$"
            schema["minimum"] = 0
            schema["exclusiveMinimum"] = True
            if field.max_value is not None:
                maximum = field.max_value
                schema["maximum"] = int(maximum) if maximum == int(maximum) else float(maximum)
        return schema
