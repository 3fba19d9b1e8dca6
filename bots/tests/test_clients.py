"""Real Binance clients, unchanged, against the platform served by a real uvicorn (no
network beyond 127.0.0.1): ccxt's ``binance`` class and python-binance's ``Client``,
pointed at ``/binance/api/v3`` by URL only, reading market data and trading with HMAC
and Ed25519 keys, their orders filled by a real Celery worker."""

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import ccxt
import pytest
from binance.client import Client as BinanceClient
from binance.exceptions import BinanceAPIException

from bots.tests.conftest import Credentials, credentials_create
from cryptovault.asgi import application
from cryptovault.testing import uvicorn_in_thread
from markets.models import PricePoint
from markets.services import coins_seed, prices_record
from orders.models import Order
from orders.selectors import ledger_mismatches, order_list
from orders.services import order_place, order_queue_process
from orders.tests.factories import user_create

BASE = "/binance/api"


@pytest.fixture
def platform(transactional_db):
    """The platform on a real uvicorn, with BTCUSD and ETHUSD priced, half an hour of
    1-minute history, and one platform fill (a market buy of 0.25 BTC at 65000)."""
    coins_seed(coin_ids=["bitcoin", "ethereum"])
    prices_record(
        prices={"bitcoin": Decimal("65000"), "ethereum": Decimal("3000")},
        extra={"bitcoin": {"change_24h_pct": Decimal("-1.5"), "volume_24h": Decimal("6500000")}},
    )
    now = datetime.now(tz=UTC).replace(second=0, microsecond=0)
    PricePoint.objects.bulk_create(
        PricePoint(coin_id="bitcoin", ts=now - timedelta(minutes=m), price=Decimal(65000 - m))
        for m in range(30)
    )
    buyer = user_create(usd="100000")
    order_place(user=buyer, coin_id="bitcoin", side="buy", type="market", quantity=Decimal("0.25"))
    order_queue_process(user_id=buyer.pk)
    with uvicorn_in_thread(application) as address:
        yield f"http://{address}"


def _ccxt(base_url: str) -> ccxt.binance:
    url = f"{base_url}{BASE}/v3"
    return ccxt.binance(
        {
            "urls": {"api": {"public": url, "private": url}},
            "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False},
            "timeout": 10_000,
        }
    )


def test_ccxt_reads_the_market_data(platform):
    exchange = _ccxt(platform)
    markets = exchange.load_markets()
    assert set(markets) == {"BTC/USD", "ETH/USD"}
    btc = markets["BTC/USD"]
    assert (btc["id"], btc["base"], btc["quote"], btc["spot"]) == ("BTCUSD", "BTC", "USD", True)
    assert btc["active"] is True
    assert btc["precision"] == {"amount": 1e-08, "price": 1e-12, "base": 1e-08, "quote": 1e-08}
    assert btc["limits"]["amount"] == {"min": 1e-08, "max": 1e12}
    assert btc["limits"]["cost"]["max"] == 1e9

    ticker = exchange.fetch_ticker("BTC/USD")
    assert ticker["last"] == 65000 and ticker["percentage"] == -1.5
    assert ticker["bid"] < 65000 < ticker["ask"]
    assert ticker["quoteVolume"] == 6500000
    tickers = exchange.fetch_tickers()
    assert set(tickers) == {"BTC/USD", "ETH/USD"}
    assert tickers["ETH/USD"]["last"] == 3000

    book = exchange.fetch_order_book("BTC/USD", limit=10)
    assert len(book["bids"]) == len(book["asks"]) == 10
    assert book["bids"][0][0] < 65000 < book["asks"][0][0]
    assert isinstance(book["nonce"], int)

    candles = exchange.fetch_ohlcv("BTC/USD", "1m", limit=10)
    assert len(candles) == 10
    assert candles[-1][1:5] == [65000, 65000, 65000, 65000]
    assert [c[0] for c in candles] == sorted(c[0] for c in candles)
    hourly = exchange.fetch_ohlcv("BTC/USD", "1h")
    assert 1 <= len(hourly) <= 2 and max(c[2] for c in hourly) == 65000

    trades = exchange.fetch_trades("BTC/USD")
    assert [(t["price"], t["amount"], t["side"]) for t in trades] == [(65000, 0.25, "buy")]
    assert exchange.fetch_trades("ETH/USD") == []

    server_time = exchange.fetch_time()
    assert abs(server_time - exchange.milliseconds()) < 5000


def test_ccxt_maps_binance_errors(platform):
    exchange = _ccxt(platform)
    exchange.load_markets()
    with pytest.raises(ccxt.BadSymbol):
        exchange.publicGetTickerPrice({"symbol": "NOPEUSD"})
    with pytest.raises(ccxt.BadRequest):
        exchange.publicGetKlines({"symbol": "BTCUSD", "interval": "7m"})


