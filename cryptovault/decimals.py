"""Money and quantities as plain decimal strings, in and out of the API.

The contract forbids floats and exponents on the wire: ``"65000"``, ``"0.00001"``.
"""

import re
from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


def decimal_str(value: Decimal | None) -> str | None:
    """A plain decimal string: no exponent, no trailing zeros (``1E-8`` -> ``"0.00000001"``)."""
    if value is None:
        return None
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@extend_schema_field({"type": "string", "format": "decimal", "example": "0.0015"})
class PlainDecimalField(serializers.Field):
    """Decimal in and out as a plain string.

    In: a decimal string like ``"0.0015"`` (JSON numbers are tolerated when they read
    the same way); NaN, infinities, exponents, signs, and more than ``decimal_places``
    decimals or ``max_integer_digits`` integer digits are refused. Out: no exponent,
    no trailing zeros (``"65000"``, ``"0.00001"``).
    """

    default_error_messages = {
        "invalid": 'Enter a positive decimal number as a string, like "0.0015".',
        "precision": "At most {places} decimal places and {digits} integer digits.",
        "positive": "Must be greater than zero.",
    }

    def __init__(self, *, decimal_places: int = 8, max_integer_digits: int = 12, **kwargs):
        self.decimal_places = decimal_places
        self.max_integer_digits = max_integer_digits
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> Decimal:
        if isinstance(data, bool) or not isinstance(data, str | int | float):
            self.fail("invalid")
        text = data.strip() if isinstance(data, str) else repr(data)
        match = re.fullmatch(r"([0-9]+)(?:\.([0-9]+))?", text)
        if match is None:
            self.fail("invalid")
        integer, fraction = match.group(1).lstrip("0"), (match.group(2) or "").rstrip("0")
        if len(fraction) > self.decimal_places or len(integer) > self.max_integer_digits:
            self.fail("precision", places=self.decimal_places, digits=self.max_integer_digits)
        value = Decimal(text)
        if value <= 0:
            self.fail("positive")
        return value

    def to_representation(self, value) -> str | None:
        return None if value is None else decimal_str(Decimal(value))
