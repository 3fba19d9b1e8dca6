"""Writes for wallets, the ledger and orders.

Money rules: every change of a balance's total writes a ledger entry in the same
transaction; balance rows are locked with ``select_for_update`` in primary-key
order (so two transactions touching the same rows can never deadlock); the
database refuses negative balances (``CHECK >= 0``) as a last line of defence.
"""

import logging
from datetime import timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_redis import get_redis_connection
from prometheus_client import Counter
from rest_framework import status as http

from accounts.models import User
from cryptovault import metrics
from cryptovault.decimals import decimal_str
from cryptovault.exceptions import TRANSIENT_ERRORS, ApplicationError
from markets.models import Coin
from markets.selectors import (
    PriceUnavailable,
    price_get_fresh,
    price_quotes,
    prices_tradable,
)
from notifications.services import deliveries_batched, notification_create, order_event_push
from orders.models import USD, Balance, LedgerEntry, Order
from orders.serializers import OrderOutputSerializer

logger = logging.getLogger(__name__)

# Quantities and usd amounts are kept to 8 decimal places (a satoshi, and far
# below a cent), so every ledger amount is exact in the database.
QUANTUM = Decimal("0.00000001")

# The bounds of an order besides its limit price (cryptovault.decimals.PRICE_MAX), enforced
# by the API and documented in the README: with amounts of 8 places, a notional under the
# cap stays far inside Decimal's 28 significant digits and the ledger's 20 integer
# digits, so no order can overflow.
ORDER_QUANTITY_MAX = Decimal("1000000000000")
# Decimal places an order's quantity and limit price may have (quantities are ledger
# amounts: QUANTUM).
ORDER_QUANTITY_PLACES = 8
ORDER_PRICE_PLACES = 12
ORDER_NOTIONAL_MAX = Decimal("1000000000")
# An operator's credit or debit moves at most this much of an asset at a time.
WALLET_ADJUST_MAX = Decimal("1000000000000")

# A market buy reserves its cost at the reference price plus this buffer (capped at
# what is available), so a price rise between placing and filling is usually covered.
# A larger rise takes the difference from the available balance at fill time, and if
# that is not enough the order is rejected (funds released, nothing overspent).
MARKET_BUY_BUFFER = Decimal("0.02")

# Orders processed per transaction when a user's queue has piled up.
QUEUE_BATCH_SIZE = 100


def quantize_down(value: Decimal) -> Decimal:
    return value.quantize(QUANTUM, rounding=ROUND_DOWN)


def quantize_up(value: Decimal) -> Decimal:
    return value.quantize(QUANTUM, rounding=ROUND_UP)


def balances_lock(*, user: User, assets: list[str]) -> dict[str, Balance]:
    """Lock (creating if missing) the user's balance rows for ``assets``.

    Must run inside a transaction. Rows are locked in primary-key order.
    """
    wanted = sorted(set(assets))
    locked = {
        b.asset: b
        for b in Balance.objects.select_for_update()
        .filter(user=user, asset__in=wanted)
        .order_by("pk")
    }
    missing = [a for a in wanted if a not in locked]
    if missing:
        # Concurrent creators are harmless: the unique (user, asset) makes the
        # losers no-ops; then lock everything again in pk order.
        Balance.objects.bulk_create(
            [Balance(user=user, asset=a) for a in missing], ignore_conflicts=True
        )
        locked = {
            b.asset: b
            for b in Balance.objects.select_for_update()
            .filter(user=user, asset__in=wanted)
            .order_by("pk")
        }
    return locked


def ledger_post(
    *,
    balance: Balance,
    kind: str,
    amount: Decimal,
    order: Order | None = None,
    memo: str = "",
) -> LedgerEntry:
    """Change ``balance.available`` by ``amount`` (signed) and return the unsaved entry.

    The balance must be locked; callers save it and the entry. Fills release their
    reservation into ``available`` first, so trades never touch ``locked`` here.
    """
    balance.available += amount
    if balance.available < 0:
        raise ApplicationError("Insufficient funds.", code="insufficient_funds")
    return LedgerEntry(
        user_id=balance.user_id,
        asset=balance.asset,
        kind=kind,
        amount=amount,
        balance_after=balance.available + balance.locked,
        order=order,
        memo=memo,
    )


