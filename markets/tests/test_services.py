"""Polling into the real Redis and PostgreSQL, talking to the simulator over HTTP."""

from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
from django.utils import timezone
from django_redis import get_redis_connection

from markets.models import Coin, PricePoint
from markets.selectors import (
    PriceUnavailable,
    price_get_fresh,
    price_quotes,
    prices_snapshot,
)
from markets.services import (
    coin_set_tracked,
    coins_seed,
    history_append,
    history_prune,
    prices_poll,
    prices_record,
)
from markets.sources import BACKOFF_UNTIL_KEY


def test_poll_records_prices_history_and_names(simulator, tracked):
    simulator.model.set_price("bitcoin", 65000.25)
    Coin.objects.filter(pk="dogecoin").update(name="placeholder")
    result = prices_poll()
    assert result.source == "coingecko"
    assert sorted(result.changed) == ["bitcoin", "dogecoin", "ethereum"]
    snapshot = prices_snapshot()
    assert snapshot["source"] == "coingecko"
    assert snapshot["stale"] is False
    assert snapshot["prices"]["bitcoin"]["usd"] == "65000.25"
    assert Decimal(snapshot["prices"]["ethereum"]["change_24h_pct"])
    assert price_get_fresh(coin_id="bitcoin").price == Decimal("65000.25")
    assert PricePoint.objects.filter(coin_id="bitcoin").get().price == Decimal("65000.25")
    assert Coin.objects.get(pk="dogecoin").name == "Dogecoin"
    quote = price_quotes()["bitcoin"]
    assert int(Decimal(quote["market_cap"])) > 0


def test_second_poll_reports_only_changed_coins(simulator, tracked):
    prices_poll()
    simulator.model.set_price("ethereum", 3333)
    result = prices_poll()
    assert result.changed == ["ethereum"]
    # Same history interval: still one row per coin.
    assert PricePoint.objects.filter(coin_id="ethereum").count() == 1


def test_untracked_coins_are_not_polled(simulator, tracked):
    coin_set_tracked(coin=Coin.objects.get(pk="dogecoin"), tracked=False)
    prices_poll()
    assert set(prices_snapshot()["prices"]) == {"bitcoin", "ethereum"}


def test_untracking_drops_the_price_at_once(simulator, tracked):
    prices_poll()
    coin = coin_set_tracked(coin=Coin.objects.get(pk="ethereum"), tracked=False)
    assert coin.tracked is False
    assert set(prices_snapshot()["prices"]) == {"bitcoin", "dogecoin"}
    coin_set_tracked(coin=coin, tracked=True)
    prices_poll()
    assert "ethereum" in prices_snapshot()["prices"]


@pytest.mark.parametrize("mode", ["error", "rate_limit", "timeout", "garbage"])
def test_faults_keep_the_last_good_prices_then_recover(simulator, tracked, mode):
    simulator.model.set_price("bitcoin", 65000)
    prices_poll()
    simulator.fault = mode
    simulator.rate_limit_reset_seconds = 1
    assert prices_poll() is None  # fresh real prices still serve: nothing made up
    snapshot = prices_snapshot()
    assert snapshot["source"] == "coingecko"
    assert snapshot["prices"]["bitcoin"]["usd"] == "65000"
    simulator.fault = "none"
    simulator.model.set_price("bitcoin", 64000)
    if mode == "rate_limit":
        get_redis_connection("default").delete(BACKOFF_UNTIL_KEY)  # the announced reset passed
    assert prices_poll().source == "coingecko"
    assert prices_snapshot()["prices"]["bitcoin"]["usd"] == "64000"


def test_fallback_simulated_when_no_prices(simulator, tracked, settings):
    settings.MARKET_DATA_FALLBACK = "simulated"
    simulator.fault = "error"
    result = prices_poll()
    assert result.source == "simulated"
    snapshot = prices_snapshot()
    assert snapshot["source"] == "simulated"
    assert set(snapshot["prices"]) == {"bitcoin", "dogecoin", "ethereum"}
    with pytest.raises(PriceUnavailable):  # shown, never traded on
        price_get_fresh(coin_id="bitcoin")
    assert not PricePoint.objects.exists()  # made-up prices are not history


