"""The market endpoints over Django's test clients, on the real PostgreSQL and Redis, with
the simulator as the source."""

from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
from django.test import AsyncClient
from django.utils import timezone

from cryptovault.testing import minute_fresh
from markets.models import Coin, PricePoint
from markets.price_store import prices_snapshot_bytes
from markets.services import coins_seed, prices_poll, prices_record, tickers_record


# --- GET /prices ----------------------------------------------------------------------------
# An empty price store is refilled from PostgreSQL (none recorded here).
@pytest.mark.django_db
async def test_prices_before_any_poll():
    response = await AsyncClient().get("/api/v1/prices")
    assert response.status_code == 200
    assert response.json() == {"as_of": None, "source": None, "stale": True, "prices": {}}


async def test_prices_serves_the_stored_bytes():
    as_of = timezone.now()
    prices_record(
        prices={"bitcoin": Decimal("65000.10"), "ethereum": Decimal("3200")},
        as_of=as_of,
        extra={"bitcoin": {"change_24h_pct": Decimal("1.25")}},
    )
    response = await AsyncClient().get("/api/v1/prices", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["X-Request-ID"] == "abc-123"
    assert response["X-Content-Type-Options"] == "nosniff"
    # The snapshot's shape is the store's (markets/tests/test_selectors.py).
    assert response.content == prices_snapshot_bytes()
    body = orjson.loads(response.content)
    assert body["as_of"] == as_of.isoformat().replace("+00:00", "Z")
    assert body["prices"]["bitcoin"] == {"usd": "65000.1", "change_24h_pct": "1.25"}


async def test_prices_flags_stale(settings):
    settings.PRICE_STALE_SECONDS = 60
    prices_record(prices={"bitcoin": Decimal("1")}, as_of=timezone.now() - timedelta(seconds=90))
    body = (await AsyncClient().get("/api/v1/prices")).json()
    assert body["stale"] is True
    assert body["prices"]["bitcoin"]["usd"] == "1"


# An empty price store is refilled from PostgreSQL (none recorded here).
@pytest.mark.django_db
async def test_prices_is_public_and_read_only():
    client = AsyncClient()
    bogus = {"Authorization": "Bearer not-a-token"}
    assert (await client.get("/api/v1/prices", headers=bogus)).status_code == 200
    response = await client.post("/api/v1/prices")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_prices_is_in_the_openapi_schema(client):
    schema = client.get("/api/schema/?format=json").json()

    operation = schema["paths"]["/api/v1/prices"]["get"]
    body = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Prices"}
    prices = schema["components"]["schemas"]["Prices"]
    assert set(prices["required"]) == {"as_of", "source", "stale", "prices"}
    assert operation["operationId"] == "prices_retrieve"


# --- GET /coins ---------------------------------------------------------------------------------
@pytest.fixture
def search_coins(db):
    coins_seed(coin_ids=["bitcoin", "bitcoin-cash", "ethereum", "tron"])
    Coin.objects.create(id="wrapped-bitcoin", symbol="wbtc", name="Wrapped Bitcoin")
    Coin.objects.create(id="bitcoin-gold", symbol="btg", name="Bitcoin Gold", tracked=False)
    Coin.objects.filter(pk="bitcoin-cash").update(name="Bitcoin Cash", symbol="bch")
    prices_record(
        prices={"bitcoin": Decimal("65000"), "ethereum": Decimal("3000")},
        extra={
            "bitcoin": {"market_cap": Decimal("1300000000000"), "volume_24h": Decimal("4")},
            "ethereum": {"market_cap": Decimal("380000000000")},
        },
    )


def test_coin_list(api_client, search_coins):
    response = api_client.get("/api/v1/coins")
    assert response.status_code == 200
    body = response.json()
    assert body["next"] is None and body["previous"] is None
    ids = [c["id"] for c in body["results"]]
    assert ids[:2] == ["bitcoin", "ethereum"]  # biggest market cap first
    assert "bitcoin-gold" not in ids  # untracked
    bitcoin = body["results"][0]
    assert bitcoin == {
        "id": "bitcoin",
        "symbol": "btc",
        "name": "Bitcoin",
        "price": "65000",
        "change_24h_pct": None,
        "market_cap": "1300000000000",
        "volume_24h": "4",
        "last_updated": bitcoin["last_updated"],
    }
    assert bitcoin["last_updated"].endswith("Z")


def test_coin_list_paginates(api_client, search_coins):
    body = api_client.get("/api/v1/coins?page_size=2").json()
    assert len(body["results"]) == 2
    assert "page=2" in body["next"]
    assert len(api_client.get("/api/v1/coins?page_size=2&page=last").json()["results"]) >= 1
    # A malformed page is bad input; a well-formed one past the end is not found.
    for page in ("abc", "0", "-1", "1.5", "\uff15"):
        response = api_client.get("/api/v1/coins", {"page": page})
        assert response.status_code == 400, page
        assert "page" in response.json()
    assert api_client.get("/api/v1/coins?page=999").status_code == 404


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("btc", ["bitcoin"]),  # exact symbol
        ("BITCOIN", ["bitcoin", "bitcoin-cash", "wrapped-bitcoin"]),  # exact, prefix, contains
        ("bit", ["bitcoin", "bitcoin-cash", "wrapped-bitcoin"]),  # prefixes by market cap
        ("cash", ["bitcoin-cash"]),
        ("eth", ["ethereum"]),
        ("zzz", []),
    ],
)
def test_coin_search_ranking(api_client, search_coins, term, expected):
    response = api_client.get("/api/v1/coins", {"search": term})
    assert response.status_code == 200
    assert [c["id"] for c in response.json()["results"]] == expected