def _balance_save(balance: Balance) -> None:
    balance.save(update_fields=["available", "locked", "updated_at"])


def _balances_save(balances: list[Balance]) -> None:
    """Save several locked balances in one UPDATE (a fill changes usd and the coin)."""
    if len(balances) == 1:
        _balance_save(balances[0])
    elif balances:
        now = timezone.now()  # bulk_update skips auto_now
        for balance in balances:
            balance.updated_at = now
        Balance.objects.bulk_update(balances, ["available", "locked", "updated_at"])


# What a fill reads of its user besides the row: the email preferences, which
# notification_create consults (joined, instead of one query per queue run).
_ORDER_USER = ("user", "user__notification_preference")


def wallet_credit_signup_bonus(*, user: User) -> bool:
    """Credit ``SIGNUP_BONUS_USD`` once per user. Returns whether this call credited.

    Safe under concurrency: the usd balance row lock serialises racing calls, and a
    partial unique index on the ledger (one ``signup_bonus`` per user) backs it up.
    """
    amount = quantize_down(Decimal(str(settings.SIGNUP_BONUS_USD)))
    try:
        with transaction.atomic():
            balance = balances_lock(user=user, assets=[USD])[USD]
            if LedgerEntry.objects.filter(user=user, kind=LedgerEntry.Kind.SIGNUP_BONUS).exists():
                return False
            entry = ledger_post(
                balance=balance,
                kind=LedgerEntry.Kind.SIGNUP_BONUS,
                amount=amount,
                memo="Signup bonus",
            )
            entry.save()
            _balance_save(balance)
    except IntegrityError:
        return False
    return True


@transaction.atomic
def wallet_adjust(
    *, user: User, asset: str, amount: Decimal, actor: User | None = None, reason: str
) -> LedgerEntry:
    """Operator credit (amount > 0) or debit (amount < 0) of ``asset``.

    A debit can only take what is available (never reserved funds, never below
    zero). The caller records the audit entry.
    """
    asset = asset.strip().lower()
    if asset != USD and not Coin.objects.filter(pk=asset).exists():
        raise ApplicationError(f"Unknown asset {asset!r}: usd or a coin id.", code="unknown_asset")
    if not amount.is_finite() or amount == 0 or abs(amount) > WALLET_ADJUST_MAX:
        message = f"Amount must be a non-zero number of at most {decimal_str(WALLET_ADJUST_MAX)}."
        raise ApplicationError(message, code="invalid")
    amount = quantize_down(amount) if amount > 0 else -quantize_down(-amount)
    if amount == 0:
        raise ApplicationError("Amount is below the ledger precision.", code="invalid")
    balance = balances_lock(user=user, assets=[asset])[asset]
    kind = LedgerEntry.Kind.OPERATOR_CREDIT if amount > 0 else LedgerEntry.Kind.OPERATOR_DEBIT
    actor_label = getattr(actor, "email", None) or (str(actor) if actor else "system")
    entry = ledger_post(
        balance=balance, kind=kind, amount=amount, memo=f"{actor_label}: {reason}"[:255]
    )
    entry.save()
    _balance_save(balance)
    return entry


# --- Orders ------------------------------------------------------------------------


def fee_for(notional: Decimal) -> Decimal:
    return quantize_up(notional * settings.TRADING_FEE_RATE)


def buy_cost(*, quantity: Decimal, price: Decimal) -> tuple[Decimal, Decimal]:
    """(notional, fee) of buying at ``price``; both rounded in the house's favour.

    Monotonic in ``price``, so a reservation made at a limit covers any fill at or
    below it exactly.
    """
    notional = quantize_up(quantity * price)
    return notional, fee_for(notional)


