"""Reads of CoinGecko through the shared copy (markets.upstream): single flight, a stale
copy while the source fails, history days bucketed to CoinGecko's granularity (respx)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import respx

from markets.models import Coin
from markets.upstream import coin_details, coin_history, history_fetch_days

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
