"""Platform orders, trades and balances in Binance's shapes, from orders placed, filled,
cancelled and rejected through ``orders.services``; and the platform's errors as
Binance's."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from bots import errors
from bots.mapping import (
    account_to_binance,
    order_placed_to_binance,
    order_to_binance,
    trade_to_binance,
)
from cryptovault.exceptions import ApplicationError
from cryptovault.ratelimit import RateLimited
from markets.services import prices_record
from orders.models import Balance
from orders.services import order_cancel, order_place, order_queue_process
from orders.tests.factories import user_create

pytestmark = pytest.mark.usefixtures("priced")


def _place(user, **fields):
    defaults = {"coin_id": "bitcoin", "side": "buy", "type": "market"}
    return order_place(user=user, **{**defaults, **fields})[0]


def _refresh(order):
    order.refresh_from_db()
    return order


def test_a_filled_market_buy():
    user = user_create(usd="100000")
    order = _place(user, quantity=Decimal("0.1"), client_order_id="bot-1")
    pending = order_to_binance(order, symbol="BTCUSD")
    assert (pending["status"], pending["executedQty"], pending["isWorking"]) == ("NEW", "0", True)
    order_queue_process(user_id=user.pk)
    filled = order_to_binance(_refresh(order), symbol="BTCUSD")
    assert filled == {
        "symbol": "BTCUSD",
        "orderId": order.pk,
        "orderListId": -1,
        "clientOrderId": "bot-1",
        "price": "0",
        "origQty": "0.1",
        "executedQty": "0.1",
        "cummulativeQuoteQty": "6500",
        "status": "FILLED",
        "timeInForce": "GTC",
        "type": "MARKET",
        "side": "BUY",
        "stopPrice": "0",
        "icebergQty": "0",
        "time": int(order.created_at.timestamp() * 1000),
        "updateTime": int(order.updated_at.timestamp() * 1000),
        "isWorking": False,
        "workingTime": -1,
        "origQuoteOrderQty": "0",
        "selfTradePreventionMode": "NONE",
    }
    full = order_placed_to_binance(order, symbol="BTCUSD", response_type="FULL")
    assert full["transactTime"] == filled["updateTime"]
    assert full["fills"] == [
        {
            "price": "65000",
            "qty": "0.1",
            "commission": "6.5",
            "commissionAsset": "USD",
            "tradeId": order.pk,
        }
    ]
    assert set(order_placed_to_binance(order, symbol="BTCUSD", response_type="ACK")) == {
        "symbol",
        "orderId",
        "orderListId",
        "clientOrderId",
        "transactTime",
    }
    result = order_placed_to_binance(order, symbol="BTCUSD", response_type="RESULT")
    assert "fills" not in result and result["status"] == "FILLED"
    trade = trade_to_binance(order, symbol="BTCUSD")
    assert (trade["isBuyer"], trade["isMaker"], trade["quoteQty"]) == (True, False, "6500")
    assert trade["commission"] == "6.5" and trade["orderId"] == order.pk


def test_a_resting_limit_sell_then_cancelled():
    user = user_create(bitcoin="1")
    order = _place(
        user, side="sell", type="limit", quantity=Decimal("0.5"), limit_price=Decimal("70000.5")
    )
    order_queue_process(user_id=user.pk)
    resting = order_to_binance(_refresh(order), symbol="BTCUSD")
    assert (resting["status"], resting["type"], resting["side"]) == ("NEW", "LIMIT", "SELL")
    assert (resting["price"], resting["origQty"], resting["clientOrderId"]) == (
        "70000.5",
        "0.5",
        "",
    )
    assert resting["workingTime"] == resting["time"]
    order_cancel(order_id=order.pk, user=user)
    cancelled = order_to_binance(_refresh(order), symbol="BTCUSD")
    assert (cancelled["status"], cancelled["executedQty"], cancelled["isWorking"]) == (
        "CANCELED",
        "0",
        False,
    )


def test_a_market_order_on_a_stale_price_is_rejected():
    user = user_create(usd="100000")
    prices_record(prices={"bitcoin": Decimal("65000")}, as_of=timezone.now() - timedelta(hours=1))
    order = _place(user, quantity=Decimal("0.1"))
    order_queue_process(user_id=user.pk)
    assert order_to_binance(_refresh(order), symbol="BTCUSD")["status"] == "REJECTED"


def test_the_account():
    user = user_create(usd="1000", bitcoin="0.5")
    _place(user, side="sell", type="limit", quantity=Decimal("0.2"), limit_price=Decimal("90000"))
    balances = list(Balance.objects.filter(user=user).order_by("asset"))
    account = account_to_binance(
        balances=balances, coin_symbols={"bitcoin": "btc"}, uid=user.pk, can_trade=True
    )
    assert account["balances"] == [
        {"asset": "BTC", "free": "0.3", "locked": "0.2"},
        {"asset": "USD", "free": "1000", "locked": "0"},
    ]
    assert account["commissionRates"]["taker"] == "0.001"
    assert (account["makerCommission"], account["accountType"]) == (10, "SPOT")
    assert account["updateTime"] > 0


@pytest.mark.parametrize(
    ("code", "status", "binance"),
    [
        (
            "insufficient_funds",
            400,
            (-2010, "Account has insufficient balance for requested action."),
        ),
        ("not_found", 404, (-2013, "Order does not exist.")),
        ("order_not_cancellable", 409, (-2011, "Unknown order sent.")),
        ("price_stale", 503, (-2010, "Market is closed.")),
        ("unknown_coin", 400, (-1121, "Invalid symbol.")),
        ("invalid", 400, (-1013, "The order is worth too much.")),
        ("something_new", 400, (-1013, "The order is worth too much.")),
    ],
)
def test_application_errors_map_to_binance_errors(code, status, binance):
    exc = ApplicationError("The order is worth too much.", code=code, status_code=status)
    mapped = errors.from_application_error(exc)
    assert (mapped.code, mapped.msg, mapped.status) == (*binance, 400)


def test_the_real_insufficient_funds_error_maps():
    user = user_create(usd="10")
    with pytest.raises(ApplicationError) as raised:
        _place(user, quantity=Decimal("1"))
    assert errors.from_application_error(raised.value).body() == {
        "code": -2010,
        "msg": "Account has insufficient balance for requested action.",
    }


def test_a_rate_limit_keeps_429_and_retry_after():
    mapped = errors.from_application_error(RateLimited(7))
    assert (mapped.code, mapped.status, mapped.headers) == (-1015, 429, {"Retry-After": "7"})