def sell_proceeds(*, quantity: Decimal, price: Decimal) -> tuple[Decimal, Decimal]:
    """(notional, fee) of selling at ``price``; the usd credited is notional - fee."""
    notional = quantize_down(quantity * price)
    return notional, fee_for(notional)


def _reference_price(*, coin_id: str) -> Decimal:
    """The price a market buy reserves against: the latest cached one, even if stale.

    A stale price is still a fair estimate for the reservation; the queue refuses to
    fill on it and rejects the order (releasing the funds).
    """
    try:
        return price_get_fresh(coin_id=coin_id).price
    except PriceUnavailable as exc:
        quote = price_quotes().get(coin_id) if exc.code == "price_stale" else None
        if quote is None:
            raise
        return Decimal(quote["usd"])


def _queue_key(user_id: int) -> str:
    return f"cv:orders:queued:{user_id}"


# A run of the queue that was enqueued but never started (message lost) stops
# suppressing new runs after this long; the sweep re-enqueues its orders anyway.
QUEUE_MARK_SECONDS = 60


def _queue_enqueue(user_id: int, *, force: bool = False) -> None:
    """Enqueue a run of the user's queue unless one is already waiting to start.

    The mark is set here and cleared by the run as it starts, before it reads the
    pending orders: an order committed before that read is in the run, one committed
    after finds no mark and enqueues the next run. Under load a user's orders pile up
    behind one queued run and are processed in one batch.
    """
    # orders.tasks imports this module (tasks call services, services enqueue tasks).
    from orders.tasks import order_queue_process

    marked = get_redis_connection("default").set(
        _queue_key(user_id), 1, nx=True, ex=QUEUE_MARK_SECONDS
    )
    if marked or force:
        order_queue_process.delay(user_id)


def order_place(
    *,
    user: User,
    coin_id: str,
    side: str,
    type: str,
    quantity: Decimal,
    limit_price: Decimal | None = None,
    client_order_id: str | None = None,
) -> tuple[Order, bool]:
    """Reserve the funds and create a ``pending`` order; processing is enqueued after
    commit. Returns ``(order, created)``: a repeated ``client_order_id`` returns the
    first order and reserves nothing, even when the two requests race."""
    if client_order_id:
        existing = Order.objects.filter(user=user, client_order_id=client_order_id).first()
        if existing is not None:
            return existing, False
    if not Coin.objects.filter(pk=coin_id, tracked=True).exists():
        message = f"{coin_id} is not a tracked coin."
        raise ApplicationError(message, code="unknown_coin", extra={"coin": [message]})
    if (type == Order.Type.LIMIT) != (limit_price is not None):
        raise ApplicationError(
            "limit_price is required for limit orders and only for them.", code="invalid"
        )
    reference = None
    if side == Order.Side.BUY and type == Order.Type.MARKET:
        reference = _reference_price(coin_id=coin_id)
    _order_notional_check(quantity=quantity, price=limit_price or reference, coin_id=coin_id)
    try:
        with transaction.atomic():
            return _order_place_locked(
                user=user,
                coin_id=coin_id,
                side=side,
                type=type,
                quantity=quantity,
                limit_price=limit_price,
                reference=reference,
                client_order_id=client_order_id,
            )
    except IntegrityError:
        # Two requests with one client_order_id raced on different balance rows; the
        # unique constraint let exactly one through.
        existing = (
            Order.objects.filter(user=user, client_order_id=client_order_id).first()
            if client_order_id
            else None
        )
        if existing:
            return existing, False
        raise


def _order_notional_check(*, quantity: Decimal, price: Decimal | None, coin_id: str) -> None:
    """400 on ``quantity`` when the order is worth more than ``ORDER_NOTIONAL_MAX`` usd at
    its limit, or for a market order at the latest cached price (a market sell with no
    price yet is checked again when it fills)."""
    if price is None:
        try:
            price = _reference_price(coin_id=coin_id)
        except PriceUnavailable:
            return
    if quantity * price > ORDER_NOTIONAL_MAX:
        message = f"The order is worth more than {decimal_str(ORDER_NOTIONAL_MAX)} usd."
        raise ApplicationError(message, code="invalid", extra={"quantity": [message]})