def _python_binance(base_url: str) -> BinanceClient:
    client = BinanceClient("key", "secret", ping=False)
    client.API_URL = f"{base_url}{BASE}"
    return client


def test_python_binance_reads_the_market_data(platform):
    client = _python_binance(platform)
    assert client.ping() == {}
    assert abs(client.get_server_time()["serverTime"] - client.get_server_time()["serverTime"]) < (
        5000
    )
    info = client.get_exchange_info()
    assert {s["symbol"] for s in info["symbols"]} == {"BTCUSD", "ETHUSD"}
    symbol = client.get_symbol_info("ETHUSD")
    assert (symbol["baseAsset"], symbol["quoteAsset"], symbol["status"]) == (
        "ETH",
        "USD",
        "TRADING",
    )
    assert client.get_symbol_info("NOPEUSD") is None
    assert client.get_symbol_ticker(symbol="BTCUSD") == {"symbol": "BTCUSD", "price": "65000"}
    assert len(client.get_symbol_ticker()) == 2
    ticker = client.get_ticker(symbol="BTCUSD")
    assert ticker["lastPrice"] == "65000" and ticker["priceChangePercent"] == "-1.5"
    book_ticker = client.get_orderbook_ticker(symbol="BTCUSD")
    assert Decimal(book_ticker["bidPrice"]) < 65000 < Decimal(book_ticker["askPrice"])
    assert Decimal(client.get_avg_price(symbol="BTCUSD")["price"]) > 64990
    klines = client.get_klines(symbol="BTCUSD", interval=BinanceClient.KLINE_INTERVAL_5MINUTE)
    assert 6 <= len(klines) <= 7 and all(len(k) == 12 for k in klines)
    assert klines[-1][4] == "65000"
    book = client.get_order_book(symbol="BTCUSD", limit=5)
    assert len(book["bids"]) == 5 and book["synthetic"] is True
    trades = client.get_recent_trades(symbol="BTCUSD")
    filled = Order.objects.get()
    assert [(t["id"], t["price"], t["qty"]) for t in trades] == [(filled.pk, "65000", "0.25")]


def test_python_binance_raises_binance_errors(platform):
    client = _python_binance(platform)
    with pytest.raises(BinanceAPIException) as invalid:
        client.get_symbol_ticker(symbol="NOPEUSD")
    assert (invalid.value.status_code, invalid.value.code) == (400, -1121)
    assert invalid.value.message == "Invalid symbol."
    with pytest.raises(BinanceAPIException) as bad_interval:
        client.get_klines(symbol="BTCUSD", interval="1w")
    assert bad_interval.value.code == -1120
    assert int(client.response.headers["X-MBX-USED-WEIGHT-1M"]) > 0


# --- signed: real orders, filled by a real Celery worker ----------------------------------------
@pytest.fixture
def trading(platform, celery_worker):
    """The platform with a worker filling orders, and a trader holding 100000 usd and
    1 BTC."""
    return platform, user_create(usd="100000", bitcoin="1")


def _ccxt_signed(base_url: str, credentials: Credentials, *, sapi: bool = True) -> ccxt.binance:
    """With a key, ccxt's ``load_markets`` also reads the margin pairs at
    ``urls.api.sapi``: pointed at the platform too (which has none), or skipped with
    the ``fetchMargins`` option off."""
    exchange = _ccxt(base_url)
    if sapi:
        exchange.urls["api"]["sapi"] = f"{base_url}/binance/sapi/v1"
    else:
        exchange.options["fetchMargins"] = False
    exchange.apiKey, exchange.secret = credentials.key, credentials.secret
    return exchange


def _settled(fetch, *, timeout: float = 10.0):
    """``fetch()`` once the order it returns is no longer open."""
    deadline = time.monotonic() + timeout
    while (order := fetch())["status"] == "open" and time.monotonic() < deadline:
        time.sleep(0.1)
    return order


