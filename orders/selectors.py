"""Reads for wallets, the ledger and orders."""

from decimal import ROUND_HALF_EVEN, Decimal

from django.db.models import QuerySet, Sum

from accounts.models import User
from markets.selectors import prices_snapshot
from orders.models import USD, Balance, LedgerEntry, Order

VALUE_QUANTUM = Decimal("0.00000001")


def _sums(rows: QuerySet, *, user: User | None, asset: str, amount: str) -> dict:
    """``{(user_id, asset): sum of amount}`` over ``rows``, for one user or all."""
    if user is not None:
        rows = rows.filter(user=user)
    return {
        (row["user_id"], row[asset]): row["total"]
        for row in rows.values("user_id", asset).annotate(total=Sum(amount))
    }


def _balance_mismatches(
    expected: dict, *, user: User | None, field: str, names: tuple[str, str], missing: int | None
) -> list[dict]:
    """Each balance whose ``field`` differs from ``expected``, then each expected non-zero
    sum with no balance row at all (its balance shown as ``missing``)."""
    balances = Balance.objects.all() if user is None else Balance.objects.filter(user=user)
    mismatches = []
    for b in balances.only("user_id", "asset", "available", "locked"):
        want, have = expected.pop((b.user_id, b.asset), Decimal(0)), getattr(b, field)
        if want != have:
            mismatches.append(
                {"user_id": b.user_id, "asset": b.asset, names[0]: want, names[1]: have}
            )
    mismatches.extend(
        {"user_id": user_id, "asset": asset, names[0]: total, names[1]: missing}
        for (user_id, asset), total in expected.items()
        if total
    )
    return mismatches


def ledger_mismatches(*, user: User | None = None) -> list[dict]:
    """Every (user, asset) whose ledger does not sum to ``available + locked``.

    The invariant of the double-entry wallet; an empty list means it holds.
    """
    ledger = _sums(LedgerEntry.objects.all(), user=user, asset="asset", amount="amount")
    return _balance_mismatches(
        ledger, user=user, field="total", names=("ledger", "balance"), missing=0
    )


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
    active = Order.objects.filter(status__in=Order.ACTIVE_STATUSES)
    reserved = _sums(active, user=user, asset="reserved_asset", amount="reserved_amount")
    return _balance_mismatches(
        reserved, user=user, field="locked", names=("reserved", "locked"), missing=None
    )
