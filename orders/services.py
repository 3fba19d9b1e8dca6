"""Writes for wallets, the ledger and orders.

Money rules: every change of a balance's total writes a ledger entry in the same
transaction; balance rows are locked with ``select_for_update`` in primary-key
order (so two transactions touching the same rows can never deadlock); the
database refuses negative balances (``CHECK >= 0``) as a last line of defence.
"""

from decimal import ROUND_DOWN, Decimal

from django.conf import settings
from django.db import IntegrityError, transaction

from accounts.models import User
from cryptovault.exceptions import ApplicationError
from orders.models import USD, Balance, LedgerEntry

# Quantities and usd amounts are kept to 8 decimal places (a satoshi, and far
# below a cent), so every ledger amount is exact in the database.
QUANTUM = Decimal("0.00000001")


def quantize_down(value: Decimal) -> Decimal:
    return value.quantize(QUANTUM, rounding=ROUND_DOWN)


def balances_lock(*, user: User, assets: list[str]) -> dict[str, Balance]:
    """Lock (creating if missing) the user's balance rows for ``assets``.

    Must run inside a transaction. Rows are locked in primary-key order.
    """
    wanted = sorted(set(assets))
    locked = {
        b.asset: b
        for b in Balance.objects.select_for_update()
        .filter(user=user, asset__in=wanted)
        .order_by("pk")
    }
    missing = [a for a in wanted if a not in locked]
    if missing:
        # Concurrent creators are harmless: the unique (user, asset) makes the
        # losers no-ops; then lock everything again in pk order.
        Balance.objects.bulk_create(
            [Balance(user=user, asset=a) for a in missing], ignore_conflicts=True
        )
        locked = {
            b.asset: b
            for b in Balance.objects.select_for_update()
            .filter(user=user, asset__in=wanted)
            .order_by("pk")
        }
    return locked


def ledger_post(
    *,
    balance: Balance,
    kind: str,
    amount: Decimal,
    order=None,
    memo: str = "",
    from_locked: bool = False,
) -> LedgerEntry:
    """Change ``balance`` by ``amount`` (signed) and record it. Balance must be locked.

    Credits go to ``available``; debits come out of ``available`` unless
    ``from_locked`` (a fill consuming its reservation). Callers save the balance.
    """
    if from_locked:
        balance.locked += amount
    else:
        balance.available += amount
    if balance.available < 0 or balance.locked < 0:
        raise ApplicationError("Insufficient funds.", code="insufficient_funds")
    return LedgerEntry(
        user_id=balance.user_id,
        asset=balance.asset,
        kind=kind,
        amount=amount,
        balance_after=balance.available + balance.locked,
        order=order,
        memo=memo,
    )


def _balance_save(balance: Balance) -> None:
    balance.save(update_fields=["available", "locked", "updated_at"])


def wallet_credit_signup_bonus(*, user: User) -> bool:
    """Credit ``SIGNUP_BONUS_USD`` once per user. Returns whether this call credited.

    Safe under concurrency: the usd balance row lock serialises racing calls, and a
    partial unique index on the ledger (one ``signup_bonus`` per user) backs it up.
    """
    amount = quantize_down(Decimal(str(settings.SIGNUP_BONUS_USD)))
    try:
        with transaction.atomic():
            balance = balances_lock(user=user, assets=[USD])[USD]
            if LedgerEntry.objects.filter(user=user, kind=LedgerEntry.Kind.SIGNUP_BONUS).exists():
                return False
            entry = ledger_post(
                balance=balance,
                kind=LedgerEntry.Kind.SIGNUP_BONUS,
                amount=amount,
                memo="Signup bonus",
            )
            entry.save()
            _balance_save(balance)
    except IntegrityError:
        return False
    return True


@transaction.atomic
def wallet_adjust(
    *, user: User, asset: str, amount: Decimal, actor=None, reason: str
) -> LedgerEntry:
    """Operator credit (amount > 0) or debit (amount < 0) of ``asset``.

    A debit can only take what is available (never reserved funds, never below
    zero). The caller records the audit entry.
    """
    asset = asset.strip().lower()
    if not asset:
        raise ApplicationError("Asset is required.", code="invalid")
    if not amount.is_finite() or amount == 0:
        raise ApplicationError("Amount must be a non-zero number.", code="invalid")
    amount = quantize_down(amount) if amount > 0 else -quantize_down(-amount)
    if amount == 0:
        raise ApplicationError("Amount is below the ledger precision.", code="invalid")
    balance = balances_lock(user=user, assets=[asset])[asset]
    kind = LedgerEntry.Kind.OPERATOR_CREDIT if amount > 0 else LedgerEntry.Kind.OPERATOR_DEBIT
    actor_label = getattr(actor, "email", None) or (str(actor) if actor else "system")
    entry = ledger_post(
        balance=balance, kind=kind, amount=amount, memo=f"{actor_label}: {reason}"[:255]
    )
    entry.save()
    _balance_save(balance)
    return entry
