"""The CoinGecko client: against the simulator over real HTTP (every fault mode), and
against respx-mocked CoinGecko payloads with the real field names."""

import time
from decimal import Decimal

import httpx
import pytest
import respx

from markets.sources import (
    DETAILS,
    POLL,
    CoinGeckoClient,
    SourceBudgetExhausted,
    SourceError,
    SourceNotFound,
    SourceRateLimited,
    budget_usage,
    rate_limit_wait,
    rate_limited_for,
)

CG = "https://api.coingecko.com/api/v3"

# From CoinGecko's OpenAPI description (components.schemas.CoinsMarkets.example).
BITCOIN_MARKET = {
    "id": "bitcoin",
    "symbol": "btc",
    "name": "Bitcoin",
    "image": "https://assets.coingecko.com/coins/images/1/large/bitcoin.png?1696501400",
    "current_price": 70187,
    "market_cap": 1381651251183,
    "market_cap_rank": 1,
    "fully_diluted_valuation": 1474623675796,
    "total_volume": 20154184933,
    "high_24h": 70215,
    "low_24h": 68060,
    "price_change_24h": 2126.88,
    "price_change_percentage_24h": 3.12502,
    "market_cap_change_24h": 44287678051,
    "market_cap_change_percentage_24h": 3.31157,
    "circulating_supply": 19675987,
    "total_supply": 21000000,
    "max_supply": 21000000,
    "ath": 73738,
    "ath_change_percentage": -4.77063,
    "ath_date": "2024-03-14T07:10:36.635Z",
    "atl": 67.81,
    "atl_change_percentage": 103455.83335,
    "atl_date": "2013-07-06T00:00:00.000Z",
    "roi": None,
    "last_updated": "2024-04-07T16:49:31.736Z",
}
BINANCE_TICKER = {
    "base": "BTC",
    "target": "USDT",
    "market": {"name": "Binance", "identifier": "binance", "has_trading_incentive": False},
    "last": 69476,
    "volume": 20242.03975,
    "converted_last": {"btc": 1.000205, "eth": 20.291404, "usd": 69498},
    "converted_volume": {"btc": 20249, "eth": 410802, "usd": 1406996874},
    "trust_score": "green",
    "bid_ask_spread_percentage": 0.010014,
    "timestamp": "2024-04-08T04:02:01+00:00",
    "last_traded_at": "2024-04-08T04:02:01+00:00",
    "last_fetch_at": "2024-04-08T04:03:00+00:00",
    "is_anomaly": False,
    "is_stale": False,
    "trade_url": "https://www.binance.com/en/trade/BTC_USDT?ref=37754157",
    "token_info_url": None,
    "coin_id": "bitcoin",
    "target_coin_id": "tether",
}


@pytest.fixture
def fast_client_settings(settings):
    settings.MARKET_DATA_URL = CG
    settings.MARKET_DATA_RETRIES = 2
    settings.MARKET_DATA_RETRY_BACKOFF = 0.001
    settings.COINGECKO_API_KEY = ""


# --- against the simulator -------------------------------------------------------------
def test_simulator_coins_markets(simulator):
    simulator.model.set_price("bitcoin", 65000.5)
    with CoinGeckoClient() as client:
        quotes = client.coins_markets(ids=["bitcoin", "ethereum"])
    by_id = {q.id: q for q in quotes}
    assert by_id["bitcoin"].price == Decimal("65000.5")
    assert by_id["bitcoin"].symbol == "btc"
    assert by_id["ethereum"].market_cap > 0
    assert by_id["ethereum"].last_updated.tzinfo is not None


def test_simulator_tickers_details_chart(simulator):
    simulator.model.set_price("bitcoin", 65000, {"kraken": 66000})
    with CoinGeckoClient() as client:
        venues = {v.exchange: v.price for v in client.tickers(coin_id="bitcoin")}
        details = client.coin_details(coin_id="bitcoin")
        chart = client.market_chart(coin_id="bitcoin", days=1)
        assert client.ping()
    assert venues["kraken"] == Decimal("66000")
    assert venues["binance"] == Decimal("65000")
    assert details["supply"]["max"] == "21000000"
    assert details["links"]["homepage"]
    assert len(chart) == 289
    assert chart[-1][1] == Decimal("65000")


def test_simulator_unknown_coin(simulator):
    with CoinGeckoClient() as client, pytest.raises(SourceNotFound):
        client.coin_details(coin_id="not-a-coin")


