"""The SIGNED endpoints over Django's test client, on the real PostgreSQL and Redis:
Binance's signature and timing rules, its error codes for keys, parameters and orders,
and the one set of orders the native API shares."""

import base64
import hashlib
import hmac
import time
from datetime import timedelta
from decimal import Decimal
from urllib.parse import quote, urlencode

import pytest
from django.test import Client
from django.utils import timezone

from bots.tests.conftest import Credentials, credentials_create
from orders.models import Order
from orders.selectors import ledger_mismatches
from orders.services import order_place, order_queue_process
from orders.tests.factories import limit_order_place, user_create

BASE = "/binance/api/v3/"


def sign(payload: str, credentials: Credentials) -> str:
    if credentials.private_key is not None:
        return quote(base64.b64encode(credentials.private_key.sign(payload.encode())).decode())
    return hmac.new(credentials.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def call(
    client: Client,
    method: str,
    path: str,
    credentials: Credentials | None,
    *,
    in_body: bool | None = None,
    signature: str | None = None,
    **params,
):
    """A signed request as ccxt sends it: GET and DELETE in the query string, POST in a
    form body; ``timestamp`` now unless given."""
    params.setdefault("timestamp", int(time.time() * 1000))
    payload = urlencode(params)
    if credentials is not None:
        payload += "&signature=" + (signature or sign(payload, credentials))
    headers = {"X-MBX-APIKEY": credentials.key} if credentials is not None else {}
    body = method == "POST" if in_body is None else in_body
    if body:
        return client.generic(
            method,
            BASE + path,
            payload,
            content_type="application/x-www-form-urlencoded",
            headers=headers,
        )
    return client.generic(method, f"{BASE}{path}?{payload}", headers=headers)


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def trader(priced):
    return user_create(usd="100000", bitcoin="2")


@pytest.fixture
def hmac_key(trader) -> Credentials:
    return credentials_create(trader)


@pytest.fixture
def ed_key(trader) -> Credentials:
    return credentials_create(trader, ed25519=True)


def test_account_with_hmac_and_ed25519_keys(client, trader, hmac_key, ed_key):
    for credentials in (hmac_key, ed_key):
        response = call(client, "GET", "account", credentials, omitZeroBalances="true")
        assert response.status_code == 200, response.content
        body = response.json()
        balances = {b["asset"]: b for b in body["balances"]}
        assert balances == {
            "USD": {"asset": "USD", "free": "100000", "locked": "0"},
            "BTC": {"asset": "BTC", "free": "2", "locked": "0"},
        }
        assert body["canTrade"] is True and body["accountType"] == "SPOT"
        assert body["uid"] == trader.pk
        assert int(response["X-MBX-USED-WEIGHT-1M"]) >= 20
    # Parameters may come in the query string and the body at once.
    response = call(client, "GET", "account", hmac_key, in_body=True)
    assert response.status_code == 200, response.content


def test_timing_rules(client, hmac_key):
    now = int(time.time() * 1000)
    late = call(client, "GET", "account", hmac_key, timestamp=now - 6000)
    assert (late.status_code, late.json()) == (
        400,
        {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."},
    )
    assert (
        call(client, "GET", "account", hmac_key, timestamp=now - 6000, recvWindow=10000).status_code
        == 200
    )
    ahead = call(client, "GET", "account", hmac_key, timestamp=now + 5000)
    assert ahead.json()["code"] == -1021 and "ahead" in ahead.json()["msg"]
    # Microseconds are taken too.
    assert call(client, "GET", "account", hmac_key, timestamp=now * 1000).status_code == 200
    too_wide = call(client, "GET", "account", hmac_key, recvWindow=60001)
    assert too_wide.json()["code"] == -1102
    missing = call(client, "GET", "account", hmac_key, timestamp="")
    assert missing.json() == {
        "code": -1102,
        "msg": "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.",
    }
    assert call(client, "GET", "account", hmac_key, timestamp="x1").json()["code"] == -1100


def test_key_and_signature_errors(client, trader, hmac_key, ed_key):
    bad = call(client, "GET", "account", hmac_key, signature="00" * 32)
    assert (bad.status_code, bad.json()) == (
        400,
        {"code": -1022, "msg": "Signature for this request is not valid."},
    )
    assert call(client, "GET", "account", ed_key, signature="AAAA").json()["code"] == -1022
    # An HMAC signature of other parameters than those sent.
    tampered = call(client, "GET", "account", hmac_key, signature=sign("timestamp=1", hmac_key))
    assert tampered.json()["code"] == -1022
    unknown = call(client, "GET", "account", Credentials(key="nope", secret=hmac_key.secret))
    assert (unknown.status_code, unknown.json()) == (
        401,
        {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."},
    )
    no_key = call(client, "GET", "account", None)
    assert (no_key.status_code, no_key.json()["code"]) == (401, -2014)
    elsewhere = credentials_create(trader, ip_allowlist=["10.1.2.0/24"])
    assert call(client, "GET", "account", elsewhere).json()["code"] == -2015
    expired = credentials_create(trader, expires_at=timezone.now() + timedelta(milliseconds=1))
    time.sleep(0.01)
    assert call(client, "GET", "account", expired).status_code == 401


def test_scopes(client, trader):
    read_only = credentials_create(trader, scopes=["read"])
    assert call(client, "GET", "openOrders", read_only).status_code == 200
    refused = call(
        client,
        "POST",
        "order",
        read_only,
        symbol="BTCUSD",
        side="BUY",
        type="MARKET",
        quantity="0.01",
    )
    assert (refused.status_code, refused.json()["code"]) == (401, -2015)
    assert not Order.objects.exists()
    trade_only = credentials_create(trader, scopes=["trade"])
    assert call(client, "GET", "account", trade_only).json()["code"] == -2015


_MARKET_BUY = {"side": "BUY", "type": "MARKET", "quantity": "1"}
_LIMIT_BUY = {"side": "BUY", "type": "LIMIT", "quantity": "1", "price": "1"}
_GTC_BUY = {"side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}


@pytest.mark.parametrize(
    ("params", "code", "msg"),
    [
        (_MARKET_BUY | {"side": "HOLD"}, -1117, "Invalid side."),
        (_MARKET_BUY | {"type": "STOP_LOSS"}, -1116, "Invalid orderType."),
        (_LIMIT_BUY | {"timeInForce": "IOC"}, -1115, "Invalid timeInForce."),
        (
            _LIMIT_BUY,
            -1102,
            "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed.",
        ),
        (
            {"side": "BUY", "type": "MARKET"},
            -1102,
            "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!",
        ),
        (
            _MARKET_BUY | {"quoteOrderQty": "10"},
            -1106,
            "Parameter 'quoteOrderQty' sent when not required.",
        ),
        (
            _MARKET_BUY | {"timeInForce": "GTC"},
            -1106,
            "Parameter 'timeInForce' sent when not required.",
        ),
        (_MARKET_BUY | {"quantity": "0.000000001"}, -1013, None),
        (_MARKET_BUY | {"quantity": "0"}, -1013, "Filter failure: LOT_SIZE"),
        (_MARKET_BUY | {"quantity": "1e3"}, -1100, None),
        (
            _GTC_BUY | {"quantity": "1", "price": "0.0000000000001"},
            -1013,
            "Filter failure: PRICE_FILTER",
        ),
        (_GTC_BUY | {"quantity": "100000", "price": "65000"}, -1013, "Filter failure: NOTIONAL"),
        (
            _MARKET_BUY | {"newOrderRespType": "ALL"},
            -1130,
            "Data sent for parameter 'newOrderRespType' is not valid.",
        ),
        (_MARKET_BUY | {"newClientOrderId": "a b"}, -1100, None),
    ],
)
def test_order_parameters_refused(client, hmac_key, params, code, msg):
    for path in ("order", "order/test"):
        response = call(client, "POST", path, hmac_key, symbol="BTCUSD", **params)
        assert response.status_code == 400, response.content
        assert response.json()["code"] == code
        if msg is not None:
            assert response.json()["msg"] == msg
    assert not Order.objects.exists()


def test_order_test_places_nothing(client, hmac_key):
    response = call(
        client, "POST", "order/test", hmac_key, symbol="BTCUSD", side="BUY", type="MARKET",
        quantity="0.5",
    )  # fmt: skip
    assert (response.status_code, response.json()) == (200, {})
    assert not Order.objects.exists()
    unknown = call(
        client, "POST", "order/test", hmac_key, symbol="NOPEUSD", side="BUY", type="MARKET",
        quantity="0.5",
    )  # fmt: skip
    assert unknown.json()["code"] == -1121


def test_limit_order_round_trip_shared_with_the_native_api(client, trader, hmac_key):
    placed = call(
        client, "POST", "order", hmac_key, symbol="BTCUSD", side="BUY", type="LIMIT",
        timeInForce="GTC", quantity="0.5", price="60000", newClientOrderId="my-limit_1",
    )  # fmt: skip
    assert placed.status_code == 200, placed.content
    body = placed.json()
    order = Order.objects.get()
    assert (order.user_id, order.type, order.limit_price, order.quantity) == (
        trader.pk,
        "limit",
        Decimal("60000"),
        Decimal("0.5"),
    )
    assert order.client_order_id == "my-limit_1"
    assert body["orderId"] == order.pk and body["status"] == "NEW"
    assert (body["type"], body["side"], body["timeInForce"]) == ("LIMIT", "BUY", "GTC")
    assert body["fills"] == []
    # The same newClientOrderId answers the first order and reserves nothing more.
    again = call(
        client, "POST", "order", hmac_key, symbol="BTCUSD", side="BUY", type="LIMIT",
        timeInForce="GTC", quantity="0.5", price="60000", newClientOrderId="my-limit_1",
    )  # fmt: skip
    assert again.json()["orderId"] == order.pk and Order.objects.count() == 1
    account = call(client, "GET", "account", hmac_key).json()
    usd = next(b for b in account["balances"] if b["asset"] == "USD")
    assert Decimal(usd["locked"]) > 30000

    by_id = call(client, "GET", "order", hmac_key, symbol="BTCUSD", orderId=order.pk).json()
    by_client = call(
        client, "GET", "order", hmac_key, symbol="BTCUSD", origClientOrderId="my-limit_1"
    ).json()
    assert by_id == by_client and by_id["origQty"] == "0.5" and by_id["price"] == "60000"
    open_orders = call(client, "GET", "openOrders", hmac_key).json()
    assert [o["orderId"] for o in open_orders] == [order.pk]
    assert call(client, "GET", "openOrders", hmac_key, symbol="ETHUSD").json() == []
    # The native API sees it.
    native = [o["id"] for o in _native_orders(trader)]
    assert native == [order.pk]

    cancelled = call(
        client, "DELETE", "order", hmac_key, symbol="BTCUSD", origClientOrderId="my-limit_1"
    )
    assert cancelled.status_code == 200, cancelled.content
    assert cancelled.json()["status"] == "CANCELED"
    assert cancelled.json()["origClientOrderId"] == "my-limit_1"
    order.refresh_from_db()
    assert order.status == "cancelled"
    twice = call(client, "DELETE", "order", hmac_key, symbol="BTCUSD", orderId=order.pk)
    assert twice.json() == {"code": -2011, "msg": "Unknown order sent."}
    missing = call(client, "GET", "order", hmac_key, symbol="BTCUSD", orderId=order.pk + 100)
    assert missing.json() == {"code": -2013, "msg": "Order does not exist."}
    neither = call(client, "GET", "order", hmac_key, symbol="BTCUSD")
    assert neither.json()["code"] == -1102
    listed = call(client, "GET", "allOrders", hmac_key, symbol="BTCUSD").json()
    assert [(o["orderId"], o["status"]) for o in listed] == [(order.pk, "CANCELED")]
    assert not ledger_mismatches()


def _native_orders(user) -> list[dict]:
    from accounts.services import session_start

    _, issued = session_start(user=user)
    response = Client().get(
        "/api/v1/orders", headers={"Authorization": f"Bearer {issued['access']}"}
    )
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_an_order_placed_natively_is_seen_and_cancelled_here(client, trader, hmac_key):
    native = limit_order_place(trader, side="sell", quantity="1", limit_price="90000")
    open_orders = call(client, "GET", "openOrders", hmac_key, symbol="BTCUSD").json()
    assert [(o["orderId"], o["side"], o["price"]) for o in open_orders] == [
        (native.pk, "SELL", "90000")
    ]
    other = limit_order_place(trader, side="sell", quantity="0.5", limit_price="95000")
    cancelled = call(client, "DELETE", "openOrders", hmac_key, symbol="BTCUSD")
    assert cancelled.status_code == 200, cancelled.content
    assert sorted(o["orderId"] for o in cancelled.json()) == [native.pk, other.pk]
    assert set(Order.objects.values_list("status", flat=True)) == {"cancelled"}


def test_market_order_without_a_worker_answers_new_after_the_wait(client, hmac_key):
    started = time.monotonic()
    response = call(
        client, "POST", "order", hmac_key, symbol="BTCUSD", side="SELL", type="MARKET",
        quantity="0.1", newOrderRespType="RESULT",
    )  # fmt: skip
    waited = time.monotonic() - started
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "NEW" and "fills" not in body
    assert 1.9 <= waited < 4


def test_insufficient_funds_and_other_users_orders(client, trader, hmac_key):
    poor = call(
        client, "POST", "order", hmac_key, symbol="BTCUSD", side="BUY", type="MARKET",
        quantity="10", newOrderRespType="ACK",
    )  # fmt: skip
    assert poor.json() == {
        "code": -2010,
        "msg": "Account has insufficient balance for requested action.",
    }
    stranger = user_create(usd="1000")
    theirs, _ = order_place(
        user=stranger, coin_id="bitcoin", side="buy", type="market", quantity=Decimal("0.001")
    )
    order_queue_process(user_id=stranger.pk)
    assert call(client, "GET", "order", hmac_key, symbol="BTCUSD", orderId=theirs.pk).json()[
        "code"
    ] == (-2013)
    assert call(client, "GET", "myTrades", hmac_key, symbol="BTCUSD").json() == []


def test_quote_order_qty_and_my_trades(client, trader, hmac_key):
    response = call(
        client, "POST", "order", hmac_key, symbol="BTCUSD", side="BUY", type="MARKET",
        quoteOrderQty="650", newOrderRespType="ACK",
    )  # fmt: skip
    assert response.status_code == 200, response.content
    assert set(response.json()) == {
        "symbol",
        "orderId",
        "orderListId",
        "clientOrderId",
        "transactTime",
    }
    order = Order.objects.get()
    assert order.quantity == Decimal("0.01") and order.client_order_id  # one made up
    order_queue_process(user_id=trader.pk)
    trades = call(client, "GET", "myTrades", hmac_key, symbol="BTCUSD").json()
    assert [(t["orderId"], t["price"], t["qty"], t["isBuyer"]) for t in trades] == [
        (order.pk, "65000", "0.01", True)
    ]
    assert call(client, "GET", "myTrades", hmac_key, symbol="ETHUSD").json() == []
    too_small = call(
        client, "POST", "order", hmac_key, symbol="BTCUSD", side="BUY", type="MARKET",
        quoteOrderQty="0.0000001",
    )  # fmt: skip
    assert too_small.json() == {"code": -1013, "msg": "Filter failure: LOT_SIZE"}


def test_order_rate_limit_is_the_native_one(client, hmac_key, settings):
    settings.RATELIMIT_ENABLE = True
    answers = [
        call(
            client, "POST", "order", hmac_key, symbol="BTCUSD", side="SELL", type="LIMIT",
            timeInForce="GTC", quantity="0.01", price="99000", newOrderRespType="ACK",
        ).status_code
        for _ in range(21)
    ]  # fmt: skip
    assert answers[:20] == [200] * 20
    assert answers[20] == 429


def test_methods(client, hmac_key):
    head = call(client, "HEAD", "allOrders", hmac_key, symbol="BTCUSD")
    assert head.status_code == 200 and head["X-MBX-USED-WEIGHT-1M"]
    wrong = call(client, "POST", "allOrders", hmac_key, symbol="BTCUSD")
    assert (wrong.status_code, wrong.json()["code"]) == (405, -1020)
    assert call(client, "GET", "order/test", hmac_key).status_code == 405


@pytest.mark.parametrize(
    "params",
    [
        {"orderId": "99999999999999999999"},
        {"orderId": "9223372036854775807"},
        {"orderId": "-1"},
        {"orderId": "1.5"},
        {"origClientOrderId": "x" * 37},
        {"origClientOrderId": "ü"},
    ],
)
def test_odd_order_ids_are_4xx(client, hmac_key, params):
    for method in ("GET", "DELETE"):
        response = call(client, method, "order", hmac_key, symbol="BTCUSD", **params)
        assert 400 <= response.status_code < 500, response.content
        assert response.json()["code"] in (-1100, -1130, -2011, -2013)


def test_odd_list_parameters_are_4xx(client, hmac_key):
    for params in (
        {"orderId": "99999999999999999999"},
        {"orderId": "abc"},
        {"limit": "0"},
        {"limit": "1001"},
        {"startTime": "99999999999999999"},
    ):
        for path in ("allOrders", "myTrades"):
            response = call(client, "GET", path, hmac_key, symbol="BTCUSD", **params)
            assert response.status_code == 400, (path, params, response.content)
    assert call(client, "GET", "myTrades", hmac_key, symbol="BTCUSD", fromId="x").status_code == 400