def test_coin_search_too_long(api_client, search_coins):
    response = api_client.get("/api/v1/coins", {"search": "x" * 101})
    assert response.status_code == 400
    assert "search" in response.json()


# --- GET /coins/<id> ----------------------------------------------------------------------------
def test_coin_detail_cached(api_client, simulator, tracked):
    response = api_client.get("/api/v1/coins/bitcoin")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "bitcoin"
    assert body["description"]
    assert body["supply"]["max"] == "21000000"
    assert set(body["ath"]) == {"price", "change_pct", "date"}
    assert body["links"]["homepage"]
    calls = simulator.calls
    assert api_client.get("/api/v1/coins/bitcoin").json() == body
    assert simulator.calls == calls  # served from the 5-minute cache


def test_coin_detail_unknown(api_client, simulator, tracked):
    response = api_client.get("/api/v1/coins/not-a-coin")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert simulator.calls == 0


def test_coin_detail_source_down_still_answers(api_client, simulator, tracked):
    simulator.fault = "error"
    prices_record(prices={"bitcoin": Decimal("65000")})
    response = api_client.get("/api/v1/coins/bitcoin")
    assert response.status_code == 200
    assert response.json()["price"] == "65000"
    assert response.json()["description"] == ""
    simulator.fault = "none"
    assert api_client.get("/api/v1/coins/bitcoin").json()["description"]  # not cached empty


