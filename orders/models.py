"""Paper wallets on a double-entry ledger, and orders.

Invariant (checked by ``selectors.ledger_mismatches``): for every user and asset,
``sum(LedgerEntry.amount) == Balance.available + Balance.locked``. Moving funds
between ``available`` and ``locked`` (reserving for an order) does not change the
total, so it writes no ledger entry; everything that changes the total does.
"""

from typing import TypedDict

from django.conf import settings
from django.db import models
from django.db.models import Q

from cryptovault.models import TimestampedModel


class _Digits(TypedDict):
    max_digits: int
    decimal_places: int


# Enough digits for any quantity or usd amount; services quantize before writing
# (quantities and usd amounts to 8 places), so nothing is rounded by the database.
MONEY: _Digits = {"max_digits": 38, "decimal_places": 18}

USD = "usd"


class Balance(models.Model):
    """One user's holding of one asset (``usd`` or a CoinGecko coin id)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    asset = models.CharField(max_length=100)
    available = models.DecimalField(default=0, **MONEY)
    # Reserved for pending/open orders; released on fill, cancel or reject.
    locked = models.DecimalField(default=0, **MONEY)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "asset"], name="orders_balance_user_asset"),
            models.CheckConstraint(
                condition=Q(available__gte=0), name="orders_balance_available_gte_0"
            ),
            models.CheckConstraint(condition=Q(locked__gte=0), name="orders_balance_locked_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.asset} {self.available}+{self.locked}"

    @property
    def total(self):
        return self.available + self.locked


class Order(TimestampedModel):
    class Side(models.TextChoices):
        BUY = "buy"
        SELL = "sell"

    class Type(models.TextChoices):
        MARKET = "market"
        LIMIT = "limit"

    class Status(models.TextChoices):
        PENDING = "pending"
        OPEN = "open"
        FILLED = "filled"
        CANCELLED = "cancelled"
        REJECTED = "rejected"

    ACTIVE_STATUSES = (Status.PENDING, Status.OPEN)

    # No index of their own on user and coin: orders_user_created leads with the user, and
    # every read by coin also names the user or a status with a partial index. Each fill
    # moves its order between partial indexes (a non-HOT update writes every index), so
    # an index less is a write less per fill. (Coins are never deleted: the PROTECT
    # check of a deleted coin would scan.)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, db_index=False)
    client_order_id = models.CharField(max_length=64, null=True, blank=True)
    coin = models.ForeignKey(
        "markets.Coin", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    side = models.CharField(max_length=4, choices=Side.choices)
    type = models.CharField(max_length=6, choices=Type.choices)
    quantity = models.DecimalField(**MONEY)
    limit_price = models.DecimalField(null=True, blank=True, **MONEY)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    filled_price = models.DecimalField(null=True, blank=True, **MONEY)
    fee = models.DecimalField(null=True, blank=True, **MONEY)
    reject_reason = models.CharField(max_length=200, null=True, blank=True)
    # What is still reserved for this order (``usd`` for buys, the coin for sells).
    reserved_asset = models.CharField(max_length=100)
    reserved_amount = models.DecimalField(default=0, **MONEY)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "client_order_id"],
                condition=Q(client_order_id__isnull=False),
                name="orders_order_user_client_order_id",
            ),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="orders_order_quantity_gt_0"),
            models.CheckConstraint(
                condition=Q(reserved_amount__gte=0), name="orders_order_reserved_gte_0"
            ),
        ]
        indexes = [
            # Listing (cursor pagination: newest first) and the per-user queue.
            models.Index(fields=["user", "-created_at", "-id"], name="orders_user_created"),
            models.Index(
                fields=["user", "id"],
                condition=Q(status="pending"),
                name="orders_user_pending",
            ),
            # Resting limit orders, matched by coin/side/limit on every price poll.
            models.Index(
                fields=["coin", "side", "limit_price"],
                condition=Q(status="open"),
                name="orders_open_book",
            ),
            # The latest fills of a coin, newest first (Binance's public ``trades``).
            models.Index(
                fields=["coin", "-updated_at", "-id"],
                condition=Q(status="filled"),
                name="orders_fills_by_coin",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.side} {self.quantity} {self.coin_id} ({self.status})"


class LedgerEntry(models.Model):
    """One change of one user's balance of one asset, written in the transaction that
    makes it: a user's entries of an asset sum to its balance (available + locked)."""

    class Kind(models.TextChoices):
        SIGNUP_BONUS = "signup_bonus"
        OPERATOR_CREDIT = "operator_credit"
        OPERATOR_DEBIT = "operator_debit"
        TRADE_BUY = "trade_buy"
        TRADE_SELL = "trade_sell"
        FEE = "fee"

    # Indexed by orders_ledger_user_created and orders_ledger_once_per_order (which lead
    # with them), not by an index each: a fill inserts three entries. Both references are
    # checked once per statement by triggers, not per row by a constraint (migration 0006).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, db_index=False, db_constraint=False
    )
    asset = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    # Signed: credits positive, debits negative.
    amount = models.DecimalField(**MONEY)
    # available + locked of this asset right after this entry.
    balance_after = models.DecimalField(**MONEY)
    order = models.ForeignKey(
        Order,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="ledger_entries",
        db_index=False,
        db_constraint=False,
    )
    memo = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "ledger entries"
        constraints = [
            # The signup bonus is credited at most once per user, even when two
            # verifications race: the second insert fails.
            models.UniqueConstraint(
                fields=["user"],
                condition=Q(kind="signup_bonus"),
                name="orders_ledger_one_signup_bonus",
            ),
            # A fill writes each (asset, kind) once per order: a redelivered task
            # can never book the same trade twice.
            models.UniqueConstraint(
                fields=["order", "asset", "kind"],
                condition=Q(order__isnull=False),
                name="orders_ledger_once_per_order",
            ),
        ]
        indexes = [
            models.Index(fields=["user", "-created_at", "-id"], name="orders_ledger_user_created"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} {self.asset}"
