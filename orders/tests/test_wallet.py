import threading
from decimal import Decimal

import pytest
from django.db import connection
from django.test import override_settings

from cryptovault.exceptions import ApplicationError
from orders.models import USD, Balance, LedgerEntry
from orders.selectors import ledger_mismatches, reservation_mismatches
from orders.services import wallet_adjust, wallet_credit_signup_bonus
from orders.tests.factories import user_create


@pytest.mark.django_db
@override_settings(SIGNUP_BONUS_USD="10000")
def test_signup_bonus_is_credited_once():
    user = user_create()
    assert wallet_credit_signup_bonus(user=user) is True
    assert wallet_credit_signup_bonus(user=user) is False
    balance = Balance.objects.get(user=user, asset=USD)
    assert balance.available == Decimal("10000")
    entry = LedgerEntry.objects.get(user=user)
    assert entry.kind == "signup_bonus"
    assert entry.balance_after == Decimal("10000")


@pytest.mark.django_db(transaction=True)
def test_signup_bonus_racing_calls_credit_once():
    user = user_create()
    results = []
    barrier = threading.Barrier(8)

    def verify():
        barrier.wait()
        try:
            results.append(wallet_credit_signup_bonus(user=user))
        finally:
            connection.close()

    threads = [threading.Thread(target=verify) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert LedgerEntry.objects.filter(user=user, kind="signup_bonus").count() == 1


@pytest.mark.django_db
def test_wallet_adjust_credits_and_debits_but_never_below_zero():
    user = user_create()
    wallet_adjust(user=user, asset="USD", amount=Decimal("100.5"), reason="goodwill")
    wallet_adjust(user=user, asset="usd", amount=Decimal("-40"), reason="correction")
    with pytest.raises(ApplicationError) as exc:
        wallet_adjust(user=user, asset="usd", amount=Decimal("-60.51"), reason="too much")
    assert exc.value.code == "insufficient_funds"
    assert Balance.objects.get(user=user, asset=USD).available == Decimal("60.5")
    kinds = list(
        LedgerEntry.objects.filter(user=user).order_by("id").values_list("kind", flat=True)
    )
    assert kinds == ["operator_credit", "operator_debit"]


@pytest.mark.django_db
@pytest.mark.parametrize("amount", ["0", "NaN", "Infinity"])
def test_wallet_adjust_refuses_meaningless_amounts(amount):
    user = user_create()
    with pytest.raises(ApplicationError):
        wallet_adjust(user=user, asset="usd", amount=Decimal(amount), reason="x")


@pytest.mark.django_db
@pytest.mark.parametrize("asset", ["", "dollars", "not-a-coin"])
def test_wallet_adjust_refuses_unknown_assets(asset):
    user = user_create()
    with pytest.raises(ApplicationError) as exc:
        wallet_adjust(user=user, asset=asset, amount=Decimal("1"), reason="x")
    assert exc.value.code == "unknown_asset"
    assert not Balance.objects.filter(user=user).exists()


@pytest.mark.django_db
def test_invariant_checks_name_what_breaks_them():
    user = user_create(usd="100")
    user_create(usd="5")  # another user's books stay out of user's mismatches
    mine = Balance.objects.filter(user=user, asset=USD)

    mine.update(available=Decimal("90"), locked=Decimal("10"))  # same total, nothing reserved
    assert ledger_mismatches() == []
    assert reservation_mismatches() == [
        {"user_id": user.pk, "asset": USD, "reserved": Decimal(0), "locked": Decimal("10")}
    ]
    mine.update(locked=Decimal(0))
    assert ledger_mismatches() == [
        {"user_id": user.pk, "asset": USD, "ledger": Decimal("100"), "balance": Decimal("90")}
    ]
    mine.delete()
    assert ledger_mismatches(user=user) == [
        {"user_id": user.pk, "asset": USD, "ledger": Decimal("100"), "balance": 0}
    ]
    Balance.objects.create(user=user, asset=USD, available=Decimal("100"))
    assert ledger_mismatches() == reservation_mismatches() == []
