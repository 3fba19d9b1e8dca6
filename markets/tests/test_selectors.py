from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
from django.utils import timezone

from markets.price_store import prices_snapshot_bytes
from markets.selectors import (
    PriceUnavailable,
    price_get_fresh,
    prices_age_seconds,
    prices_snapshot,
)
from markets.services import prices_forget, prices_record


# An empty price store is refilled from PostgreSQL (none recorded here).
@pytest.mark.django_db
def test_snapshot_is_empty_and_stale_before_any_write():
    assert prices_snapshot() == {"as_of": None, "source": None, "stale": True, "prices": {}}
    assert prices_age_seconds() is None


def test_prices_record_then_snapshot_shape():
    as_of = timezone.now()
    prices_record(
        prices={"bitcoin": Decimal("65000.12"), "dogecoin": Decimal("0.00000123")},
        as_of=as_of,
        extra={"bitcoin": {"change_24h_pct": Decimal("-1.5")}},
    )
    snapshot = prices_snapshot()
    assert snapshot == {
        "as_of": as_of.isoformat().replace("+00:00", "Z"),
        "source": "coingecko",
        "stale": False,
        "prices": {
            "bitcoin": {"usd": "65000.12", "change_24h_pct": "-1.5"},
            "dogecoin": {"usd": "0.00000123", "change_24h_pct": None},
        },
    }
    assert prices_age_seconds() < 5
    # The stored bytes are what GET /prices serves.
    assert orjson.loads(prices_snapshot_bytes()) == snapshot


def test_writes_merge_per_coin_and_keep_last_good_prices():
    prices_record(prices={"bitcoin": Decimal("1")})
    prices_record(prices={"ethereum": Decimal("2")}, source="simulated")
    snapshot = prices_snapshot()
    assert snapshot["source"] == "simulated"
    assert set(snapshot["prices"]) == {"bitcoin", "ethereum"}
    assert price_get_fresh(coin_id="bitcoin").source == "coingecko"


def test_price_get_fresh_returns_quote():
    as_of = timezone.now()
    prices_record(prices={"bitcoin": Decimal("65000.12")}, as_of=as_of)
    quote = price_get_fresh(coin_id="bitcoin")
    assert quote.price == Decimal("65000.12")
    assert abs((quote.as_of - as_of).total_seconds()) < 0.001
    assert quote.source == "coingecko"


@pytest.mark.parametrize(
    ("source", "ahead"), [("simulated", 0), ("coingecko", 3600)], ids=["simulated", "future"]
)
def test_simulated_or_future_prices_are_shown_but_never_fresh(source, ahead):
    as_of = timezone.now() + timedelta(seconds=ahead)
    prices_record(prices={"bitcoin": Decimal("65000")}, as_of=as_of, source=source)
    with pytest.raises(PriceUnavailable) as info:
        price_get_fresh(coin_id="bitcoin")
    assert info.value.code == "price_stale"
    snapshot = prices_snapshot()
    assert (snapshot["source"], snapshot["prices"]["bitcoin"]["usd"]) == (source, "65000")
    assert snapshot["stale"] is (ahead > 0)


# An empty price store is refilled from PostgreSQL (none recorded here).
@pytest.mark.django_db
def test_price_get_fresh_unknown_coin():
    with pytest.raises(PriceUnavailable) as info:
        price_get_fresh(coin_id="bitcoin")
    assert info.value.code == "price_unavailable"
    assert info.value.status_code == 503


def test_old_prices_are_stale(settings):
    settings.PRICE_STALE_SECONDS = 60
    prices_record(
        prices={"bitcoin": Decimal("65000")}, as_of=timezone.now() - timedelta(seconds=61)
    )
    with pytest.raises(PriceUnavailable) as info:
        price_get_fresh(coin_id="bitcoin")
    assert info.value.code == "price_stale"
    snapshot = prices_snapshot()
    assert snapshot["stale"] is True
    assert snapshot["prices"]["bitcoin"]["usd"] == "65000"
    assert prices_age_seconds() >= 61


def test_forget_drops_a_coin_from_the_snapshot():
    prices_record(prices={"bitcoin": Decimal("1"), "tron": Decimal("0.2")})
    prices_forget(coin_ids=["tron"])
    assert set(prices_snapshot()["prices"]) == {"bitcoin"}
    with pytest.raises(PriceUnavailable):
        price_get_fresh(coin_id="tron")
