"""Arbitrage maths (markets.arbitrage) over venue tickers polled from the simulator."""

from decimal import Decimal

from markets.arbitrage import arbitrage_opportunities
from markets.services import tickers_poll


def test_tickers_round_robin_and_arbitrage(simulator, tracked):
    simulator.model.set_price("bitcoin", 65000, {"kraken": 66000})
    simulator.model.set_price("ethereum", 3000, {"gdax": 2900, "binance": 3100})
    simulator.model.set_price("dogecoin", 0.15)
    assert [tickers_poll() for _ in range(4)] == ["bitcoin", "dogecoin", "ethereum", "bitcoin"]
    result = arbitrage_opportunities()
    assert [o["coin"] for o in result["opportunities"]] == ["ethereum", "bitcoin"]
    eth, btc = result["opportunities"]
    assert (eth["buy_exchange"], eth["sell_exchange"]) == ("gdax", "binance")
    assert eth["spread_pct"] == "6.8966"
    # net = (3100 * (1 - 0.001) - 2900 * (1 + 0.004)) / (2900 * 1.004) * 100
    assert eth["net_pct"] == "6.3642"
    assert btc["buy_price"] == "65000"
    assert (btc["buy_exchange"], btc["sell_exchange"]) in {
        ("binance", "kraken"),
        ("okex", "kraken"),
    }
    assert Decimal(btc["net_pct"]) < Decimal(btc["spread_pct"])
    # Above a higher threshold only ethereum is left; dogecoin (flat) never shows.
    assert [
        o["coin"] for o in arbitrage_opportunities(min_net_pct=Decimal("2"))["opportunities"]
    ] == ["ethereum"]


def test_tickers_poll_failure_keeps_previous(simulator, tracked):
    simulator.model.set_price("bitcoin", 65000, {"kraken": 66000})
    tickers_poll()
    simulator.fault = "garbage"
    assert tickers_poll() is None
    assert arbitrage_opportunities()["opportunities"][0]["coin"] == "bitcoin"