@pytest.mark.parametrize("mode", ["error", "timeout", "garbage"])
def test_simulator_faults_raise_source_error(simulator, mode):
    simulator.fault = mode
    started = time.monotonic()
    with CoinGeckoClient() as client, pytest.raises(SourceError):
        client.coins_markets(ids=["bitcoin"])
    # Bounded by the read timeout and retries, not by the simulator's hang.
    assert time.monotonic() - started < 1.5


def test_simulator_rate_limit_backs_off_everyone(simulator):
    simulator.fault = "rate_limit"
    simulator.rate_limit_reset_seconds = 30
    with CoinGeckoClient() as client:
        with pytest.raises(SourceRateLimited) as info:
            client.coins_markets(ids=["bitcoin"])
        assert 25 <= info.value.retry_after <= 31
        simulator.fault = "none"
        # Another client (another process) fails fast without spending a call.
        with CoinGeckoClient() as other, pytest.raises(SourceRateLimited):
            other.ping()
    assert rate_limited_for() > 25


# --- against respx-mocked CoinGecko -----------------------------------------------------
@respx.mock
def test_demo_key_header(fast_client_settings, settings):
    settings.COINGECKO_API_KEY = "CG-demo"
    route = respx.get(f"{CG}/coins/markets").respond(json=[BITCOIN_MARKET])
    with CoinGeckoClient() as client:
        [quote] = client.coins_markets(ids=["bitcoin"])
    request = route.calls.last.request
    assert request.headers["x-cg-demo-api-key"] == "CG-demo"
    assert request.url.params["ids"] == "bitcoin"
    assert request.url.params["vs_currency"] == "usd"
    assert quote.price == Decimal("70187")
    assert quote.change_24h_pct == Decimal("3.12502")
    assert quote.volume_24h == Decimal("20154184933")


@respx.mock
def test_pro_key_header(fast_client_settings, settings):
    settings.COINGECKO_API_KEY = "CG-pro"
    settings.COINGECKO_PLAN = "pro"
    route = respx.get(f"{CG}/ping").respond(json={"gecko_says": "(V3) To the Moon!"})
    with CoinGeckoClient() as client:
        client.ping()
    assert route.calls.last.request.headers["x-cg-pro-api-key"] == "CG-pro"
    assert "x-cg-demo-api-key" not in route.calls.last.request.headers


@respx.mock
def test_retries_5xx_then_succeeds(fast_client_settings):
    route = respx.get(f"{CG}/coins/markets").mock(
        side_effect=[httpx.Response(502), httpx.Response(503), httpx.Response(200, json=[])]
    )
    with CoinGeckoClient() as client:
        assert client.coins_markets(ids=["bitcoin"]) == []
    assert route.call_count == 3


@respx.mock
def test_gives_up_after_retries(fast_client_settings):
    route = respx.get(f"{CG}/coins/markets").mock(side_effect=httpx.ReadTimeout("slow"))
    with CoinGeckoClient() as client, pytest.raises(SourceError):
        client.coins_markets(ids=["bitcoin"])
    assert route.call_count == 3


@respx.mock
def test_4xx_is_not_retried(fast_client_settings):
    route = respx.get(f"{CG}/coins/markets").respond(401, json={"error": "bad key"})
    with CoinGeckoClient() as client, pytest.raises(SourceError):
        client.coins_markets(ids=["bitcoin"])
    assert route.call_count == 1


@respx.mock
def test_429_is_not_retried_and_sets_backoff(fast_client_settings):
    reset = int(time.time()) + 20
    route = respx.get(f"{CG}/coins/markets").respond(
        429,
        headers={
            "x-ratelimit-limit": "30",
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": str(reset),
        },
        json={"status": {"error_code": 429, "error_message": "You've exceeded the Rate Limit."}},
    )
    with CoinGeckoClient() as client:
        with pytest.raises(SourceRateLimited):
            client.coins_markets(ids=["bitcoin"])
        with pytest.raises(SourceRateLimited):
            client.coins_markets(ids=["bitcoin"])
    assert route.call_count == 1
    assert 15 < rate_limited_for() <= 20


@respx.mock
def test_spent_budget_stops_before_429(fast_client_settings):
    respx.get(f"{CG}/ping").respond(
        json={}, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "10"}
    )
    with CoinGeckoClient() as client:
        client.ping()
    assert 5 < rate_limited_for() <= 10