def _order_place_locked(
    *,
    user: User,
    coin_id: str,
    side: str,
    type: str,
    quantity: Decimal,
    limit_price: Decimal | None,
    reference: Decimal | None,
    client_order_id: str | None,
) -> tuple[Order, bool]:
    reserved_asset = USD if side == Order.Side.BUY else coin_id
    balance = balances_lock(user=user, assets=[reserved_asset])[reserved_asset]
    if client_order_id:
        # The balance lock serialised us behind any racing twin; it has committed now.
        existing = Order.objects.filter(user=user, client_order_id=client_order_id).first()
        if existing is not None:
            return existing, False
    if side == Order.Side.SELL:
        required = reserve = quantity
    else:
        # A limit buy reserves at its limit, a market buy at the reference price.
        price = limit_price if type == Order.Type.LIMIT else reference
        if price is None:
            raise ValueError(f"a {type} buy needs a price to reserve at")
        required = sum(buy_cost(quantity=quantity, price=price), Decimal(0))
        reserve = (
            required
            if type == Order.Type.LIMIT
            else min(balance.available, quantize_up(required * (1 + MARKET_BUY_BUFFER)))
        )
    if balance.available < required:
        raise ApplicationError(
            "Insufficient funds.",
            code="insufficient_funds",
            extra={
                "asset": reserved_asset,
                "required": decimal_str(required),
                "available": decimal_str(balance.available),
            },
        )
    balance.available -= reserve
    balance.locked += reserve
    _balance_save(balance)
    order = Order.objects.create(
        user=user,
        client_order_id=client_order_id or None,
        coin_id=coin_id,
        side=side,
        type=type,
        quantity=quantity,
        limit_price=limit_price,
        reserved_asset=reserved_asset,
        reserved_amount=reserve,
    )
    order.user = user
    _order_notify(order)
    _order_count(metrics.ORDERS_PLACED.labels(side=side, type=type))
    transaction.on_commit(lambda: _queue_enqueue(user.pk), robust=True)
    return order, True


def order_status_set(*, order: Order, status: str, **fields: Any) -> Order:
    """The one place an order changes status: saves it and tells the user.

    Runs inside the caller's transaction; pushes go out after commit.
    """
    order.status = status
    for name, value in fields.items():
        setattr(order, name, value)
    order.save(update_fields=["status", "updated_at", *fields])
    _order_notify(order)
    return order


_TERMINAL_NOTIFICATIONS: dict[str, tuple[str, str]] = {
    Order.Status.FILLED: ("order_filled", "Order filled"),
    Order.Status.CANCELLED: ("order_cancelled", "Order cancelled"),
    Order.Status.REJECTED: ("order_rejected", "Order rejected"),
}


def _order_notify(order: Order) -> None:
    order_event_push(user_id=order.user_id, order=OrderOutputSerializer(order).data)
    if order.status not in _TERMINAL_NOTIFICATIONS:
        return
    kind, title = _TERMINAL_NOTIFICATIONS[order.status]
    what = f"{order.side} {decimal_str(order.quantity)} {order.coin_id}"
    if order.status == Order.Status.FILLED:
        price, fee = decimal_str(order.filled_price), decimal_str(order.fee)
        body = f"Your {order.type} order to {what} filled at {price} usd (fee {fee} usd)."
    elif order.status == Order.Status.REJECTED:
        body = f"Your {order.type} order to {what} was rejected: {order.reject_reason}"
    else:
        body = f"Your {order.type} order to {what} was cancelled; its funds are released."
    notification_create(
        user=order.user,
        kind=kind,
        title=title,
        body=body,
        data={
            "order_id": order.pk,
            "coin": order.coin_id,
            "side": order.side,
            "type": order.type,
            "status": order.status,
        },
    )


