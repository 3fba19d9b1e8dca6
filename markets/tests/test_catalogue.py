from decimal import Decimal

from django.conf import settings

from markets.catalogue import COINS, DEFAULT_TRACKED_COINS, VENUES, coin_names
from markets.models import Coin
from markets.services import coins_seed
from markets.simulator.model import STABLECOINS, MarketModel


def test_a_catalogue_coin_is_named_and_an_unknown_one_is_made_up_from_its_id():
    assert coin_names("binancecoin") == ("bnb", "BNB")
    assert coin_names("wrapped-bitcoin") == ("wrapped-bitcoin", "Wrapped Bitcoin")


def test_the_defaults_come_from_the_catalogue():
    assert settings.TRACKED_COINS == DEFAULT_TRACKED_COINS
    assert len(DEFAULT_TRACKED_COINS) == 10
    assert set(DEFAULT_TRACKED_COINS) <= set(COINS)
    assert settings.ARBITRAGE_VENUE_FEES["kraken"] == Decimal("0.0026")
    assert set(settings.ARBITRAGE_VENUE_FEES) == set(VENUES)


def test_seeded_rows_carry_the_catalogue_names(db):
    coins_seed(coin_ids=["tron", "near-ish"])
    assert Coin.objects.get(pk="tron").name == "TRON"
    assert Coin.objects.get(pk="near-ish").symbol == "near-ish"


def test_the_simulator_quotes_every_catalogue_coin_and_venue():
    model = MarketModel(seed=1)
    assert set(model.coins) == set(COINS)
    assert model.coins["bitcoin"].symbol == "btc"
    assert model.venues["gdax"] == ("Coinbase Exchange", 0.004)
    assert STABLECOINS == {"tether", "usd-coin"}
