"""Reads for wallets, the ledger and orders."""

from decimal import Decimal

from django.db.models import Sum

from orders.models import Balance, LedgerEntry


def ledger_mismatches(*, user=None) -> list[dict]:
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
