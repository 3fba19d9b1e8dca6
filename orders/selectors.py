"""Reads for wallets, the ledger and orders."""

from decimal import ROUND_HALF_EVEN, Decimal

from django.db.models import QuerySet, Sum

from accounts.models import User
from markets.selectors import prices_snapshot
from orders.models import USD, Balance, LedgerEntry, Order

VALUE_QUANTUM = Decimal("0.00000001")


def ledger_mismatches(*, user: User | None = None) -> list[dict]:
    """Every (user, asset) whose ledger does not sum to ``available + locked``.

    The invariant of the double-entry wallet; an empty list means it holds.
    """
    sums = LedgerEntry.objects.all()
    balances = Balance.objects.all()
    if user is not None:
        sums = sums.filter(user=user)
        balances = balances.filter(user=user)
    ledger = {
        (row["user_id"], row["asset"]): row["total"]
        for row in sums.values("user_id", "asset").annotate(total=Sum("amount"))
    }
    mismatches = []
    for b in balances.only("user_id", "asset", "available", "locked"):
        expected = ledger.pop((b.user_id, b.asset), Decimal(0))
        if expected != b.available + b.locked:
            mismatches.append(
                {"user_id": b.user_id, "asset": b.asset, "ledger": expected, "balance": b.total}
            )
    # Ledger entries without any balance row.
    for (user_id, asset), total in ledger.items():
        if total != 0:
            mismatches.append({"user_id": user_id, "asset": asset, "ledger": total, "balance": 0})
    return mismatches


def order_list(
    *, user: User, status: str | None = None, coin: str | None = None
) -> QuerySet[Order]:
    orders = Order.objects.filter(user=user)
    if status:
        orders = orders.filter(status=status)
    if coin:
        orders = orders.filter(coin_id=coin)
    return orders


def order_get(*, user: User, order_id: int) -> Order | None:
    """The user's order, or None (another user's order is as absent as a missing one)."""
    return Order.objects.filter(user=user, pk=order_id).first()


def ledger_entry_list(*, user: User) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(user=user)


def portfolio_get(*, user: User) -> dict:
    """Balances valued at the latest cached prices (usd at 1).

    A coin without a known price has ``price``/``value_usd`` null and is left out
    of the total rather than counted as zero silently.
    """
    prices = prices_snapshot()["prices"]
    balances = list(Balance.objects.filter(user=user))
    if not any(b.asset == USD for b in balances):
        balances.append(Balance(user=user, asset=USD))
    # usd first, then coins by name.
    balances.sort(key=lambda b: (b.asset != USD, b.asset))
    rows, total = [], Decimal(0)
    for balance in balances:
        price: Decimal | None
        if balance.asset == USD:
            price = Decimal(1)
        else:
            quote = prices.get(balance.asset)
            price = Decimal(quote["usd"]) if quote and quote.get("usd") is not None else None
        value = None
        if price is not None:
            value = (balance.total * price).quantize(VALUE_QUANTUM, rounding=ROUND_HALF_EVEN)
            total += value
        rows.append(
            {
                "asset": balance.asset,
                "available": balance.available,
                "locked": balance.locked,
                "price": price,
                "value_usd": value,
            }
        )
    return {"balances": rows, "total_value_usd": total}


def reservation_mismatches(*, user: User | None = None) -> list[dict]:
    """Every balance whose ``locked`` differs from what its active orders reserve.

    The second invariant: funds are locked only for pending/open orders, exactly.
    """
    orders = Order.objects.filter(status__in=Order.ACTIVE_STATUSES)
    balances = Balance.objects.all()
    if user is not None:
        orders = orders.filter(user=user)
        balances = balances.filter(user=user)
    reserved = {
        (row["user_id"], row["reserved_asset"]): row["total"]
        for row in orders.values("user_id", "reserved_asset").annotate(total=Sum("reserved_amount"))
    }
    mismatches = []
    for b in balances.only("user_id", "asset", "locked"):
        expected = reserved.pop((b.user_id, b.asset), Decimal(0))
        if expected != b.locked:
            mismatches.append(
                {"user_id": b.user_id, "asset": b.asset, "reserved": expected, "locked": b.locked}
            )
    mismatches.extend(
        {"user_id": user_id, "asset": asset, "reserved": total, "locked": None}
        for (user_id, asset), total in reserved.items()
        if total
    )
    return mismatches