@pytest.mark.parametrize("ed25519", [False, True], ids=["hmac", "ed25519"])
def test_ccxt_trades(trading, ed25519):
    base_url, trader = trading
    exchange = _ccxt_signed(base_url, credentials_create(trader, ed25519=ed25519))
    exchange.load_markets()
    balance = exchange.fetch_balance()
    assert balance["USD"] == {"free": 100000.0, "used": 0.0, "total": 100000.0}
    assert balance["BTC"]["free"] == 1.0

    bought = exchange.create_order("BTC/USD", "market", "buy", 0.1)
    # RESULT waits for the queue: the worker has filled it.
    assert bought["status"] == "closed", bought
    assert (bought["filled"], bought["average"], bought["cost"]) == (0.1, 65000, 6500)
    order = Order.objects.get(pk=int(bought["id"]))
    assert order.status == "filled" and order.user_id == trader.pk
    assert order.client_order_id == bought["clientOrderId"]

    limit = exchange.create_order("BTC/USD", "limit", "sell", 0.5, 70000)
    assert limit["status"] == "open" and limit["price"] == 70000
    fetched = exchange.fetch_order(limit["id"], "BTC/USD")
    assert (fetched["id"], fetched["status"], fetched["amount"]) == (limit["id"], "open", 0.5)
    assert [o["id"] for o in exchange.fetch_open_orders("BTC/USD")] == [limit["id"]]
    locked = exchange.fetch_balance()["BTC"]
    assert (locked["used"], locked["total"]) == (0.5, 1.1)

    cancelled = exchange.cancel_order(limit["id"], "BTC/USD")
    assert cancelled["status"] == "canceled"
    assert exchange.fetch_open_orders("BTC/USD") == []

    sold = exchange.create_order("BTC/USD", "market", "sell", 0.05)
    sold = _settled(lambda: exchange.fetch_order(sold["id"], "BTC/USD"))
    assert sold["status"] == "closed"
    trades = exchange.fetch_my_trades("BTC/USD")
    assert [(t["order"], t["side"], t["amount"], t["price"]) for t in trades] == [
        (bought["id"], "buy", 0.1, 65000),
        (sold["id"], "sell", 0.05, 65000),
    ]
    assert all(t["fee"]["currency"] == "USD" and t["fee"]["cost"] > 0 for t in trades)
    assert not ledger_mismatches()


def test_ccxt_maps_signed_errors(trading):
    base_url, trader = trading
    credentials = credentials_create(trader)
    exchange = _ccxt_signed(base_url, credentials, sapi=False)
    exchange.load_markets()
    with pytest.raises(ccxt.InsufficientFunds):
        exchange.create_order("BTC/USD", "market", "buy", 10)
    with pytest.raises(ccxt.OrderNotFound):
        exchange.fetch_order("999999", "BTC/USD")
    with pytest.raises(ccxt.OrderNotFound):
        exchange.cancel_order("999999", "BTC/USD")
    forged = _ccxt_signed(base_url, Credentials(key=credentials.key, secret="not-the-secret"))
    with pytest.raises(ccxt.AuthenticationError):
        forged.fetch_balance()
    stranger = _ccxt_signed(base_url, Credentials(key="unknown", secret=credentials.secret))
    with pytest.raises(ccxt.AuthenticationError):
        stranger.fetch_balance()
    assert not Order.objects.filter(user=trader).exists()


@pytest.mark.parametrize("ed25519", [False, True], ids=["hmac", "ed25519"])
def test_python_binance_trades(trading, ed25519):
    base_url, trader = trading
    credentials = credentials_create(trader, ed25519=ed25519)
    if ed25519:
        client = BinanceClient(credentials.key, private_key=credentials.secret, ping=False)
    else:
        client = BinanceClient(credentials.key, credentials.secret, ping=False)
    client.API_URL = f"{base_url}{BASE}"

    account = client.get_account()
    assert {b["asset"]: b["free"] for b in account["balances"]} == {"USD": "100000", "BTC": "1"}
    assert client.get_asset_balance(asset="BTC")["free"] == "1"

    bought = client.order_market_buy(symbol="BTCUSD", quantity="0.1")
    assert bought["status"] == "FILLED", bought
    assert bought["fills"][0]["price"] == "65000" and bought["executedQty"] == "0.1"
    limit = client.order_limit_buy(symbol="BTCUSD", quantity="0.2", price="60000")
    assert limit["status"] == "NEW"
    assert client.get_order(symbol="BTCUSD", orderId=limit["orderId"])["price"] == "60000"
    assert [o["orderId"] for o in client.get_open_orders(symbol="BTCUSD")] == [limit["orderId"]]
    cancelled = client.cancel_order(symbol="BTCUSD", orderId=limit["orderId"])
    assert cancelled["status"] == "CANCELED"
    every = client.get_all_orders(symbol="BTCUSD")
    assert [o["status"] for o in every] == ["FILLED", "CANCELED"]
    trades = client.get_my_trades(symbol="BTCUSD")
    assert [(t["orderId"], t["qty"], t["isBuyer"]) for t in trades] == [
        (bought["orderId"], "0.1", True)
    ]
    # Seen by the native API's selector too: one set of orders.
    assert {o.pk for o in order_list(user=trader)} == {bought["orderId"], limit["orderId"]}

    with pytest.raises(BinanceAPIException) as poor:
        client.order_market_buy(symbol="BTCUSD", quantity="100")
    assert (poor.value.code, poor.value.message) == (
        -2010,
        "Account has insufficient balance for requested action.",
    )
    with pytest.raises(BinanceAPIException) as unknown:
        client.get_order(symbol="BTCUSD", orderId=999999)
    assert unknown.value.code == -2013
