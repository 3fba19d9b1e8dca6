"""The Binance-compatible public endpoints over Django's test client: shapes, Binance's
error objects and codes, the weight header, on the real PostgreSQL and Redis."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from bots.weights import WEIGHT_PER_MINUTE
from cryptovault.testing import minute_fresh
from markets.models import PricePoint
from markets.services import prices_record, tickers_record
from orders.services import order_place, order_queue_process
from orders.tests.factories import user_create

BASE = "/binance/api/v3/"


@pytest.fixture
def client() -> Client:
    return Client()


def _get(client, path, **query):
    return client.get(BASE + path, query)


def test_ping_time_and_the_weight_header(client, db):
    minute_fresh()
    first = _get(client, "ping")
    assert first.status_code == 200 and first.json() == {}
    assert first["X-MBX-USED-WEIGHT-1M"] == "1"
    assert first["Content-Type"] == "application/json"
    assert first["X-Request-ID"]  # the platform's middleware still runs
    server_time = _get(client, "time").json()["serverTime"]
    assert abs(server_time - datetime.now(tz=UTC).timestamp() * 1000) < 5000
    info = _get(client, "exchangeInfo")
    assert info["X-MBX-USED-WEIGHT-1M"] == str(1 + 1 + 20)


def test_exchange_info(client, priced):
    body = _get(client, "exchangeInfo").json()
    assert body["timezone"] == "UTC"
    assert body["rateLimits"][0]["limit"] == WEIGHT_PER_MINUTE
    symbols = {s["symbol"]: s for s in body["symbols"]}
    assert set(symbols) == {"BTCUSD", "ETHUSD"}
    btc = symbols["BTCUSD"]
    assert (btc["baseAsset"], btc["quoteAsset"], btc["status"]) == ("BTC", "USD", "TRADING")
    assert btc["orderTypes"] == ["LIMIT", "MARKET"]
    assert btc["permissionSets"] == [["SPOT"]]
    filters = {f["filterType"]: f for f in btc["filters"]}
    assert filters["PRICE_FILTER"] == {
        "filterType": "PRICE_FILTER",
        "minPrice": "0.000000000001",
        "maxPrice": "1000000000",
        "tickSize": "0.000000000001",
    }
    assert filters["LOT_SIZE"]["stepSize"] == "0.00000001"
    assert filters["LOT_SIZE"]["maxQty"] == "1000000000000"
    assert filters["MARKET_LOT_SIZE"] == {**filters["LOT_SIZE"], "filterType": "MARKET_LOT_SIZE"}
    assert filters["NOTIONAL"]["maxNotional"] == "1000000000"
    one = _get(client, "exchangeInfo", symbol="ETHUSD").json()["symbols"]
    assert [s["symbol"] for s in one] == ["ETHUSD"]
    some = _get(client, "exchangeInfo", symbols='["ETHUSD","BTCUSD"]').json()["symbols"]
    assert [s["symbol"] for s in some] == ["ETHUSD", "BTCUSD"]


@pytest.mark.parametrize(
    ("age", "source"), [(0, "simulated"), (3600, "coingecko")], ids=["simulated", "stale"]
)
def test_a_price_orders_cannot_fill_on_is_a_break(client, priced, age, source):
    prices_record(
        prices={"bitcoin": Decimal("64000")},
        source=source,
        as_of=timezone.now() - timedelta(seconds=age),
    )
    symbols = {s["symbol"]: s["status"] for s in _get(client, "exchangeInfo").json()["symbols"]}
    assert symbols == {"BTCUSD": "BREAK", "ETHUSD": "TRADING"}
    # Market data still shows the latest price.
    assert _get(client, "ticker/price", symbol="BTCUSD").json()["price"] == "64000"


def test_ticker_price_and_book_ticker(client, priced):
    assert _get(client, "ticker/price", symbol="BTCUSD").json() == {
        "symbol": "BTCUSD",
        "price": "65000",
    }
    both = _get(client, "ticker/price")
    assert both["X-MBX-USED-WEIGHT-1M"] == str(2 + 4)
    assert {r["symbol"]: r["price"] for r in both.json()} == {"BTCUSD": "65000", "ETHUSD": "3000"}
    book = _get(client, "ticker/bookTicker", symbol="BTCUSD").json()
    # No venue tickers: the minimum half spread, 0.05 % either side.
    assert (book["bidPrice"], book["askPrice"]) == ("64967.5", "65032.5")
    assert Decimal(book["bidQty"]) > 0 and Decimal(book["askQty"]) > 0


def test_ticker_24hr(client, priced):
    now = timezone.now()
    PricePoint.objects.bulk_create(
        [
            PricePoint(coin_id="bitcoin", ts=now - timedelta(hours=3), price=Decimal("66000")),
            PricePoint(coin_id="bitcoin", ts=now - timedelta(hours=2), price=Decimal("63000")),
            PricePoint(coin_id="bitcoin", ts=now - timedelta(days=2), price=Decimal("10")),
        ]
    )
    ticker = _get(client, "ticker/24hr", symbol="BTCUSD").json()
    assert ticker["lastPrice"] == "65000"
    assert ticker["priceChangePercent"] == "2.5"
    assert Decimal(ticker["openPrice"]) * Decimal("1.025") == pytest.approx(Decimal(65000))
    assert (ticker["highPrice"], ticker["lowPrice"]) == ("66000", "63000")
    assert ticker["quoteVolume"] == "650000000" and ticker["volume"] == "10000"
    assert (ticker["firstId"], ticker["lastId"], ticker["count"]) == (-1, -1, 0)
    assert ticker["closeTime"] - ticker["openTime"] == 86_400_000
    eth = _get(client, "ticker/24hr", symbol="ETHUSD").json()
    assert (eth["openPrice"], eth["highPrice"], eth["lowPrice"]) == ("3000", "3000", "3000")
    mini = _get(client, "ticker/24hr", type="MINI").json()
    assert len(mini) == 2 and "bidPrice" not in mini[0] and "lastPrice" in mini[0]
    everything = _get(client, "ticker/24hr")
    assert everything["X-MBX-USED-WEIGHT-1M"] == str(2 + 2 + 80 + 80)


def test_depth_is_synthetic_around_the_venue_spread(client, priced):
    tickers_record(
        coin_id="bitcoin",
        venues=[("binance", "Binance", Decimal("64935")), ("kraken", "Kraken", Decimal("65065"))],
    )
    response = _get(client, "depth", symbol="BTCUSD", limit=5)
    assert response["X-MBX-USED-WEIGHT-1M"] == "5"
    book = response.json()
    assert book["synthetic"] is True
    assert isinstance(book["lastUpdateId"], int)
    bids = [(Decimal(p), Decimal(q)) for p, q in book["bids"]]
    asks = [(Decimal(p), Decimal(q)) for p, q in book["asks"]]
    assert len(bids) == len(asks) == 5
    # Venues 0.2 % apart: best bid and ask 0.1 % either side of the price.
    assert bids[0][0] == pytest.approx(Decimal("64935"), rel=Decimal("0.00001"))
    assert asks[0][0] == pytest.approx(Decimal("65065"), rel=Decimal("0.00001"))
    assert [p for p, _ in bids] == sorted((p for p, _ in bids), reverse=True)
    assert [p for p, _ in asks] == sorted(p for p, _ in asks)
    # Priced to 7 significant digits: cents at 65000.
    assert all(p.as_tuple().exponent >= -2 for p, _ in bids + asks)
    assert _get(client, "depth", symbol="BTCUSD", limit=501)["X-MBX-USED-WEIGHT-1M"] == "55"
    assert len(_get(client, "depth", symbol="ETHUSD", limit=9999).json()["bids"]) == 5000


def test_avg_price(client, priced):
    now = timezone.now()
    PricePoint.objects.bulk_create(
        PricePoint(coin_id="bitcoin", ts=now - timedelta(minutes=m), price=Decimal(p))
        for m, p in ((1, "100"), (2, "200"), (30, "999"))
    )
    body = _get(client, "avgPrice", symbol="BTCUSD").json()
    assert body["mins"] == 5 and Decimal(body["price"]) == 150
    assert isinstance(body["closeTime"], int)
    assert _get(client, "avgPrice", symbol="ETHUSD").json()["price"] == "3000"


def test_klines(client, priced):
    hour = datetime(2026, 1, 1, 10, tzinfo=UTC)
    PricePoint.objects.bulk_create(
        PricePoint(coin_id="bitcoin", ts=hour + timedelta(minutes=m), price=Decimal(100 + m))
        for m in (0, 1, 2, 7)
    )
    start = int(hour.timestamp() * 1000)
    rows = _get(client, "klines", symbol="BTCUSD", interval="5m", startTime=start, limit=3).json()
    assert rows == [
        [start, "100", "102", "100", "102", "0", start + 299_999, "0", 0, "0", "0", "0"],
        [start + 300_000, "107", "107", "107", "107", "0", start + 599_999, "0", 0, "0", "0", "0"],
    ]
    ended = _get(client, "klines", symbol="BTCUSD", interval="1m", endTime=start + 60_000)
    assert [row[0] for row in ended.json()] == [start, start + 60_000]
    assert ended["X-MBX-USED-WEIGHT-1M"] == "4"


def test_trades_are_the_platforms_fills_anonymised(client, priced):
    assert _get(client, "trades", symbol="BTCUSD").json() == []
    buyer = user_create(usd="100000")
    order, _ = order_place(
        user=buyer,
        coin_id="bitcoin",
        side="buy",
        type="market",
        quantity=Decimal("0.5"),
        client_order_id="secret-id",
    )
    order_queue_process(user_id=buyer.pk)
    trades = _get(client, "trades", symbol="BTCUSD").json()
    assert len(trades) == 1
    trade = trades[0]
    assert trade["id"] == order.pk
    assert (trade["price"], trade["qty"], trade["quoteQty"]) == ("65000", "0.5", "32500")
    assert trade["isBuyerMaker"] is False and trade["isBestMatch"] is True
    assert "secret-id" not in str(trades) and buyer.email not in str(trades)
    agg = _get(client, "aggTrades", symbol="BTCUSD").json()
    assert agg == [
        {
            "a": order.pk,
            "p": "65000",
            "q": "0.5",
            "f": order.pk,
            "l": order.pk,
            "T": trade["time"],
            "m": False,
            "M": True,
        }
    ]
    assert _get(client, "trades", symbol="ETHUSD").json() == []


@pytest.mark.parametrize(
    ("path", "query", "code", "msg"),
    [
        ("ticker/price", {"symbol": "DOGEUSD"}, -1121, "Invalid symbol."),
        ("depth", {"symbol": "NOPE"}, -1121, "Invalid symbol."),
        ("exchangeInfo", {"symbols": '["BTCUSD","NOPEUSD"]'}, -1121, "Invalid symbol."),
        (
            "depth",
            {},
            -1102,
            "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
        ),
        (
            "ticker/price",
            {"symbol": "btcusd"},
            -1100,
            "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'.",
        ),
        (
            "ticker/price",
            {"symbols": "BTCUSD"},
            -1100,
            "Illegal characters found in parameter 'symbols'; legal range is "
            '\'^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$\'.',
        ),
        (
            "ticker/price",
            {"symbol": "BTCUSD", "symbols": '["BTCUSD"]'},
            -1128,
            "Combination of optional parameters invalid.",
        ),
        (
            "ticker/24hr",
            {"symbols": '["BTCUSD","BTCUSD"]'},
            -1151,
            "Symbol is present multiple times in the list.",
        ),
        ("ticker/24hr", {"type": "HUGE"}, -1139, "Invalid ticker type."),
        ("klines", {"symbol": "BTCUSD", "interval": "2m"}, -1120, "Invalid interval."),
        ("klines", {"symbol": "BTCUSD", "interval": "1M"}, -1120, "Invalid interval."),
        (
            "klines",
            {"symbol": "BTCUSD"},
            -1102,
            "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.",
        ),
        (
            "klines",
            {"symbol": "BTCUSD", "interval": "1m", "limit": "1001"},
            -1130,
            "Data sent for parameter 'limit' is not valid.",
        ),
        (
            "klines",
            {"symbol": "BTCUSD", "interval": "1m", "limit": "-5"},
            -1100,
            "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.",
        ),
        (
            "klines",
            {"symbol": "BTCUSD", "interval": "1m", "startTime": "99999999999999999999"},
            -1130,
            "Data sent for parameter 'startTime' is not valid.",
        ),
        (
            "trades",
            {"symbol": "BTCUSD", "limit": "0"},
            -1130,
            "Data sent for parameter 'limit' is not valid.",
        ),
        ("depth", {"symbol": "BTCUSD", "limit": "1e3"}, -1100, None),
        (
            "avgPrice",
            {"symbol": ["BTCUSD", "ETHUSD"]},
            -1101,
            "Duplicate values for a parameter detected.",
        ),
        ("ticker/price", {"symbols": "[]"}, -1102, None),
    ],
)
def test_bad_requests_are_binance_errors(client, priced, path, query, code, msg):
    response = _get(client, path, **query)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == code
    assert set(body) == {"code", "msg"}
    if msg is not None:
        assert body["msg"] == msg
    assert int(response["X-MBX-USED-WEIGHT-1M"]) >= 1


def test_unknown_endpoints_and_methods_are_binance_errors(client, db):
    unknown = client.get(BASE + "ticker/nothing")
    assert unknown.status_code == 404
    assert unknown.json() == {"code": -1020, "msg": "This operation is not supported."}
    assert client.post("/binance/whatever").status_code == 404
    wrong_method = client.post(BASE + "ping")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == -1020
    assert wrong_method["Allow"] == "GET, HEAD"
    assert wrong_method["X-MBX-USED-WEIGHT-1M"] == "3"


def test_too_much_weight_is_429_with_retry_after(client, priced, settings):
    minute_fresh()
    for _ in range(WEIGHT_PER_MINUTE // 80):
        assert _get(client, "ticker/24hr").status_code == 200
    refused = _get(client, "ping")
    assert refused.status_code == 429
    assert refused.json()["code"] == -1003
    assert int(refused["Retry-After"]) >= 1
    assert refused["X-MBX-USED-WEIGHT-1M"] == str(WEIGHT_PER_MINUTE + 1)
    settings.RATELIMIT_ENABLE = False
    assert _get(client, "ping").status_code == 200


def test_weight_is_per_ip(client, priced):
    _get(client, "exchangeInfo")
    other = client.get(BASE + "ping", REMOTE_ADDR="10.1.2.3")
    assert other["X-MBX-USED-WEIGHT-1M"] == "1"


def test_redis_down_is_the_platforms_503(client, db, settings):
    unreachable = "redis://127.0.0.1:1/0"
    settings.REDIS_CONNECT_RETRY_SECONDS = 0.3
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": unreachable,
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        }
    }
    response = _get(client, "ping")
    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"
    assert response["Retry-After"]


def test_head_and_security_headers(client, priced):
    response = client.head(BASE + "ticker/price", {"symbol": "BTCUSD"})
    assert response.status_code == 200
    assert response["X-MBX-USED-WEIGHT-1M"] == "2"
    assert "default-src 'none'" in response["Content-Security-Policy"]
    assert response["X-Content-Type-Options"] == "nosniff"


def test_far_future_times_are_refused_not_overflowed(client, priced):
    for name in ("startTime", "endTime"):
        response = _get(
            client, "klines", symbol="BTCUSD", interval="1d", limit=1000, **{name: 32503680000000}
        )
        assert response.status_code == 400 and response.json()["code"] == -1130
    last = _get(client, "klines", symbol="BTCUSD", interval="1d", startTime=32503679999999)
    assert last.status_code == 200 and last.json() == []
