"""The simulator's ASGI app, in-process (httpx ASGITransport): CoinGecko shapes, control
API and every fault mode."""

import time

import httpx
import pytest

from markets.simulator.app import create_app
from markets.simulator.model import MarketModel


@pytest.fixture
async def sim():
    app = create_app(seed=3, hang_seconds=0.3)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        client.app = app
        yield client


async def test_ping(sim):
    response = await sim.get("/api/v3/ping")
    assert response.status_code == 200
    assert response.json() == {"gecko_says": "(V3) To the Moon!"}


async def test_coins_markets_shape_and_filter(sim):
    response = await sim.get(
        "/api/v3/coins/markets", params={"vs_currency": "usd", "ids": "ethereum,bitcoin,nope"}
    )
    assert response.status_code == 200
    rows = response.json()
    assert [row["id"] for row in rows] == ["bitcoin", "ethereum"]  # market cap order
    for field in (
        "symbol", "name", "image", "current_price", "market_cap", "market_cap_rank",
        "total_volume", "high_24h", "low_24h", "price_change_percentage_24h",
        "circulating_supply", "total_supply", "max_supply", "ath", "ath_date", "atl",
        "last_updated",
    ):  # fmt: skip
        assert field in rows[0]
    assert 10_000 < rows[0]["current_price"] < 1_000_000


async def test_coins_markets_requires_vs_currency(sim):
    response = await sim.get("/api/v3/coins/markets")
    assert response.status_code == 400


async def test_simple_price(sim):
    response = await sim.get(
        "/api/v3/simple/price",
        params={"ids": "bitcoin", "vs_currencies": "usd", "include_24hr_change": "true"},
    )
    assert set(response.json()["bitcoin"]) == {"usd", "usd_24h_change"}


async def test_coin_detail_and_unknown_coin(sim):
    detail = (await sim.get("/api/v3/coins/bitcoin")).json()
    assert detail["id"] == "bitcoin"
    assert detail["market_data"]["current_price"]["usd"] > 0
    assert detail["description"]["en"]
    missing = await sim.get("/api/v3/coins/not-a-coin")
    assert missing.status_code == 404
    assert missing.json() == {"error": "coin not found"}


async def test_market_chart_granularity(sim):
    one_day = (await sim.get("/api/v3/coins/bitcoin/market_chart?vs_currency=usd&days=1")).json()
    assert len(one_day["prices"]) == 289  # 5-minutely
    year = (await sim.get("/api/v3/coins/bitcoin/market_chart?vs_currency=usd&days=365")).json()
    assert len(year["prices"]) == 366  # daily
    assert set(year) == {"prices", "market_caps", "total_volumes"}
    bad = await sim.get("/api/v3/coins/bitcoin/market_chart?vs_currency=usd&days=x")
    assert bad.status_code == 400


async def test_control_prices_pin_mid_and_venues(sim):
    response = await sim.post(
        "/_control/prices",
        json={"bitcoin": {"usd": "65000", "venues": {"kraken": "66000"}}, "ethereum": "3000"},
    )
    assert response.status_code == 200
    markets = (await sim.get("/api/v3/coins/markets?vs_currency=usd&ids=bitcoin,ethereum")).json()
    assert {row["id"]: row["current_price"] for row in markets} == {
        "bitcoin": 65000,
        "ethereum": 3000,
    }
    tickers = (await sim.get("/api/v3/coins/bitcoin/tickers")).json()
    venues = {t["market"]["identifier"]: t["converted_last"]["usd"] for t in tickers["tickers"]}
    assert len(venues) >= 4
    assert venues.pop("kraken") == 66000
    assert set(venues.values()) == {65000}


async def test_control_rejects_bad_input(sim):
    assert (await sim.post("/_control/prices", json={"bitcoin": "-1"})).status_code == 400
    # Finite as a decimal, infinite as the walk's float: refused, and nothing changed.
    for huge in ("1e400", "1e16"):
        assert (await sim.post("/_control/prices", json={"bitcoin": huge})).status_code == 400
    assert (await sim.get("/api/v3/coins/markets?vs_currency=usd")).status_code == 200
    assert (await sim.post("/_control/prices", content=b"{nope")).status_code == 400
    assert (await sim.post("/_control/walk", json={"enabled": "yes"})).status_code == 400
    assert (await sim.post("/_control/fault", json={"mode": "meteor"})).status_code == 400


async def test_walk_freeze_and_resume():
    model = MarketModel(seed=1, now=0)
    start = model.price("bitcoin")
    model.set_walk(False)
    model.advance(now=600)
    assert model.price("bitcoin") == start
    model.set_walk(True)
    model.advance(now=1200)
    assert model.price("bitcoin") != start


def test_walk_is_seeded():
    first, second = MarketModel(seed=5, now=0), MarketModel(seed=5, now=0)
    first.advance(now=60)
    second.advance(now=60)
    assert first.price("solana") == second.price("solana")


async def test_control_walk_endpoint(sim):
    await sim.post("/_control/walk", json={"enabled": False})
    assert (await sim.get("/_control/state")).json()["walk"] is False


async def test_fault_error(sim):
    await sim.post("/_control/fault", json={"mode": "error"})
    assert (await sim.get("/api/v3/ping")).status_code == 500
    assert (await sim.get("/_control/state")).status_code == 200  # control never faults
    await sim.post("/_control/fault", json={"mode": "none"})
    assert (await sim.get("/api/v3/ping")).status_code == 200


async def test_fault_rate_limit_headers(sim):
    await sim.post("/_control/fault", json={"mode": "rate_limit"})
    response = await sim.get("/api/v3/coins/markets?vs_currency=usd")
    assert response.status_code == 429
    assert response.headers["x-ratelimit-limit"] == "30"
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert int(response.headers["x-ratelimit-reset"]) >= int(time.time())
    assert response.json()["status"]["error_code"] == 429


async def test_fault_timeout_hangs(sim):
    await sim.post("/_control/fault", json={"mode": "timeout"})
    started = time.monotonic()
    response = await sim.get("/api/v3/ping")
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 504


async def test_fault_garbage(sim):
    await sim.post("/_control/fault", json={"mode": "garbage"})
    response = await sim.get("/api/v3/coins/markets?vs_currency=usd")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