def test_fallback_continues_from_stale_last_good_prices(simulator, tracked, settings):
    settings.MARKET_DATA_FALLBACK = "simulated"
    prices_record(
        prices={"bitcoin": Decimal("12345")}, as_of=timezone.now() - timedelta(seconds=120)
    )
    simulator.fault = "timeout"
    assert prices_poll().source == "simulated"
    price = Decimal(prices_snapshot()["prices"]["bitcoin"]["usd"])
    assert abs(price - 12345) / 12345 < Decimal("0.01")  # anchored, not a jump to 65000
    simulator.fault = "none"
    assert prices_poll().source == "coingecko"


def test_no_fallback_leaves_prices_stale(simulator, tracked, settings):
    settings.MARKET_DATA_FALLBACK = "none"
    simulator.fault = "error"
    assert prices_poll() is None
    assert prices_snapshot()["prices"] == {}


def test_poll_without_tracked_coins_calls_nothing(simulator, db):
    simulator.fault = "error"
    assert prices_poll() is None


def test_history_append_is_idempotent_per_interval(db, settings):
    settings.PRICE_HISTORY_INTERVAL_SECONDS = 60
    coins_seed(coin_ids=["bitcoin"])
    now = timezone.now().replace(second=10)
    assert history_append(as_of=now, prices={"bitcoin": Decimal("1")}) == 1
    history_append(as_of=now + timedelta(seconds=5), prices={"bitcoin": Decimal("2")})
    history_append(as_of=now + timedelta(seconds=60), prices={"bitcoin": Decimal("3")})
    assert list(PricePoint.objects.values_list("price", flat=True)) == [Decimal(1), Decimal(3)]


def test_history_prune(db):
    coins_seed(coin_ids=["bitcoin"])
    history_append(as_of=timezone.now() - timedelta(days=400), prices={"bitcoin": Decimal("1")})
    history_append(as_of=timezone.now(), prices={"bitcoin": Decimal("2")})
    assert history_prune() == 1
    assert PricePoint.objects.get().price == Decimal("2")


def test_poll_publishes_a_tick(simulator, tracked):
    from markets.realtime import prices_channel

    pubsub = get_redis_connection("default").pubsub()
    pubsub.subscribe(prices_channel())
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    simulator.model.set_price("bitcoin", 65000)
    prices_poll()
    message = pubsub.get_message(timeout=2)
    pubsub.close()
    frame = orjson.loads(message["data"])
    assert frame["type"] == "tick"
    assert frame["as_of"] == prices_snapshot()["as_of"]
    assert frame["prices"]["bitcoin"] == {
        "usd": "65000",
        "change_24h_pct": frame["prices"]["bitcoin"]["change_24h_pct"],
    }


def test_fallback_walks_on_from_whatever_was_recorded_last(simulator, tracked, settings):
    # Worker processes share nothing but Redis: each simulated step starts from the
    # latest recorded prices, so processes taking turns continue one series.
    settings.MARKET_DATA_FALLBACK = "simulated"
    simulator.fault = "error"
    prices_record(
        prices={"bitcoin": Decimal("50000")},
        source="simulated",
        as_of=timezone.now() - timedelta(seconds=10),
        extra={"bitcoin": {"change_24h_pct": Decimal("2"), "market_cap": Decimal("1000000")}},
    )
    prices_poll()
    quote = price_quotes()["bitcoin"]
    price = Decimal(quote["usd"])
    assert abs(price - 50000) / 50000 < Decimal("0.01")
    # The 24 h open stays where the recorded +2 % put it, so the change moves with the
    # price (a random step: its size grows with the time the test took, its relation not).
    expected_change = ((Decimal("1.02") * price / 50000) - 1) * 100
    assert abs(Decimal(quote["change_24h_pct"]) - expected_change) < Decimal("0.001")
    assert Decimal(quote["market_cap"]) == (Decimal(1000000) * price / 50000).quantize(Decimal(1))
