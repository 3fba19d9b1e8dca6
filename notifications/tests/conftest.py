from decimal import Decimal

import pytest

from markets import services as market_services
from notifications.tests.ws import COINS


@pytest.fixture
def tracked(db):
    """The tracked coins of the price-stream tests, with a first recorded price each."""
    market_services.coins_seed(coin_ids=COINS)
    market_services.prices_record(
        prices={
            "bitcoin": Decimal("65000.12"),
            "ethereum": Decimal("3000"),
            "solana": Decimal("150"),
        }
    )
