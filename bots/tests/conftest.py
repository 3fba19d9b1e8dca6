from decimal import Decimal

import pytest
from django.utils import timezone

from markets.services import coins_seed, prices_record

PRICES = {"bitcoin": Decimal("65000"), "ethereum": Decimal("3000")}


@pytest.fixture
def priced(db):
    """BTCUSD and ETHUSD with a real, current price (bitcoin +2.5 % over 24 h)."""
    coins_seed(coin_ids=list(PRICES))
    prices_record(
        prices=PRICES,
        as_of=timezone.now(),
        extra={"bitcoin": {"change_24h_pct": Decimal("2.5"), "volume_24h": Decimal("650000000")}},
    )