def _reservation_release(*, order: Order, balances: dict[str, Balance]) -> None:
    balance = balances[order.reserved_asset]
    balance.locked -= order.reserved_amount
    balance.available += order.reserved_amount
    order.reserved_amount = Decimal(0)


def _order_count(counter: Counter) -> None:
    """Counted once the order's transaction commits: a run rolled back and retried must
    not count twice."""
    transaction.on_commit(counter.inc, robust=True)


def _order_reject(*, order: Order, balances: dict[str, Balance], reason: str) -> None:
    _reservation_release(order=order, balances=balances)
    order_status_set(
        order=order,
        status=Order.Status.REJECTED,
        reject_reason=reason[:200],
        reserved_amount=order.reserved_amount,
    )
    # Reasons are "<code>" or "<code>: <sentence>"; the code is the label.
    _order_count(metrics.ORDERS_REJECTED.labels(reason=reason.split(":", 1)[0]))


def _order_fill(
    *, order: Order, price: Decimal, balances: dict[str, Balance], entries: list[LedgerEntry]
) -> None:
    """Fill ``order`` at ``price``: book the trade and the fee, release what is unused.

    Balances must be locked (usd and the coin); ledger entries are appended to
    ``entries`` for the caller to insert.
    """
    usd, coin = balances[USD], balances[order.coin_id]
    if order.quantity * price > ORDER_NOTIONAL_MAX:
        # Possible when the price moved since placing: the order's own fault, not an outage.
        reason = f"notional_too_large: worth more than {decimal_str(ORDER_NOTIONAL_MAX)} usd."
        _order_reject(order=order, balances=balances, reason=reason)
        return
    _reservation_release(order=order, balances=balances)
    if order.side == Order.Side.BUY:
        notional, fee = buy_cost(quantity=order.quantity, price=price)
        if usd.available < notional + fee:
            _order_reject(
                order=order,
                balances=balances,
                reason="insufficient_funds: the price rose beyond the reserved funds.",
            )
            return
        posts = [
            (usd, LedgerEntry.Kind.TRADE_BUY, -notional),
            (usd, LedgerEntry.Kind.FEE, -fee),
            (coin, LedgerEntry.Kind.TRADE_BUY, order.quantity),
        ]
    else:
        notional, fee = sell_proceeds(quantity=order.quantity, price=price)
        posts = [
            (coin, LedgerEntry.Kind.TRADE_SELL, -order.quantity),
            (usd, LedgerEntry.Kind.TRADE_SELL, notional),
            (usd, LedgerEntry.Kind.FEE, -fee),
        ]
    for balance, kind, amount in posts:
        if amount:
            entries.append(ledger_post(balance=balance, kind=kind, amount=amount, order=order))
    order_status_set(
        order=order,
        status=Order.Status.FILLED,
        filled_price=price,
        fee=fee,
        reserved_amount=order.reserved_amount,
    )
    _order_count(metrics.ORDERS_FILLED.labels(side=order.side, type=order.type))


def _limit_of(order: Order) -> Decimal:
    if order.limit_price is None:
        raise ValueError(f"order {order.pk} is not a limit order")
    return order.limit_price


def limit_crosses(*, order: Order, price: Decimal) -> bool:
    if order.side == Order.Side.BUY:
        return price <= _limit_of(order)
    return price >= _limit_of(order)


def _limit_fill_price(*, order: Order, price: Decimal) -> Decimal:
    """The better of the limit and the market price for the order's owner."""
    if order.side == Order.Side.BUY:
        return min(_limit_of(order), price)
    return max(_limit_of(order), price)


