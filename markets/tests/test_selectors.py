import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import httpx
import orjson
import pytest
import respx
from django.utils import timezone

from markets.models import Coin
from markets.price_store import prices_snapshot_bytes
from markets.selectors import (
    PriceUnavailable,
    price_get_fresh,
    prices_age_seconds,
    prices_snapshot,
)
from markets.services import prices_forget, prices_record
from markets.upstream import coin_details, coin_history, history_fetch_days


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


# --- upstream-backed reads: single-flight, days bucketing (respx-mocked CoinGecko) --------
CG = "https://api.coingecko.com/api/v3"
BITCOIN_DETAILS = {
    "id": "bitcoin",
    "symbol": "btc",
    "name": "Bitcoin",
    "description": {"en": "Bitcoin is the first successful internet money."},
    "links": {"homepage": ["http://www.bitcoin.org"]},
    "market_data": {"current_price": {"usd": 70187}, "max_supply": 21000000},
}


@pytest.fixture
def coingecko(settings):
    settings.MARKET_DATA_URL = CG
    settings.MARKET_DATA_RETRIES = 0
    settings.COINGECKO_API_KEY = ""
    with respx.mock(assert_all_called=False) as mock:
        yield mock


# An empty price store is refilled from PostgreSQL (none recorded here).
@pytest.mark.django_db
def test_concurrent_detail_reads_make_one_upstream_call(coingecko):
    def slow_details(request):
        time.sleep(0.5)  # long enough for every thread to arrive while it is in flight
        return httpx.Response(200, json=BITCOIN_DETAILS)

    route = coingecko.get(f"{CG}/coins/bitcoin").mock(side_effect=slow_details)
    coin = Coin(id="bitcoin", symbol="btc", name="Bitcoin")
    threads = 8
    start = threading.Barrier(threads)

    def read(_):
        start.wait()
        return coin_details(coin=coin)["description"]

    with ThreadPoolExecutor(threads) as pool:
        descriptions = list(pool.map(read, range(threads)))
    assert route.call_count == 1
    assert descriptions == [BITCOIN_DETAILS["description"]["en"]] * threads


# An empty price store is refilled from PostgreSQL (none recorded here).
@pytest.mark.django_db
def test_stale_copy_serves_while_the_source_cannot(coingecko, settings):
    route = coingecko.get(f"{CG}/coins/bitcoin").mock(
        return_value=httpx.Response(200, json=BITCOIN_DETAILS)
    )
    coin = Coin(id="bitcoin", symbol="btc", name="Bitcoin")
    assert coin_details(coin=coin)["description"]
    settings.COIN_DETAILS_CACHE_SECONDS = 0  # the copy is past its freshness now
    route.mock(return_value=httpx.Response(500))
    assert coin_details(coin=coin)["description"] == BITCOIN_DETAILS["description"]["en"]
    assert route.call_count == 2  # it did try


def _hourly_chart(days: int) -> dict:
    end = int(time.time()) * 1000
    return {"prices": [[end - h * 3_600_000, 60000 + h] for h in range(days * 24, -1, -1)]}


@pytest.mark.parametrize(("days", "fetched"), [(1, "1"), (2, "90"), (90, "90"), (91, "365")])
def test_history_fetch_days_follow_coingecko_granularity(days, fetched):
    assert str(history_fetch_days(days)) == fetched


@pytest.mark.django_db
def test_history_days_share_one_upstream_key(coingecko):
    route = coingecko.get(
        f"{CG}/coins/bitcoin/market_chart", params={"vs_currency": "usd", "days": "90"}
    ).mock(return_value=httpx.Response(200, json=_hourly_chart(90)))
    three = coin_history(coin_id="bitcoin", days=3)
    seven = coin_history(coin_id="bitcoin", days=7)
    assert route.call_count == 1  # days=3 and days=7 are one cache key: the 90-day fetch
    assert len(three) == 3 * 24 + 1 and len(seven) == 7 * 24 + 1  # sliced, hourly
    assert three == seven[-len(three) :]
    assert seven[-1] == [seven[-1][0], "60000"]


def _record_real_prices(*, as_of, prices: dict[str, str]) -> None:
    """What a successful poll leaves behind in PostgreSQL and Redis."""
    from markets.services import latest_prices_record
    from markets.sources import MarketQuote

    Coin.objects.bulk_create(
        [Coin(id=coin_id, symbol=coin_id[:3], name=coin_id) for coin_id in prices]
    )
    quotes = [
        MarketQuote(coin_id, coin_id[:3], coin_id, Decimal(price), Decimal("1.5"), None, None, None)
        for coin_id, price in prices.items()
    ]
    latest_prices_record(as_of=as_of, source="coingecko", quotes=quotes)
    prices_record(prices={q.id: q.price for q in quotes}, as_of=as_of)


def _redis_restarted_empty() -> None:
    from django_redis import get_redis_connection

    get_redis_connection("default").flushdb()


@pytest.mark.django_db
def test_an_emptied_price_store_is_refilled_from_postgres_with_the_true_as_of():
    as_of = timezone.now() - timedelta(seconds=5)
    _record_real_prices(as_of=as_of, prices={"bitcoin": "65000.5", "ethereum": "3000"})
    _redis_restarted_empty()

    quote = price_get_fresh(coin_id="bitcoin")
    assert (quote.price, quote.as_of, quote.source) == (Decimal("65000.5"), as_of, "coingecko")
    snapshot = prices_snapshot()
    assert snapshot["stale"] is False
    assert snapshot["as_of"] == as_of.isoformat().replace("+00:00", "Z")
    assert snapshot["prices"]["ethereum"] == {"usd": "3000", "change_24h_pct": "1.5"}


@pytest.mark.django_db
def test_a_refilled_price_that_was_already_old_is_still_stale(settings):
    as_of = timezone.now() - timedelta(seconds=settings.PRICE_STALE_SECONDS + 5)
    _record_real_prices(as_of=as_of, prices={"bitcoin": "65000"})
    _redis_restarted_empty()

    with pytest.raises(PriceUnavailable) as raised:
        price_get_fresh(coin_id="bitcoin")
    assert raised.value.code == "price_stale"
    assert prices_snapshot()["stale"] is True


@pytest.mark.django_db
def test_a_refill_never_overwrites_a_newer_poll():
    old = timezone.now() - timedelta(seconds=20)
    _record_real_prices(as_of=old, prices={"bitcoin": "60000"})
    _redis_restarted_empty()
    prices_record(prices={"bitcoin": Decimal("61000")})  # a poll landed first

    assert price_get_fresh(coin_id="bitcoin").price == Decimal("61000")
