import pytest

from orders.selectors import ledger_mismatches


@pytest.fixture(autouse=True)
def _ledger_invariant(request):
    """After every scenario that touched the database, the ledger sums to the balances."""
    yield
    if {"db", "transactional_db"} & set(request.fixturenames):
        assert ledger_mismatches() == []
