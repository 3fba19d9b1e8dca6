from django.db import models


class Coin(models.Model):
    """A coin operators can track. ``id`` is the CoinGecko id (``bitcoin``)."""

    id = models.CharField(primary_key=True, max_length=100)
    symbol = models.CharField(max_length=32)
    name = models.CharField(max_length=200)
    tracked = models.BooleanField(default=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return f"{self.name} ({self.symbol.upper()})"