def order_queue_process(*, user_id: int) -> int:
    """Work through one user's pending orders, oldest first. Returns how many.

    Market orders fill on the latest cached price (never a stale one: rejected,
    funds released); limit orders fill at once if the price already crosses them,
    else rest ``open``. Idempotent: only ``pending`` orders are touched, under row
    locks taken in id order, so a redelivered or concurrent run processes nothing
    twice and keeps the order of arrival.

    A transient error (``TRANSIENT_ERRORS``: Redis, PostgreSQL, the soft time limit)
    rolls the batch back and propagates, for the task to retry: an outage never
    rejects an order. A batch that fails for any other reason is retried one order at
    a time, and an order that fails on its own is rejected (funds released), so one
    bad order can never block the user's queue.
    """
    # Cleared before reading the orders: see _queue_enqueue.
    get_redis_connection("default").delete(_queue_key(user_id))
    processed, batch_size = 0, QUEUE_BATCH_SIZE
    while True:
        try:
            count = _queue_batch_process(user_id=user_id, limit=batch_size)
        except TRANSIENT_ERRORS:
            raise
        except Exception:
            if batch_size > 1:
                logger.exception("order batch failed; isolating", extra={"user_id": user_id})
                batch_size = 1
                continue
            logger.exception("order failed on its own; rejecting it", extra={"user_id": user_id})
            count = _queue_head_reject(user_id=user_id)
        processed += count
        if count < batch_size:
            return processed


@transaction.atomic
def _queue_batch_process(*, user_id: int, limit: int) -> int:
    # The batch's pushes go out as one per user, its emails as one task.
    with deliveries_batched():
        return _queue_batch_fill(user_id=user_id, limit=limit)


def _queue_batch_fill(*, user_id: int, limit: int) -> int:
    orders = list(
        Order.objects.select_for_update(of=("self",))
        .select_related(*_ORDER_USER)
        .filter(user_id=user_id, status=Order.Status.PENDING)
        .order_by("id")[:limit]
    )
    if not orders:
        return 0
    user = orders[0].user
    balances = balances_lock(user=user, assets=[USD, *(o.coin_id for o in orders)])
    snapshot = {b.asset: (b.available, b.locked) for b in balances.values()}
    quotes: dict[str, Decimal | PriceUnavailable] = {}
    entries: list[LedgerEntry] = []
    for order in orders:
        order.user = user
        if order.coin_id not in quotes:
            try:
                price = price_get_fresh(coin_id=order.coin_id).price
                if not price.is_finite() or price <= 0:
                    # Never trade at a nonsensical price (it would give coins away).
                    raise PriceUnavailable(f"No usable price for {order.coin_id}.")
                quotes[order.coin_id] = price
            except PriceUnavailable as exc:
                quotes[order.coin_id] = exc
        quote = quotes[order.coin_id]
        if order.type == Order.Type.LIMIT:
            if isinstance(quote, Decimal) and limit_crosses(order=order, price=quote):
                price = _limit_fill_price(order=order, price=quote)
                _order_fill(order=order, price=price, balances=balances, entries=entries)
            else:
                order_status_set(order=order, status=Order.Status.OPEN)
        elif isinstance(quote, PriceUnavailable):
            reason = "stale_price" if quote.code == "price_stale" else quote.code
            _order_reject(order=order, balances=balances, reason=reason)
        else:
            _order_fill(order=order, price=quote, balances=balances, entries=entries)
    LedgerEntry.objects.bulk_create(entries)
    _balances_save([b for b in balances.values() if snapshot[b.asset] != (b.available, b.locked)])
    return len(orders)


@transaction.atomic
def _queue_head_reject(*, user_id: int) -> int:
    order = (
        Order.objects.select_for_update(of=("self",))
        .select_related("user")
        .filter(user_id=user_id, status=Order.Status.PENDING)
        .order_by("id")
        .first()
    )
    if order is None:
        return 0
    balances = balances_lock(user=order.user, assets=[order.reserved_asset])
    _order_reject(
        order=order, balances=balances, reason="unprocessable: the order could not be booked."
    )
    _balance_save(balances[order.reserved_asset])
    return 1


def limit_orders_on_prices() -> None:
    """Hook of the price poll: match resting limit orders against the prices it stored.

    Cheap by design (it runs inside the poll): one task is enqueued, which reads the
    price store and finds the crossing orders through the partial index on open orders
    by (coin, side, limit). A lost message costs nothing: the next poll enqueues again.
    """
    # orders.tasks imports this module (tasks call services, services enqueue tasks).
    from orders.tasks import limit_orders_match

    try:
        limit_orders_match.delay()
    except Exception:
        # Never fail the poll (and the other hooks) over this: the next poll matches.
        logger.exception("could not enqueue limit-order matching")


