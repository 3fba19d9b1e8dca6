"""Platform orders and balances in Binance's shapes (rest-api.md: "Query order", "New
order" ACK/RESULT/FULL, "Account information", "Account trade list"), for the signed
endpoints. Numbers are decimal strings, times epoch ms.

A platform order fills whole, at one price, in one step, so Binance's partial states
never occur: ``pending`` (queued) and ``open`` (resting limit) are ``NEW``, then
``FILLED``, ``CANCELED`` or ``REJECTED``. Its one fill is one trade whose id is the
order's id, its commission the platform's fee, always in ``USD``.
"""

from decimal import Decimal

from django.conf import settings

from bots.selectors import QUOTE_ASSET, ms
from cryptovault.decimals import decimal_str
from orders.models import USD, Balance, Order
from orders.services import buy_cost, sell_proceeds

ORDER_STATUS: dict[str, str] = {
    Order.Status.PENDING: "NEW",
    Order.Status.OPEN: "NEW",
    Order.Status.FILLED: "FILLED",
    Order.Status.CANCELLED: "CANCELED",
    Order.Status.REJECTED: "REJECTED",
}
ORDER_TYPE: dict[str, str] = {Order.Type.MARKET: "MARKET", Order.Type.LIMIT: "LIMIT"}
ORDER_SIDE: dict[str, str] = {Order.Side.BUY: "BUY", Order.Side.SELL: "SELL"}


def asset_name(*, asset: str, coin_symbols: dict[str, str]) -> str:
    """A balance's Binance asset: ``USD`` for usd, else the coin's upper-case symbol
    (``coin_symbols``: coin id -> symbol, as ``Coin.symbol``)."""
    if asset == USD:
        return QUOTE_ASSET
    return coin_symbols.get(asset, asset).upper()


def order_quote_qty(order: Order) -> Decimal:
    """The usd notional the fill booked (``cummulativeQuoteQty``), rounded as the ledger
    rounds it (up on buys, down on sells); 0 unless filled."""
    if order.status != Order.Status.FILLED or order.filled_price is None:
        return Decimal(0)
    cost = buy_cost if order.side == Order.Side.BUY else sell_proceeds
    notional, _fee = cost(quantity=order.quantity, price=order.filled_price)
    return notional


def _executed_qty(order: Order) -> Decimal:
    return order.quantity if order.status == Order.Status.FILLED else Decimal(0)


def _num(value: Decimal | None) -> str:
    return decimal_str(value) or "0"


def order_to_binance(order: Order, *, symbol: str) -> dict:
    """``GET /api/v3/order`` (also ``openOrders``, ``allOrders``, ``DELETE order``)."""
    active = order.status in Order.ACTIVE_STATUSES
    return {
        "symbol": symbol,
        "orderId": order.pk,
        "orderListId": -1,
        "clientOrderId": order.client_order_id or "",
        "price": _num(order.limit_price),
        "origQty": decimal_str(order.quantity),
        "executedQty": _num(_executed_qty(order)),
        "cummulativeQuoteQty": _num(order_quote_qty(order)),
        "status": ORDER_STATUS[order.status],
        "timeInForce": "GTC",
        "type": ORDER_TYPE[order.type],
        "side": ORDER_SIDE[order.side],
        "stopPrice": "0",
        "icebergQty": "0",
        "time": ms(order.created_at),
        "updateTime": ms(order.updated_at),
        "isWorking": active,
        "workingTime": ms(order.created_at) if active else -1,
        "origQuoteOrderQty": "0",
        "selfTradePreventionMode": "NONE",
    }


def order_fills(order: Order) -> list[dict]:
    """The ``fills`` of a ``FULL`` new-order answer: one, or none before the fill."""
    if order.status != Order.Status.FILLED:
        return []
    return [
        {
            "price": decimal_str(order.filled_price),
            "qty": decimal_str(order.quantity),
            "commission": _num(order.fee),
            "commissionAsset": QUOTE_ASSET,
            "tradeId": order.pk,
        }
    ]


def order_placed_to_binance(order: Order, *, symbol: str, response_type: str) -> dict:
    """``POST /api/v3/order`` in ``newOrderRespType`` ``ACK``, ``RESULT`` or ``FULL``."""
    ack = {
        "symbol": symbol,
        "orderId": order.pk,
        "orderListId": -1,
        "clientOrderId": order.client_order_id or "",
        "transactTime": ms(order.updated_at),
    }
    if response_type == "ACK":
        return ack
    full = order_to_binance(order, symbol=symbol)
    result = {
        **ack,
        **{
            key: full[key]
            for key in (
                "price",
                "origQty",
                "executedQty",
                "origQuoteOrderQty",
                "cummulativeQuoteQty",
                "status",
                "timeInForce",
                "type",
                "side",
                "workingTime",
                "selfTradePreventionMode",
            )
        },
    }
    if response_type == "FULL":
        result["fills"] = order_fills(order)
    return result


def order_cancelled_to_binance(order: Order, *, symbol: str) -> dict:
    """``DELETE /api/v3/order`` (and each item of ``DELETE openOrders``)."""
    full = order_to_binance(order, symbol=symbol)
    keep = (
        "symbol", "orderId", "orderListId", "clientOrderId", "price", "origQty", "executedQty",
        "cummulativeQuoteQty", "status", "timeInForce", "type", "side", "selfTradePreventionMode",
    )  # fmt: skip
    return {
        "origClientOrderId": full["clientOrderId"],
        **{key: full[key] for key in keep},
        "transactTime": ms(order.updated_at),
    }


def trade_to_binance(order: Order, *, symbol: str) -> dict:
    """``GET /api/v3/myTrades``: a filled order's one trade, from its owner's side."""
    return {
        "symbol": symbol,
        "id": order.pk,
        "orderId": order.pk,
        "orderListId": -1,
        "price": decimal_str(order.filled_price),
        "qty": decimal_str(order.quantity),
        "quoteQty": decimal_str(order_quote_qty(order)),
        "commission": _num(order.fee),
        "commissionAsset": QUOTE_ASSET,
        "time": ms(order.updated_at),
        "isBuyer": order.side == Order.Side.BUY,
        "isMaker": order.type == Order.Type.LIMIT,
        "isBestMatch": True,
    }


def account_to_binance(
    *, balances: list[Balance], coin_symbols: dict[str, str], uid: int, can_trade: bool
) -> dict:
    """``GET /api/v3/account``: the paper wallet's balances (``free`` = available,
    ``locked`` = reserved for open orders); maker and taker pay the one platform fee."""
    rate = Decimal(str(settings.TRADING_FEE_RATE))
    updated = max((b.updated_at for b in balances if b.updated_at), default=None)
    return {
        "makerCommission": int(rate * 10000),
        "takerCommission": int(rate * 10000),
        "buyerCommission": 0,
        "sellerCommission": 0,
        "commissionRates": {
            "maker": decimal_str(rate),
            "taker": decimal_str(rate),
            "buyer": "0",
            "seller": "0",
        },
        "canTrade": can_trade,
        "canWithdraw": False,
        "canDeposit": False,
        "brokered": False,
        "requireSelfTradePrevention": False,
        "preventSor": False,
        "updateTime": ms(updated) if updated else 0,
        "accountType": "SPOT",
        "balances": [
            {
                "asset": asset_name(asset=b.asset, coin_symbols=coin_symbols),
                "free": _num(b.available),
                "locked": _num(b.locked),
            }
            for b in balances
        ],
        "permissions": ["SPOT"],
        "uid": uid,
    }
