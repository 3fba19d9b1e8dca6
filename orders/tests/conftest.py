import pytest

from orders.selectors import ledger_mismatches, reservation_mismatches


@pytest.fixture(autouse=True)
def _ledger_invariant(request):
    """After every scenario that touched the database, the ledger sums to the balances
    and every locked amount is exactly what active orders reserve."""
    yield
    if {"db", "transactional_db"} & set(request.fixturenames):
        assert ledger_mismatches() == []
        assert reservation_mismatches() == []
