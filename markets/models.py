from django.db import models

from cryptovault.models import TimestampedModel


class Coin(TimestampedModel):
    """A coin operators can track. ``id`` is the CoinGecko id (``bitcoin``)."""

    id = models.CharField(primary_key=True, max_length=100)
    symbol = models.CharField(max_length=32)
    name = models.CharField(max_length=200)
    tracked = models.BooleanField(default=True, db_index=True)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return f"{self.name} ({self.symbol.upper()})"


class PricePoint(models.Model):
    """One usd price of a coin per history interval (``PRICE_HISTORY_INTERVAL_SECONDS``),
    appended by the poller; ``ts`` is the start of the interval, so a retried poll never
    writes a second row for the same interval."""

    coin = models.ForeignKey(Coin, on_delete=models.CASCADE, related_name="price_points")
    ts = models.DateTimeField()
    price = models.DecimalField(max_digits=40, decimal_places=18)

    class Meta:
        ordering = ("coin", "ts")
        constraints = [
            models.UniqueConstraint(fields=["coin", "ts"], name="markets_pricepoint_coin_ts")
        ]

    def __str__(self) -> str:
        return f"{self.coin_id} {self.ts:%Y-%m-%d %H:%M} {self.price}"


class StatusSample(models.Model):
    """What the platform looked like at one minute (``markets.status_sample`` on beat): the
    price age and source, and the Celery queues. The dashboard charts the last hour of
    queues and price age, and shades the stale minutes of the 24 h price charts. A table
    rather than Redis: the record of an outage must survive the Redis restart ending it."""

    ts = models.DateTimeField(unique=True)
    # None: nothing recorded yet, or Redis unreachable when sampled.
    price_age_seconds = models.FloatField(null=True)
    price_source = models.CharField(max_length=32, null=True)
    price_stale = models.BooleanField()
    queue_waiting = models.PositiveIntegerField(null=True)
    queue_unacked = models.PositiveIntegerField(null=True)

    class Meta:
        ordering = ("ts",)

    def __str__(self) -> str:
        return f"{self.ts:%Y-%m-%d %H:%M} age={self.price_age_seconds} queue={self.queue_waiting}"


class LatestPrice(models.Model):
    """The latest real (source-reported, never simulated) quote of a coin, upserted by
    every successful poll. Redis holds the live price store; this row is its record, so
    a Redis that comes back empty is refilled with true prices and their true ``as_of``
    (``markets.price_store.prices_restore``) instead of none until the next poll lands."""

    coin = models.OneToOneField(
        Coin, primary_key=True, on_delete=models.CASCADE, related_name="latest_price"
    )
    price = models.DecimalField(max_digits=40, decimal_places=18)
    change_24h_pct = models.DecimalField(max_digits=40, decimal_places=18, null=True)
    market_cap = models.DecimalField(max_digits=40, decimal_places=18, null=True)
    volume_24h = models.DecimalField(max_digits=40, decimal_places=18, null=True)
    last_updated = models.DateTimeField()
    as_of = models.DateTimeField()
    source = models.CharField(max_length=32)

    def __str__(self) -> str:
        return f"{self.coin_id} {self.price} at {self.as_of:%Y-%m-%d %H:%M:%S}"