def test_coin_detail_rate_limited_per_ip(api_client, simulator, tracked, settings):
    from markets.read_cache import READS_PER_MINUTE

    allowed = READS_PER_MINUTE["coin-detail"]
    minute_fresh()
    for _ in range(allowed):
        assert api_client.get("/api/v1/coins/bitcoin").status_code == 200
    # Unknown ids count too, so probing them is no way around the limit.
    limited = api_client.get("/api/v1/coins/not-a-coin")
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited["Retry-After"]) <= 60
    # Another endpoint has its own count; another client its own bucket.
    assert api_client.get("/api/v1/coins/bitcoin/history", {"days": 1}).status_code == 200
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    other = api_client.get("/api/v1/coins/bitcoin", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert other.status_code == 200
    settings.RATELIMIT_ENABLE = False
    assert api_client.get("/api/v1/coins/bitcoin").status_code == 200


# --- GET /coins/<id>/history -------------------------------------------------------------------
@pytest.mark.parametrize("days", ["0", "366", "abc", "-1", "1.5"])
def test_history_bad_days(api_client, simulator, tracked, days):
    response = api_client.get("/api/v1/coins/bitcoin/history", {"days": days})
    assert response.status_code == 400
    assert "days" in response.json()


def test_history_unknown_coin(api_client, simulator, tracked):
    assert api_client.get("/api/v1/coins/nope/history?days=1").status_code == 404


def test_history_from_source_then_cached(api_client, simulator, tracked):
    simulator.model.set_price("bitcoin", 65000)
    response = api_client.get("/api/v1/coins/bitcoin/history", {"days": 30})
    assert response.status_code == 200
    body = response.json()
    assert body["coin"] == "bitcoin" and body["days"] == 30
    assert len(body["prices"]) == 30 * 24 + 1  # hourly, as CoinGecko
    ms, price = body["prices"][-1]
    assert isinstance(ms, int) and price == "65000"
    calls = simulator.calls
    assert api_client.get("/api/v1/coins/bitcoin/history", {"days": 30}).json() == body
    assert simulator.calls == calls


def test_history_from_own_rows_when_they_cover_the_range(api_client, simulator, tracked):
    now = timezone.now()
    PricePoint.objects.bulk_create(
        PricePoint(coin_id="bitcoin", ts=now - timedelta(minutes=m), price=Decimal(60000 + m))
        for m in range(0, 26 * 60, 1)
    )
    body = api_client.get("/api/v1/coins/bitcoin/history", {"days": 1}).json()
    assert simulator.calls == 0
    assert 288 <= len(body["prices"]) <= 290  # 5-minute buckets over one day
    stamps = [ms for ms, _ in body["prices"]]
    assert stamps == sorted(stamps)
    assert body["prices"][-1][1] == "60000"  # the latest price closes the series
    assert stamps[0] >= (now - timedelta(days=1)).timestamp() * 1000


def test_history_source_down_without_rows(api_client, simulator, tracked):
    simulator.fault = "error"
    response = api_client.get("/api/v1/coins/bitcoin/history", {"days": 7})
    assert response.status_code == 503
    assert response.json()["code"] == "history_unavailable"


def test_spent_share_refuses_reads_not_the_poll(api_client, simulator, tracked, settings):
    settings.MARKET_DATA_BUDGET_PER_MINUTE = 4
    settings.MARKET_DATA_POLL_RESERVED_PER_MINUTE = 2
    for days in (1, 91):  # two upstream keys: the two calls anonymous clients may spend
        assert api_client.get("/api/v1/coins/bitcoin/history", {"days": days}).status_code == 200
    refused = api_client.get("/api/v1/coins/bitcoin/history", {"days": 30})
    assert refused.status_code == 503
    assert refused.json()["code"] == "history_unavailable"
    assert 1 <= int(refused["Retry-After"]) <= 60
    details = api_client.get("/api/v1/coins/bitcoin")
    assert details.status_code == 200 and details.json()["description"] == ""
    assert simulator.calls == 2
    poll = prices_poll()
    assert poll is not None and poll.source == "coingecko"
    assert simulator.calls == 3


# --- GET /arbitrage -------------------------------------------------------------------------------
def test_arbitrage(api_client, tracked):
    assert api_client.get("/api/v1/arbitrage").json() == {"as_of": None, "opportunities": []}
    tickers_record(
        coin_id="bitcoin",
        venues=[
            ("binance", "Binance", Decimal("65000")),
            ("kraken", "Kraken", Decimal("66000")),
            ("gdax", "Coinbase Exchange", Decimal("65100")),
        ],
    )
    tickers_record(
        coin_id="ethereum",
        venues=[("binance", "Binance", Decimal("3000")), ("kraken", "Kraken", Decimal("3001"))],
    )
    body = api_client.get("/api/v1/arbitrage").json()
    assert body["as_of"].endswith("Z")
    [opportunity] = body["opportunities"]  # ethereum's spread does not cover the fees
    assert opportunity["coin"] == "bitcoin"
    assert opportunity["buy_exchange"] == "binance"
    assert opportunity["buy_price"] == "65000"
    assert opportunity["sell_exchange"] == "kraken"
    assert opportunity["sell_price"] == "66000"
    assert opportunity["spread_pct"] == "1.5385"
    assert Decimal(opportunity["net_pct"]) < Decimal("1.5385")
    everything = api_client.get("/api/v1/arbitrage", {"min_net_pct": "-100"}).json()
    assert [o["coin"] for o in everything["opportunities"]] == ["bitcoin", "ethereum"]
    assert api_client.get("/api/v1/arbitrage", {"min_net_pct": "x"}).status_code == 400