def test_rate_limit_wait_formats():
    now = 1_700_000_000.0
    assert rate_limit_wait(httpx.Headers({"retry-after": "7"}), now=now) == 7
    assert rate_limit_wait(httpx.Headers({"x-ratelimit-reset": str(int(now) + 12)}), now=now) == 12
    assert rate_limit_wait(httpx.Headers({"x-ratelimit-reset": "9"}), now=now) == 9
    dated = httpx.Headers({"x-ratelimit-reset": "2023-11-14 22:14:00 +0000"})
    assert rate_limit_wait(dated, now=now) == pytest.approx(1_700_000_040 - now, abs=1)
    assert rate_limit_wait(httpx.Headers({}), now=now) == 60
    assert rate_limit_wait(httpx.Headers({"retry-after": "99999"}), now=now) == 300


@pytest.mark.parametrize(
    "payload",
    [
        b"<html>Cloudflare</html>",
        b'{"not": "a list"}',
        b'[{"id": "bitcoin", "symbol": "btc", "name": "Bitcoin", "current_price": "70187"}]',
        b'[{"id": "bitcoin", "symbol": "btc", "name": "Bitcoin", "current_price": NaN}]',
        b'[{"id": "bitcoin", "symbol": "btc", "name": "Bitcoin", "current_price": -1}]',
        b'[{"id": "bitcoin", "symbol": "btc", "name": "Bitcoin", "current_price": 1, '
        b'"last_updated": "yesterday"}]',
        b'[{"id": "bitcoin", "symbol": 7, "name": "Bitcoin", "current_price": 1}]',
        b"[42]",
    ],
)
@respx.mock
def test_garbage_markets_payloads_are_refused(fast_client_settings, payload):
    respx.get(f"{CG}/coins/markets").respond(200, content=payload)
    with CoinGeckoClient() as client, pytest.raises(SourceError):
        client.coins_markets(ids=["bitcoin"])


@respx.mock
def test_unlisted_and_priceless_rows_are_skipped(fast_client_settings):
    respx.get(f"{CG}/coins/markets").respond(
        json=[
            BITCOIN_MARKET,
            {**BITCOIN_MARKET, "id": "other"},
            {**BITCOIN_MARKET, "id": "eth", "current_price": None},
        ]
    )
    with CoinGeckoClient() as client:
        quotes = client.coins_markets(ids=["bitcoin", "eth"])
    assert [q.id for q in quotes] == ["bitcoin"]


@respx.mock
def test_tickers_one_stable_quote_per_venue(fast_client_settings):
    respx.get(f"{CG}/coins/bitcoin/tickers").respond(
        json={
            "name": "Bitcoin",
            "tickers": [
                BINANCE_TICKER,
                {**BINANCE_TICKER, "converted_last": {"usd": 1}},  # second BTC pair on binance
                {
                    **BINANCE_TICKER,
                    "target": "EUR",
                    "market": {
                        **BINANCE_TICKER["market"],
                        "identifier": "bitvavo",
                        "name": "Bitvavo",
                    },
                },
                {
                    **BINANCE_TICKER,
                    "is_anomaly": True,
                    "market": {**BINANCE_TICKER["market"], "identifier": "shady", "name": "Shady"},
                },
                {
                    **BINANCE_TICKER,
                    "converted_last": {"usd": 69600},
                    "target": "USD",
                    "market": {
                        **BINANCE_TICKER["market"],
                        "identifier": "kraken",
                        "name": "Kraken",
                    },
                },
            ],
        }
    )
    with CoinGeckoClient() as client:
        venues = {v.exchange: v.price for v in client.tickers(coin_id="bitcoin")}
    assert venues == {"binance": Decimal("69498"), "kraken": Decimal("69600")}


@respx.mock
def test_tickers_garbage_refused(fast_client_settings):
    respx.get(f"{CG}/coins/bitcoin/tickers").respond(
        json={"name": "Bitcoin", "tickers": [{**BINANCE_TICKER, "converted_last": {"usd": "lots"}}]}
    )
    with CoinGeckoClient() as client, pytest.raises(SourceError):
        client.tickers(coin_id="bitcoin")


@respx.mock
def test_market_chart_garbage_refused(fast_client_settings):
    respx.get(f"{CG}/coins/bitcoin/market_chart").respond(json={"prices": [[1711843200000, None]]})
    with CoinGeckoClient() as client, pytest.raises(SourceError):
        client.market_chart(coin_id="bitcoin", days=1)