def limit_orders_fill() -> int:
    """Fill every open limit order that the stored prices cross.

    Prices come from the price store (``markets.selectors.prices_tradable``): never
    simulated, stale or stamped in the future, and never from a caller, so a task
    message or a periodic task's arguments cannot set the price anything fills at.
    Each order fills in its own transaction under its row lock, so a concurrent
    cancel or a second run resolves to exactly one outcome.
    """
    filled = 0
    for coin_id, price in prices_tradable().items():
        if not price.is_finite() or price <= 0:
            continue  # a nonsensical price crosses every buy; never trade on it
        open_orders = Order.objects.filter(status=Order.Status.OPEN, coin_id=coin_id)
        crossing = list(
            open_orders.filter(side=Order.Side.BUY, limit_price__gte=price).values_list(
                "id", flat=True
            )
        ) + list(
            open_orders.filter(side=Order.Side.SELL, limit_price__lte=price).values_list(
                "id", flat=True
            )
        )
        for order_id in sorted(crossing):
            filled += _limit_order_fill(order_id=order_id, price=price)
    return filled


@transaction.atomic
def _limit_order_fill(*, order_id: int, price: Decimal) -> bool:
    with deliveries_batched():
        return _limit_order_fill_locked(order_id=order_id, price=price)


def _limit_order_fill_locked(*, order_id: int, price: Decimal) -> bool:
    order = (
        Order.objects.select_for_update(of=("self",))
        .select_related(*_ORDER_USER)
        .filter(pk=order_id, status=Order.Status.OPEN)
        .first()
    )
    if order is None or not limit_crosses(order=order, price=price):
        return False
    balances = balances_lock(user=order.user, assets=[USD, order.coin_id])
    entries: list[LedgerEntry] = []
    _order_fill(
        order=order,
        price=_limit_fill_price(order=order, price=price),
        balances=balances,
        entries=entries,
    )
    LedgerEntry.objects.bulk_create(entries)
    _balances_save(list(balances.values()))
    return order.status == Order.Status.FILLED


@transaction.atomic
def order_cancel(*, order_id: int, user: User | None = None) -> Order:
    """Cancel a pending or open order and release its reservation (else 409).

    ``user`` scopes the lookup (others' orders are 404); operators pass none.
    Racing a fill, the row lock decides: whichever commits first wins.
    """
    orders = Order.objects.select_for_update(of=("self",)).select_related("user")
    if user is not None:
        orders = orders.filter(user=user)
    order = orders.filter(pk=order_id).first()
    if order is None:
        raise ApplicationError("Not found.", code="not_found", status_code=http.HTTP_404_NOT_FOUND)
    if order.status not in Order.ACTIVE_STATUSES:
        raise ApplicationError(
            f"Only pending or open orders can be cancelled; this one is {order.status}.",
            code="order_not_cancellable",
            status_code=http.HTTP_409_CONFLICT,
        )
    balances = balances_lock(user=order.user, assets=[order.reserved_asset])
    _reservation_release(order=order, balances=balances)
    _balance_save(balances[order.reserved_asset])
    return order_status_set(
        order=order, status=Order.Status.CANCELLED, reserved_amount=order.reserved_amount
    )


def order_queue_sweep(*, older_than_seconds: int = 30) -> int:
    """Re-enqueue the queue of every user with a pending order older than this.

    The safety net for an enqueue lost after commit (broker briefly down); the
    queue itself is idempotent, so an extra run costs one query.
    """
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    user_ids = list(
        Order.objects.filter(status=Order.Status.PENDING, created_at__lt=cutoff)
        .values_list("user_id", flat=True)
        .distinct()
    )
    for user_id in user_ids:
        _queue_enqueue(user_id, force=True)
    return len(user_ids)
