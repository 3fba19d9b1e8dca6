"""Serializer fields for market data that other apps' APIs take as input."""

from rest_framework import serializers


class CoinIdField(serializers.CharField):
    """A CoinGecko coin id as clients type it: ids are lowercase, so ``" Bitcoin "`` is
    ``bitcoin``. Whether the coin is tracked is the service's question."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 100)
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> str:
        return super().to_internal_value(data).lower()