@respx.mock
def test_coin_details_for_another_coin_refused(fast_client_settings):
    respx.get(f"{CG}/coins/bitcoin").respond(
        json={"id": "ethereum", "symbol": "eth", "name": "Ethereum"}
    )
    with CoinGeckoClient() as client, pytest.raises(SourceError):
        client.coin_details(coin_id="bitcoin")


@pytest.mark.parametrize(("deadline", "calls"), [(0.5, 1), (5.0, 2)])
def test_timeouts_are_retried_only_within_the_deadline(simulator, settings, deadline, calls):
    settings.MARKET_DATA_DEADLINE = deadline  # read timeout 0.3 s, one retry allowed
    simulator.fault = "timeout"
    with CoinGeckoClient() as client, pytest.raises(SourceError):
        client.coins_markets(ids=["bitcoin"])
    assert simulator.calls == calls


@respx.mock
def test_coin_id_cannot_escape_its_path(fast_client_settings):
    route = respx.get(url__regex=r".*").respond(404, json={"error": "coin not found"})
    with CoinGeckoClient() as client, pytest.raises(SourceNotFound):
        client.coin_details(coin_id="../exchanges/x?y=1")
    assert route.calls.last.request.url.raw_path.startswith(
        b"/api/v3/coins/..%2Fexchanges%2Fx%3Fy%3D1"
    )


# --- the shared budget and the poll's reserved share ------------------------------------
@respx.mock
def test_reserved_share_kept_for_the_poll(fast_client_settings, settings):
    settings.MARKET_DATA_BUDGET_PER_MINUTE = 5
    settings.MARKET_DATA_POLL_RESERVED_PER_MINUTE = 2  # 3 for everyone else
    tickers = respx.get(f"{CG}/coins/bitcoin/tickers").respond(
        json={"name": "Bitcoin", "tickers": [BINANCE_TICKER]}
    )
    details = respx.get(f"{CG}/coins/bitcoin").respond(json={"id": "bitcoin"})
    markets = respx.get(f"{CG}/coins/markets").respond(json=[BITCOIN_MARKET])
    with CoinGeckoClient() as client:
        for _ in range(3):
            client.tickers(coin_id="bitcoin")
        with pytest.raises(SourceBudgetExhausted) as refused:
            client.tickers(coin_id="bitcoin")
        assert 0 < refused.value.retry_after <= 60
        with pytest.raises(SourceBudgetExhausted):
            client.coin_details(coin_id="bitcoin")
        # The poll still gets through, on the reserved share...
        for _ in range(2):
            assert client.coins_markets(ids=["bitcoin"])[0].price == Decimal("70187")
        # ... and no further than the whole budget.
        with pytest.raises(SourceBudgetExhausted):
            client.coins_markets(ids=["bitcoin"])
    assert (tickers.call_count, details.call_count, markets.call_count) == (3, 0, 2)
    usage = budget_usage()
    assert usage["tickers"] == 3 and usage["poll"] == 2 and "details" not in usage
    assert usage["refused:tickers"] == usage["refused:details"] == usage["refused:poll"] == 1
    assert usage["window"] == 5 and usage["window_shared"] == 3


@respx.mock
def test_retries_spend_the_budget(fast_client_settings, settings):
    settings.MARKET_DATA_BUDGET_PER_MINUTE = 2
    settings.MARKET_DATA_POLL_RESERVED_PER_MINUTE = 0
    route = respx.get(f"{CG}/ping").respond(500)
    with CoinGeckoClient() as client, pytest.raises(SourceBudgetExhausted):
        client.ping()  # two attempts spend the budget; the third is refused at home
    assert route.call_count == 2


@respx.mock
def test_after_a_429_the_poll_goes_first(fast_client_settings, settings):
    respx.get(f"{CG}/coins/bitcoin/tickers").respond(429, headers={"retry-after": "10"})
    with CoinGeckoClient() as client, pytest.raises(SourceRateLimited):
        client.tickers(coin_id="bitcoin")
    # Everyone waits out the back-off; everyone but the poll one poll period more.
    assert 8 < rate_limited_for(POLL) <= 10
    assert 8 < rate_limited_for(DETAILS) - settings.PRICE_POLL_SECONDS <= 10
