"""Orders placed and cancelled through the Binance-compatible API: Binance's parameters
turned into the native order services' (``orders.services.order_place`` and
``order_cancel``), so both APIs share one set of orders, balances and ledger."""

import time
from decimal import ROUND_DOWN, Decimal

from django.utils.crypto import get_random_string

from accounts.models import User
from bots import errors
from bots.selectors import QUANTITY_STEP, Market
from cryptovault.exceptions import ApplicationError
from markets.selectors import price_get_fresh
from orders.models import Order
from orders.services import order_cancel, order_place

# How long a RESULT/FULL answer to a market order waits for the queue to fill it, and
# the pauses between looks at the order's row (growing: most fills land in the first
# tens of milliseconds, and a slow queue is not polled hard).
FINAL_WAIT_SECONDS = 2.0
FINAL_WAIT_PAUSES = (0.01, 0.02, 0.04, 0.08, 0.15, 0.25)
CLIENT_ORDER_ID_LENGTH = 22
_CLIENT_ORDER_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def quote_order_quantity(*, market: Market, quote_order_qty: Decimal) -> Decimal:
    """The base quantity a market order for ``quote_order_qty`` usd buys or sells: the
    amount at the latest fresh price, rounded down to the LOT_SIZE step (the fee is
    charged on top, in usd, as on every platform order). A stale or missing price is
    -2010 "Market is closed."; an amount under one step -1013 LOT_SIZE."""
    price = price_get_fresh(coin_id=market.coin_id).price
    quantity = (quote_order_qty / price).quantize(QUANTITY_STEP, rounding=ROUND_DOWN)
    if quantity <= 0:
        raise errors.filter_failure("LOT_SIZE")
    return quantity


def binance_order_place(
    *,
    user: User,
    market: Market,
    side: str,
    type: str,
    quantity: Decimal | None,
    quote_order_qty: Decimal | None,
    price: Decimal | None,
    client_order_id: str | None,
) -> tuple[Order, bool]:
    """Place a ``BUY``/``SELL`` ``MARKET``/``LIMIT`` order (validated by the caller:
    exactly one of ``quantity`` and ``quote_order_qty``, ``price`` for limits only).
    Without ``newClientOrderId`` one is made up, as Binance does; a repeated one
    returns the first order (``created`` False)."""
    if quantity is None:
        if quote_order_qty is None:
            raise ValueError("quantity or quote_order_qty is required")
        quantity = quote_order_quantity(market=market, quote_order_qty=quote_order_qty)
    return order_place(
        user=user,
        coin_id=market.coin_id,
        side=Order.Side.BUY if side == "BUY" else Order.Side.SELL,
        type=Order.Type.LIMIT if type == "LIMIT" else Order.Type.MARKET,
        quantity=quantity,
        limit_price=price,
        client_order_id=client_order_id
        or get_random_string(CLIENT_ORDER_ID_LENGTH, _CLIENT_ORDER_ID_ALPHABET),
    )


def order_settled_wait(*, order: Order, timeout: float = FINAL_WAIT_SECONDS) -> Order:
    """The order once the queue has taken it (no longer ``pending``: filled, rejected,
    or a resting limit), or as it is when ``timeout`` runs out. Reads one status column
    per look, the full row once at the end."""
    deadline = time.monotonic() + timeout
    pauses = iter(FINAL_WAIT_PAUSES)
    pause = FINAL_WAIT_PAUSES[0]
    rows = Order.objects.filter(pk=order.pk)
    while rows.filter(status=Order.Status.PENDING).exists():
        left = deadline - time.monotonic()
        if left <= 0:
            return order
        pause = next(pauses, pause)
        time.sleep(min(pause, left))
    order.refresh_from_db()
    return order


def binance_orders_cancel(*, user: User, orders: list[Order]) -> list[Order]:
    """Cancel each of ``orders`` still active by the time its turn comes (one racing a
    fill is skipped)."""
    cancelled = []
    for order in orders:
        try:
            cancelled.append(order_cancel(order_id=order.pk, user=user))
        except ApplicationError as exc:
            if exc.code != "order_not_cancellable":
                raise
    return cancelled
