"""Writes for wallets, the ledger and orders.

Money rules: every change of a balance's total writes a ledger entry in the same
transaction; balance rows are locked with ``select_for_update`` in primary-key
order (so two transactions touching the same rows can never deadlock); the
database refuses negative balances (``CHECK >= 0``) as a last line of defence.
"""

import logging
import time
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Min, Q
from django.db.models.functions import Mod
from django.utils import timezone
from django_redis import get_redis_connection
from prometheus_client import Counter
from rest_framework import serializers
from rest_framework import status as http

from accounts.models import User
from cryptovault import metrics
from cryptovault.decimals import decimal_str
from cryptovault.exceptions import TRANSIENT_ERRORS, ApplicationError, found_or_404
from cryptovault.sqlarrays import pg_array, pg_text_array, rows_update
from markets.models import Coin
from markets.selectors import (
    PriceUnavailable,
    price_get_fresh,
    price_quotes,
    prices_tradable,
)
from notifications import realtime
from notifications.events import frame_tail
from notifications.services import (
    NotificationRow,
    deliveries_batched,
    notification_add,
    notification_create,
    order_event_push,
)
from orders.models import USD, Balance, LedgerEntry, Order
from orders.serializers import order_output

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

# Orders one transaction of the queue takes at most (the heads of many users' queues),
# and at most per user when a failed batch is retried user by user.
QUEUE_BATCH_SIZE = 1000
QUEUE_USER_BATCH_SIZE = 100
# Crossing limit orders filled per transaction.
LIMIT_FILL_BATCH = 2000
# A crossing is filled in this many parts at once, split by user: one per process of the
# worker (its concurrency), so a big crossing uses both cores of the machine.
LIMIT_FILL_PARTS = 2


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


def _balances_lock_users(wanted: dict[int, set[str]]) -> dict[int, dict[str, Balance]]:
    """``balances_lock`` for several users at once: ``{user_id: {asset: Balance}}``, every
    row locked by one statement, in primary-key order."""
    pairs = sorted((user_id, asset) for user_id, assets in wanted.items() for asset in assets)
    query = (
        f"SELECT * FROM {Balance._meta.db_table} WHERE (user_id, asset) IN"  # noqa: S608 - our table name
        " (SELECT * FROM unnest(%s::bigint[], %s::varchar[])) ORDER BY id FOR UPDATE"
    )
    params = [[user_id for user_id, _ in pairs], [asset for _, asset in pairs]]

    def lock() -> dict[int, dict[str, Balance]]:
        locked: dict[int, dict[str, Balance]] = {}
        for balance in Balance.objects.raw(query, params):
            locked.setdefault(balance.user_id, {})[balance.asset] = balance
        return locked

    locked = lock()
    missing = [(u, a) for u, a in pairs if a not in locked.get(u, {})]
    if missing:
        Balance.objects.bulk_create(
            [Balance(user_id=u, asset=a) for u, a in missing], ignore_conflicts=True
        )
        locked = lock()
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
    return LedgerEntry(
        user_id=balance.user_id,
        asset=balance.asset,
        kind=kind,
        amount=amount,
        balance_after=_balance_move(balance=balance, amount=amount),
        order=order,
        memo=memo,
    )


def _balance_move(*, balance: Balance, amount: Decimal) -> Decimal:
    """Change ``balance.available`` by ``amount`` (never below zero); returns the total."""
    balance.available += amount
    if balance.available < 0:
        raise ApplicationError("Insufficient funds.", code="insufficient_funds")
    return balance.available + balance.locked


def _balance_save(balance: Balance) -> None:
    balance.save(update_fields=["available", "locked", "updated_at"])


def _balances_save(balances: list[Balance]) -> None:
    """Save locked balances in one ``UPDATE .. FROM unnest(..)`` (a batch of fills changes
    usd and a coin of each of its users)."""
    if not balances:
        return
    now = timezone.now()  # auto_now is the ORM's; this statement sets it itself
    for balance in balances:
        balance.updated_at = now
    rows_update(
        Balance, balances, columns={"available": "numeric", "locked": "numeric"}, updated_at=now
    )


def _orders_save(orders: list["_Booking"], *, now: datetime) -> None:
    """Save what a batch changed on ``orders`` (at ``now``), in one statement."""
    if not orders:
        return
    rows_update(
        Order,
        orders,
        columns={
            "status": "varchar",
            "filled_price": "numeric",
            "fee": "numeric",
            "reject_reason": "varchar",
            "reserved_amount": "numeric",
        },
        updated_at=now,
    )


def _ledger_insert(entries: list[tuple]) -> None:
    """Insert a batch's ledger entries ``(user_id, asset, kind, amount, balance_after,
    order_id)`` in one ``INSERT .. SELECT FROM unnest(..)``, in list order."""
    if not entries:
        return
    user_ids, assets, kinds, amounts, balances_after, order_ids = zip(*entries, strict=True)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {LedgerEntry._meta.db_table} (user_id, asset, kind, amount,"  # noqa: S608 - our table name
            " balance_after, order_id, memo, created_at) SELECT *, '', %s FROM unnest(%s::bigint[],"
            " %s::varchar[], %s::varchar[], %s::numeric[], %s::numeric[], %s::bigint[])",
            [
                timezone.now(),
                pg_array(user_ids),
                pg_text_array(assets),
                pg_text_array(kinds),
                pg_array(amounts),
                pg_array(balances_after),
                pg_array(order_ids),
            ],
        )


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


# Set while a run of the order queue waits to start (see _queue_enqueue).
QUEUE_RUN_KEY = "cv:orders:queue-run"
# A run of the queue that was enqueued but never started (message lost) stops
# suppressing new runs after this long; the sweep re-enqueues its orders anyway.
QUEUE_MARK_SECONDS = 60
# The namespace of the per-user advisory locks a run holds while it works on a user's
# queue (``pg_advisory_xact_lock(namespace, user_id mod 2^31)``: the key is an int4; two
# users sharing a key only share a lock, which costs parallelism, never correctness).
QUEUE_LOCK_NAMESPACE = 0x4F51
_QUEUE_LOCK_KEYS = 2**31
# Users whose queues one transaction of a run works on, oldest pending order first.
QUEUE_USERS_PER_BATCH = 500
# A run (of the queue, of limit matching) that has worked this long enqueues its
# successor and ends, so one run never meets its time limit under sustained load.
QUEUE_RUN_SECONDS = 10.0
# After a batch of at least QUEUE_GATHER_MIN orders (the queue is busy) a run waits this
# long before its next batch, which so gathers more orders to spread its fixed cost
# (statements, commit, pushes) over. Light load never waits: its batches are smaller.
QUEUE_GATHER_MIN = 8
QUEUE_GATHER_SECONDS = 0.02


def _queue_enqueue(*, force: bool = False) -> None:
    """Enqueue a run of the order queue unless one is already waiting to start.

    One run serves every user: it takes the heads of all pending queues in one
    transaction. The mark is set here and cleared by the run as it starts, before it
    reads the pending orders: an order committed before that read is in the run, one
    committed after finds no mark and enqueues the next run. Under load orders pile
    up behind one queued run and are processed in one batch.
    """
    # orders.tasks imports this module (tasks call services, services enqueue tasks).
    from orders.tasks import order_queue_process

    marked = get_redis_connection("default").set(QUEUE_RUN_KEY, 1, nx=True, ex=QUEUE_MARK_SECONDS)
    if marked or force:
        order_queue_process.delay()


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
    first order and reserves nothing, even when the two requests race.

    The usual order is one statement (``_order_place_logged``: the coin check, the
    balance's lock and reservation, the INSERT and the order's event), its own
    transaction unless the caller has one open; when it finds nothing to reserve from,
    the step-by-step path below it names what is wrong (unknown coin, no balance row
    yet, insufficient funds)."""
    if client_order_id:
        existing = Order.objects.filter(user=user, client_order_id=client_order_id).first()
        if existing is not None:
            return existing, False
    try:
        if (type == Order.Type.LIMIT) != (limit_price is not None):
            raise ApplicationError(
                "limit_price is required for limit orders and only for them.", code="invalid"
            )
        reference = None
        if side == Order.Side.BUY and type == Order.Type.MARKET:
            reference = _reference_price(coin_id=coin_id)
        _order_notional_check(quantity=quantity, price=limit_price or reference, coin_id=coin_id)
    except ApplicationError:
        # An unknown coin is the first thing to tell (it has no price either).
        _coin_tracked_check(coin_id=coin_id)
        raise
    reserved_asset = USD if side == Order.Side.BUY else coin_id
    required, reserve_cap = _order_reservation(
        side=side, type=type, quantity=quantity, limit_price=limit_price, reference=reference
    )
    order = Order(
        user=user,
        client_order_id=client_order_id or None,
        coin_id=coin_id,
        side=side,
        type=type,
        quantity=quantity,
        limit_price=limit_price,
        reserved_asset=reserved_asset,
    )
    try:
        if transaction.get_autocommit():
            frame = _order_place_logged(order, required=required, reserve_cap=reserve_cap)
        else:
            # Inside the caller's transaction: a savepoint, so that a racing twin's
            # unique violation leaves that transaction usable.
            with transaction.atomic():
                frame = _order_place_logged(order, required=required, reserve_cap=reserve_cap)
        if frame is not None:
            transaction.on_commit(
                partial(_order_placed_deliver, user_id=user.pk, frame=frame), robust=True
            )
        else:
            with transaction.atomic():
                _coin_tracked_check(coin_id=coin_id)
                existing = _order_place_locked(order, required=required, reserve_cap=reserve_cap)
                if existing is not None:
                    return existing, False
                _order_notify(order)
                transaction.on_commit(_queue_enqueue, robust=True)
        _order_count(metrics.ORDERS_PLACED.labels(side=side, type=type))
        return order, True
    except IntegrityError:
        # Two requests with one client_order_id raced; the unique constraint let exactly
        # one through.
        existing = (
            Order.objects.filter(user=user, client_order_id=client_order_id).first()
            if client_order_id
            else None
        )
        if existing:
            return existing, False
        raise


def _coin_tracked_check(*, coin_id: str) -> None:
    if not Coin.objects.filter(pk=coin_id, tracked=True).exists():
        message = f"{coin_id} is not a tracked coin."
        raise ApplicationError(message, code="unknown_coin", extra={"coin": [message]})


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


def _order_reservation(
    *,
    side: str,
    type: str,
    quantity: Decimal,
    limit_price: Decimal | None,
    reference: Decimal | None,
) -> tuple[Decimal, Decimal]:
    """``(required, cap)``: the order needs ``required`` available and reserves
    ``min(available, cap)`` (``cap == required`` but for a market buy, which reserves up
    to its cost plus ``MARKET_BUY_BUFFER``)."""
    if side == Order.Side.SELL:
        return quantity, quantity
    # A limit buy reserves at its limit, a market buy at the reference price.
    price = limit_price if type == Order.Type.LIMIT else reference
    if price is None:
        raise ValueError(f"a {type} buy needs a price to reserve at")
    required = sum(buy_cost(quantity=quantity, price=price), Decimal(0))
    if type == Order.Type.LIMIT:
        return required, required
    return required, quantize_up(required * (1 + MARKET_BUY_BUFFER))


# An order's reservation, its INSERT and its ``order`` event in one call of
# ``orders_order_place``, a PL/pgSQL function (migration 0005) whose statements each
# backend plans once: the balance row is locked (FOR UPDATE re-reads it after any
# concurrent writer commits) only if the coin is tracked and the row holds what the
# order requires; no row out means nothing written. The timestamps are taken once the
# lock is held, as the ORM's save would take them. The event is logged as
# ``notifications.events.events_record`` logs one (the user's row, then its counter),
# its text built from ``frame_parts`` around the order's id and timestamps.
_ORDER_PLACE = """
SELECT id, reserved_amount, created_at, frame FROM orders_order_place(
    %(user_id)s, %(asset)s, %(required)s, %(cap)s, %(coin_id)s, %(client_order_id)s,
    %(side)s, %(type)s, %(quantity)s, %(limit_price)s, %(status)s, %(frame_parts)s)
"""

# What stands in the order's frame for what only the INSERT knows (the id, the
# timestamps): strings no order's JSON can otherwise hold (a NUL is escaped as \u0000,
# and no field of an order takes a backslash).
_ID_MARK, _AT_MARK = "\x00id\x00", "\x00at\x00"
# The marks as the frame's JSON shows them: the id's with its quotes (an id is a number),
# the timestamps' without (they stay strings).
_ID_MARK_JSON = frame_tail({"i": _ID_MARK})[len('"i":') : -1]
_AT_MARK_JSON = frame_tail({"a": _AT_MARK})[len('"a":"') : -2]


def _order_frame_parts(order: Order) -> list[str]:
    """The ``order`` frame of the unsaved ``order`` as it will be logged and pushed, in
    the four pieces ``orders_order_place`` puts its id and timestamps between (the
    timestamps' pieces end and start with their quotes)."""
    output = order_output(order) | {"id": _ID_MARK, "created_at": _AT_MARK, "updated_at": _AT_MARK}
    tail = frame_tail({"type": "order", "order": output})
    head, rest = tail.split(_ID_MARK_JSON)
    parts = [head, *rest.split(_AT_MARK_JSON)]
    if len(parts) != 4:
        raise ValueError(f"unexpected order frame {tail!r}")
    return parts


def _order_place_logged(order: Order, *, required: Decimal, reserve_cap: Decimal) -> str | None:
    """Reserve the funds of the unsaved ``order``, INSERT it and log its event
    (``_ORDER_PLACE``), filling in its id, reservation and timestamps; returns the event's
    frame as logged (JSON text). None: nothing written (untracked coin, no balance row,
    or not enough available)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _ORDER_PLACE,
            {
                "user_id": order.user_id,
                "asset": order.reserved_asset,
                "required": required,
                "cap": reserve_cap,
                "coin_id": order.coin_id,
                "client_order_id": order.client_order_id,
                "side": order.side,
                "type": order.type,
                "quantity": order.quantity,
                "limit_price": order.limit_price,
                "status": order.status,
                "frame_parts": _order_frame_parts(order),
            },
        )
        row = cursor.fetchone()
    if row is None:
        return None
    order.pk, order.reserved_amount, order.created_at, frame = row
    order.updated_at = order.created_at
    order._state.adding = False
    order._state.db = connection.alias
    return frame


# After an order is placed, in one round trip: the queue's mark (``_queue_enqueue``'s SET
# NX: 1 if this call set it) and the user's socket check (``realtime.user_sockets_watch``:
# how many sockets are open). A script, not a pipeline: one command costs redis-py less.
_PLACED_SCRIPT = """
local marked = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1])
return {marked and 1 or 0, redis.call('ZCOUNT', KEYS[2], ARGV[2], '+inf')}
"""
_placed_script: Any = None


def _order_placed_deliver(*, user_id: int, frame: str) -> None:
    """After an order placed by ``_order_place_logged`` commits: the queue's mark and the
    user's socket check (``_PLACED_SCRIPT``), then the push to the user's sockets if any,
    and a run of the queue if none is waiting to start."""
    # orders.tasks imports this module (tasks call services, services enqueue tasks).
    from orders.tasks import order_queue_process

    global _placed_script
    redis = get_redis_connection("default")
    if _placed_script is None:
        # Its SHA1, once; it loads itself into the Redis it is called on when that one
        # does not know it yet (first use, a restart).
        _placed_script = redis.register_script(_PLACED_SCRIPT)
    sockets_key, since = realtime.user_sockets_watch(user_id)
    marked, sockets = _placed_script(
        keys=[QUEUE_RUN_KEY, sockets_key], args=[QUEUE_MARK_SECONDS, since], client=redis
    )
    if sockets:
        realtime.user_push_listening(user_id=user_id, texts=[frame])
    if marked:
        order_queue_process.delay()


def _order_place_locked(order: Order, *, required: Decimal, reserve_cap: Decimal) -> Order | None:
    """What ``_order_place_logged`` does, step by step (but the event, which the caller
    logs): creates the balance row if
    missing and raises ``insufficient_funds`` with what is missing. Returns the first
    order when one with the same ``client_order_id`` committed meanwhile."""
    balance = balances_lock(user=order.user, assets=[order.reserved_asset])[order.reserved_asset]
    if order.client_order_id:
        # The balance lock serialised us behind any racing twin; it has committed now.
        existing = Order.objects.filter(
            user_id=order.user_id, client_order_id=order.client_order_id
        ).first()
        if existing is not None:
            return existing
    if balance.available < required:
        raise ApplicationError(
            "Insufficient funds.",
            code="insufficient_funds",
            extra={
                "asset": order.reserved_asset,
                "required": decimal_str(required),
                "available": decimal_str(balance.available),
            },
        )
    reserve = min(balance.available, reserve_cap)
    balance.available -= reserve
    balance.locked += reserve
    _balance_save(balance)
    order.reserved_amount = reserve
    order.save(force_insert=True)
    return None


def order_status_set(*, order: Order, status: str, **fields: Any) -> Order:
    """Change one order's status: saves it and tells the user (a batch books its orders
    with ``_booking_status_set`` and saves them together).

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
    order_event_push(user_id=order.user_id, order=order_output(order))
    notification = _order_notification(order)
    if notification is not None:
        notification_create(
            user=order.user,
            kind=notification.kind,
            title=notification.title,
            body=notification.body,
            data=notification.data,
        )


def _order_notification(
    order: "Order | _Booking", output: dict | None = None
) -> NotificationRow | None:
    """What the owner is told of an order that reached a final status (None: not final);
    ``output`` (the order's ``order_output``, if built already) lends its decimal texts."""
    if order.status not in _TERMINAL_NOTIFICATIONS:
        return None
    kind, title = _TERMINAL_NOTIFICATIONS[order.status]
    if output is None:
        output = {
            "quantity": decimal_str(order.quantity),
            "filled_price": decimal_str(order.filled_price),
            "fee": decimal_str(order.fee),
        }
    what = f"{order.side} {output['quantity']} {order.coin_id}"
    if order.status == Order.Status.FILLED:
        price, fee = output["filled_price"], output["fee"]
        body = f"Your {order.type} order to {what} filled at {price} usd (fee {fee} usd)."
    elif order.status == Order.Status.REJECTED:
        body = f"Your {order.type} order to {what} was rejected: {order.reject_reason}"
    else:
        body = f"Your {order.type} order to {what} was cancelled; its funds are released."
    data = {
        "order_id": order.id,
        "coin": order.coin_id,
        "side": order.side,
        "type": order.type,
        "status": order.status,
    }
    return NotificationRow(user_id=order.user_id, kind=kind, title=title, body=body, data=data)


@dataclass(slots=True)
class _Booking:
    """An order as a batch books it: the row's values (the columns, in this order), no
    model instance, so a batch of thousands costs what its arithmetic and SQL cost."""

    id: int
    user_id: int
    client_order_id: str | None
    coin_id: str
    side: str
    type: str
    quantity: Decimal
    limit_price: Decimal | None
    status: str
    filled_price: Decimal | None
    fee: Decimal | None
    reject_reason: str | None
    reserved_asset: str
    reserved_amount: Decimal
    created_at: datetime
    updated_at: datetime


_BOOKING_COLUMNS = ", ".join(field.name for field in fields(_Booking))


def _orders_lock(*, where: str, params: list[Any], limit: int | None = None) -> list[_Booking]:
    """The orders matching ``where`` (SQL on orders_order), locked, in id order."""
    query = f"SELECT {_BOOKING_COLUMNS} FROM {Order._meta.db_table} WHERE {where} ORDER BY id"  # noqa: S608 - our SQL
    if limit is not None:
        query += " LIMIT %s"
        params = [*params, limit]
    with connection.cursor() as cursor:
        cursor.execute(query + " FOR UPDATE", params)
        return [_Booking(*row) for row in cursor.fetchall()]


def _booking_output(order: _Booking, book: "_Book") -> dict:
    """``order_output`` of the booked order (the same dict, built from its values)."""
    return {
        "id": order.id,
        "client_order_id": order.client_order_id,
        "coin": order.coin_id,
        "side": order.side,
        "type": order.type,
        "quantity": decimal_str(order.quantity),
        "limit_price": decimal_str(order.limit_price),
        "status": order.status,
        "filled_price": decimal_str(order.filled_price),
        "fee": decimal_str(order.fee),
        "reject_reason": order.reject_reason,
        "created_at": book.datetime_text(order.created_at),
        "updated_at": book.updated_at,
    }


_NO_OFFSET = timedelta(0)


class _Book:
    """What one batch writes besides its orders and balances: ledger entries (rows for
    ``_ledger_insert``) and the counts for the order metrics, added after commit."""

    def __init__(self) -> None:
        self.now = timezone.now()
        # How OrderOutputSerializer shows a datetime, the current timezone read once.
        self.datetimes = serializers.DateTimeField(default_timezone=timezone.get_current_timezone())
        self.utc = timezone.get_current_timezone_name() == "UTC"
        self.updated_at = self.datetimes.to_representation(self.now)
        self.entries: list[tuple] = []
        self.counts: dict[tuple[Any, tuple[str, ...]], int] = {}

    def datetime_text(self, value: datetime) -> str:
        """``self.datetimes.to_representation(value)``; for a UTC time shown in UTC (every
        row PostgreSQL returns, by default) without its generic steps: the same text."""
        if self.utc and value.utcoffset() == _NO_OFFSET:
            return value.isoformat()[:-6] + "Z"
        return self.datetimes.to_representation(value)

    def count(self, metric: Any, *labels: str) -> None:
        """Count one in ``metric``'s child of ``labels`` (resolved once per batch)."""
        key = (metric, labels)
        self.counts[key] = self.counts.get(key, 0) + 1

    def save(self) -> None:
        _ledger_insert(self.entries)
        # Counted once the transaction commits: a run rolled back and retried must not
        # count twice.
        for (metric, labels), count in self.counts.items():
            transaction.on_commit(partial(metric.labels(*labels).inc, count), robust=True)


def _booking_status_set(*, order: _Booking, book: _Book, status: str, **changes: Any) -> None:
    """``order_status_set`` within a batch: the caller saves the orders together."""
    order.status = status
    for name, value in changes.items():
        setattr(order, name, value)
    order.updated_at = book.now
    output = _booking_output(order, book)
    order_event_push(user_id=order.user_id, order=output)
    notification = _order_notification(order, output)
    if notification is not None:
        notification_add(notification)


def _reservation_release(*, order: "Order | _Booking", balances: dict[str, Balance]) -> None:
    balance = balances[order.reserved_asset]
    balance.locked -= order.reserved_amount
    balance.available += order.reserved_amount
    order.reserved_amount = Decimal(0)


def _order_count(counter: Counter) -> None:
    """Counted once the order's transaction commits: a run rolled back and retried must
    not count twice."""
    transaction.on_commit(counter.inc, robust=True)


def _order_reject(
    *, order: _Booking, balances: dict[str, Balance], book: _Book, reason: str
) -> None:
    """Reject ``order`` and release its reservation; the caller saves both."""
    _reservation_release(order=order, balances=balances)
    _booking_status_set(
        order=order, book=book, status=Order.Status.REJECTED, reject_reason=reason[:200]
    )
    # Reasons are "<code>" or "<code>: <sentence>"; the code is the label.
    book.count(metrics.ORDERS_REJECTED, reason.split(":", 1)[0])


def _order_fill(
    *, order: _Booking, price: Decimal, balances: dict[str, Balance], book: _Book
) -> None:
    """Fill ``order`` at ``price``: book the trade and the fee, release what is unused.

    Balances must be locked (usd and the coin); ledger entries go to ``book``; the
    caller saves the order and balances.
    """
    usd, coin = balances[USD], balances[order.coin_id]
    if order.quantity * price > ORDER_NOTIONAL_MAX:
        # Possible when the price moved since placing: the order's own fault, not an outage.
        reason = f"notional_too_large: worth more than {decimal_str(ORDER_NOTIONAL_MAX)} usd."
        _order_reject(order=order, balances=balances, book=book, reason=reason)
        return
    _reservation_release(order=order, balances=balances)
    if order.side == Order.Side.BUY:
        notional, fee = buy_cost(quantity=order.quantity, price=price)
        if usd.available < notional + fee:
            _order_reject(
                order=order,
                balances=balances,
                book=book,
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
            after = _balance_move(balance=balance, amount=amount)
            book.entries.append((balance.user_id, balance.asset, kind, amount, after, order.id))
    _booking_status_set(
        order=order, book=book, status=Order.Status.FILLED, filled_price=price, fee=fee
    )
    book.count(metrics.ORDERS_FILLED, order.side, order.type)


def _limit_of(order: "Order | _Booking") -> Decimal:
    if order.limit_price is None:
        raise ValueError(f"order {order.id} is not a limit order")
    return order.limit_price


def limit_crosses(*, order: "Order | _Booking", price: Decimal) -> bool:
    if order.side == Order.Side.BUY:
        return price <= _limit_of(order)
    return price >= _limit_of(order)


def _limit_fill_price(*, order: _Booking, price: Decimal) -> Decimal:
    """The better of the limit and the market price for the order's owner."""
    if order.side == Order.Side.BUY:
        return min(_limit_of(order), price)
    return max(_limit_of(order), price)


def order_queue_process(*, user_id: int | None = None) -> int:
    """Work through the pending orders of every user (or only ``user_id``'s), each
    user's oldest first. Returns how many.

    Market orders fill on the latest cached price (never a stale one: rejected,
    funds released); limit orders fill at once if the price already crosses them,
    else rest ``open``. One transaction takes the heads of many users' queues. A user's
    queue is worked on by one run at a time (a transaction-scoped advisory lock per
    user; a run skips the users another run holds, and that run reads again after it
    commits), and its orders are locked in id order, so a redelivered or concurrent
    run processes nothing twice and keeps the order of arrival.

    A run of every user's queue holds the mark of ``_queue_enqueue`` while it works:
    orders placed meanwhile enqueue nothing and are taken by its next batch, so under
    load one run books batch after batch, each of what arrived during the last, with
    no task in between. It releases the mark once a batch finds nothing, then books
    one more batch (what was committed while it held the mark); see ``_queue_run``.

    A transient error (``TRANSIENT_ERRORS``: Redis, PostgreSQL, the soft time limit)
    rolls the batch back and propagates, for the task to retry: an outage never
    rejects an order. A batch that fails for any other reason is retried one user at a
    time, then one order at a time, and an order that fails on its own is rejected
    (funds released), so one bad order can never block its user's queue or another's.
    """
    if user_id is None:
        return _queue_run()
    # One user's queue (messages from before one run served every user): the mark is
    # cleared before reading the orders, and the run looks again after each batch.
    get_redis_connection("default").delete(QUEUE_RUN_KEY)
    started, processed = time.monotonic(), 0
    while True:
        count = _queue_batch_isolating(user_id=user_id)
        processed += count
        # Nothing done: no pending order, or the user is another run's, which reads
        # again after its commit, as this run does now.
        if not count or not _queue_has_pending(user_id=user_id):
            return processed
        if time.monotonic() - started > QUEUE_RUN_SECONDS:
            _queue_enqueue(force=True)
            return processed


def _queue_run() -> int:
    """A run of every user's queue (``order_queue_process``).

    Nothing committed waits for a run that will not come: an order committed while
    the mark is set is read by a batch its holder books later (after every batch, a run
    looks for pending orders, and looks once more after releasing the mark); one
    committed after the release finds no mark and enqueues a run. A user another run
    holds is skipped here and read by that run's next batch.
    """
    redis = get_redis_connection("default")
    started, processed = time.monotonic(), 0
    while True:
        count = _queue_batch_isolating(user_id=None)
        processed += count
        if count and _queue_has_pending(user_id=None):
            if time.monotonic() - started > QUEUE_RUN_SECONDS:
                # The mark passes to the successor (its timeout starts again).
                redis.set(QUEUE_RUN_KEY, 1, ex=QUEUE_MARK_SECONDS)
                _queue_enqueue(force=True)
                return processed
            if count >= QUEUE_GATHER_MIN:
                time.sleep(QUEUE_GATHER_SECONDS)
            continue
        redis.delete(QUEUE_RUN_KEY)
        if not _queue_has_pending(user_id=None):
            return processed
        count = _queue_batch_isolating(user_id=None)
        processed += count
        # Nothing booked: what is pending is another run's, which reads again after its
        # commit. Booked some: carry on holding the mark again, unless an order committed
        # after the release has enqueued a run already (it reads what is left).
        if not count or not redis.set(QUEUE_RUN_KEY, 1, nx=True, ex=QUEUE_MARK_SECONDS):
            return processed


def _queue_batch_isolating(*, user_id: int | None) -> int:
    """One batch of the queue; a batch that fails for any reason but an outage is
    retried one user at a time (``_queue_user_isolated``)."""
    count = _queue_batch_try(user_id=user_id, limit=QUEUE_BATCH_SIZE)
    if count is None:
        count = sum(_queue_user_isolated(user_id=uid) for uid in _queue_users(user_id))
    return count


def _queue_has_pending(*, user_id: int | None) -> bool:
    """Whether a pending order waits (``user_id``'s), in one statement."""
    query = f"SELECT EXISTS (SELECT 1 FROM {Order._meta.db_table} WHERE status = %s"  # noqa: S608 - our table name
    params: list[Any] = [Order.Status.PENDING]
    if user_id is not None:
        query += " AND user_id = %s"
        params.append(user_id)
    with connection.cursor() as cursor:
        cursor.execute(query + ")", params)
        return cursor.fetchone()[0]


def _queue_users(user_id: int | None) -> list[int]:
    """Users with pending orders, the oldest pending order first (partial index)."""
    pending = Order.objects.filter(status=Order.Status.PENDING)
    if user_id is not None:
        pending = pending.filter(user_id=user_id)
    return list(
        pending.values("user_id")
        .annotate(first=Min("id"))
        .order_by("first")
        .values_list("user_id", flat=True)[:QUEUE_USERS_PER_BATCH]
    )


def _queue_user_isolated(*, user_id: int) -> int:
    """One user's queue after a failed batch: the whole queue, else one order at a time,
    rejecting an order that fails on its own."""
    processed, batch_size = 0, QUEUE_USER_BATCH_SIZE
    while True:
        count = _queue_batch_try(user_id=user_id, limit=batch_size)
        if count is None:
            if batch_size > 1:
                batch_size = 1
                continue
            logger.warning("order failed on its own; rejecting it", extra={"user_id": user_id})
            count = _queue_head_reject(user_id=user_id)
        processed += count
        if count < batch_size:
            return processed


def _queue_batch_try(*, user_id: int | None, limit: int) -> int | None:
    """``_queue_batch_process``, or None (logged) when the batch failed for a reason other
    than a transient one: those propagate, for the task to retry."""
    try:
        return _queue_batch_process(user_id=user_id, limit=limit)
    except TRANSIENT_ERRORS:
        raise
    except Exception:
        logger.exception("order batch failed", extra={"user_id": user_id, "limit": limit})
        return None


def _queue_user_lock(*, user_id: int) -> None:
    """In the current transaction, take ``user_id``'s queue lock, waiting for it."""
    with connection.cursor() as cursor:
        key = user_id % _QUEUE_LOCK_KEYS
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [QUEUE_LOCK_NAMESPACE, key])


# The heads of the queues, in one statement: the queue locks of the users with pending
# orders (up to QUEUE_USERS_PER_BATCH, oldest order first) that no other run holds, then
# those users' pending orders, locked, in id order. The users' subquery is materialized
# (each lock is tried once) and its LIMIT keeps the lock calls out of the innermost one
# (only listed users are tried). An order that a run holding one of these users filled
# after this statement's snapshot is re-read by FOR UPDATE once that run commits, and
# left out as no longer pending.
_QUEUE_HEADS_LOCK = f"""
WITH heads AS MATERIALIZED (
    SELECT user_id FROM (
        SELECT user_id, min(id) AS first FROM {Order._meta.db_table} WHERE status = %(pending)s
        GROUP BY user_id ORDER BY first LIMIT %(users)s
    ) AS pending
    WHERE pg_try_advisory_xact_lock(%(namespace)s, (user_id %% %(keys)s)::int)
)
SELECT {_BOOKING_COLUMNS} FROM {Order._meta.db_table}
WHERE user_id IN (SELECT user_id FROM heads) AND status = %(pending)s
ORDER BY id LIMIT %(limit)s FOR UPDATE
"""  # noqa: S608 - our table names


@transaction.atomic
def _queue_batch_process(*, user_id: int | None, limit: int) -> int:
    # The batch's pushes go out as one per user, its emails as one task.
    with deliveries_batched():
        if user_id is None:
            with connection.cursor() as cursor:
                cursor.execute(
                    _QUEUE_HEADS_LOCK,
                    {
                        "pending": Order.Status.PENDING,
                        "users": QUEUE_USERS_PER_BATCH,
                        "namespace": QUEUE_LOCK_NAMESPACE,
                        "keys": _QUEUE_LOCK_KEYS,
                        "limit": limit,
                    },
                )
                orders = [_Booking(*row) for row in cursor.fetchall()]
        else:
            _queue_user_lock(user_id=user_id)
            orders = _orders_lock(
                where="user_id = %s AND status = %s",
                params=[user_id, Order.Status.PENDING],
                limit=limit,
            )
        return _orders_book(orders=orders, prices=None)


def _orders_book(*, orders: list[_Booking], prices: dict[str, Decimal] | None) -> int:
    """Process ``orders`` (locked, in id order): pending ones as the queue does, on the
    latest cached prices; open limit ones fill on ``prices``, which must cross them.
    Saves the orders, the ledger and the balances in one statement each (and the
    notifications, frames and emails with the surrounding ``deliveries_batched``).
    Returns how many orders it changed."""
    if not orders:
        return 0
    wanted: dict[int, set[str]] = {}
    for order in orders:
        wanted.setdefault(order.user_id, {USD}).add(order.coin_id)
    balances = _balances_lock_users(wanted)
    snapshot = {b.pk: (b.available, b.locked) for bs in balances.values() for b in bs.values()}
    quotes: dict[str, Decimal | PriceUnavailable] = {}
    book = _Book()
    for order in orders:
        own = balances[order.user_id]
        if prices is not None:
            price = _limit_fill_price(order=order, price=prices[order.coin_id])
            _order_fill(order=order, price=price, balances=own, book=book)
            continue
        if order.coin_id not in quotes:
            quotes[order.coin_id] = _queue_quote(coin_id=order.coin_id)
        quote = quotes[order.coin_id]
        if order.type == Order.Type.LIMIT:
            if isinstance(quote, Decimal) and limit_crosses(order=order, price=quote):
                price = _limit_fill_price(order=order, price=quote)
                _order_fill(order=order, price=price, balances=own, book=book)
            else:
                _booking_status_set(order=order, book=book, status=Order.Status.OPEN)
        elif isinstance(quote, PriceUnavailable):
            reason = "stale_price" if quote.code == "price_stale" else quote.code
            _order_reject(order=order, balances=own, book=book, reason=reason)
        else:
            _order_fill(order=order, price=quote, balances=own, book=book)
    _orders_save(orders, now=book.now)
    book.save()
    _balances_save(
        [
            b
            for bs in balances.values()
            for b in bs.values()
            if snapshot[b.pk] != (b.available, b.locked)
        ]
    )
    return len(orders)


def _queue_quote(*, coin_id: str) -> Decimal | PriceUnavailable:
    """The price the queue fills ``coin_id`` at, or why there is none."""
    try:
        price = price_get_fresh(coin_id=coin_id).price
    except PriceUnavailable as exc:
        return exc
    if not price.is_finite() or price <= 0:
        # Never trade at a nonsensical price (it would give coins away).
        return PriceUnavailable(f"No usable price for {coin_id}.")
    return price


@transaction.atomic
def _queue_head_reject(*, user_id: int) -> int:
    with deliveries_batched():
        _queue_user_lock(user_id=user_id)
        orders = _orders_lock(
            where="user_id = %s AND status = %s", params=[user_id, Order.Status.PENDING], limit=1
        )
        if not orders:
            return 0
        (order,) = orders
        balances = _balances_lock_users({user_id: {order.reserved_asset}})[user_id]
        book = _Book()
        reason = "unprocessable: the order could not be booked."
        _order_reject(order=order, balances=balances, book=book, reason=reason)
        _orders_save(orders, now=book.now)
        book.save()
        _balance_save(balances[order.reserved_asset])
        return 1


def limit_orders_on_prices() -> None:
    """Hook of the price poll: match resting limit orders against the prices it stored.

    Cheap by design (it runs inside the poll): ``LIMIT_FILL_PARTS`` tasks are enqueued,
    one per part of the users, so that the worker's processes fill a big crossing side
    by side. Each reads the price store and finds its crossing orders through the
    partial index on open orders by (coin, side, limit). A lost message costs nothing:
    the next poll enqueues again.
    """
    for part in range(LIMIT_FILL_PARTS):
        _limit_orders_match_enqueue(part=part, parts=LIMIT_FILL_PARTS)


def _limit_orders_match_enqueue(*, part: int, parts: int) -> None:
    # orders.tasks imports this module (tasks call services, services enqueue tasks).
    from orders.tasks import limit_orders_match_part

    try:
        limit_orders_match_part.delay(part, parts)
    except Exception:
        # Never fail the poll (and the other hooks) over this: the next poll matches.
        logger.exception("could not enqueue limit-order matching")


def limit_orders_fill(*, part: int = 0, parts: int = 1) -> int:
    """Fill every open limit order that the stored prices cross (of the users whose id
    is ``part`` modulo ``parts``: the whole book by default).

    Prices come from the price store (``markets.selectors.prices_tradable``): never
    simulated, stale or stamped in the future, and never from a caller, so a task
    message or a periodic task's arguments cannot set the price anything fills at.
    The crossing orders fill in id order (each user's in the order placed), up to
    ``LIMIT_FILL_BATCH`` per transaction, under their row locks, so a concurrent cancel
    or a second run resolves to exactly one outcome. A batch that fails for any reason
    but an outage is retried one order at a time; an order that fails on its own is
    logged and stays open. A run that has worked ``QUEUE_RUN_SECONDS`` enqueues the next
    (of its part) and ends.

    Parts split the book by user, so runs of different parts lock disjoint orders and
    balances and run side by side without waiting on each other, and each user's orders
    are all filled by one run, in id order.
    """
    if not 0 <= part < parts:
        raise ValueError(f"part {part} of {parts} does not exist")
    prices = {c: p for c, p in prices_tradable().items() if p.is_finite() and p > 0}
    crossing: list[int] = []
    for coin_id, price in prices.items():
        open_orders = Order.objects.filter(status=Order.Status.OPEN, coin_id=coin_id)
        if parts > 1:
            open_orders = open_orders.alias(part=Mod("user_id", parts)).filter(part=part)
        crossing += open_orders.filter(
            Q(side=Order.Side.BUY, limit_price__gte=price)
            | Q(side=Order.Side.SELL, limit_price__lte=price)
        ).values_list("id", flat=True)
    crossing.sort()
    started, filled = time.monotonic(), 0
    for start in range(0, len(crossing), LIMIT_FILL_BATCH):
        if time.monotonic() - started > QUEUE_RUN_SECONDS:
            # A big crossing is worked through by successive runs, each far from the
            # time limit: what is filled is committed, the next run finds the rest.
            _limit_orders_match_enqueue(part=part, parts=parts)
            return filled
        chunk = crossing[start : start + LIMIT_FILL_BATCH]
        try:
            filled += _limit_orders_fill_batch(order_ids=chunk, prices=prices)
        except TRANSIENT_ERRORS:
            raise
        except Exception:
            logger.exception("limit fill batch failed; isolating")
            for order_id in chunk:
                try:
                    filled += _limit_orders_fill_batch(order_ids=[order_id], prices=prices)
                except TRANSIENT_ERRORS:
                    raise
                except Exception:
                    logger.exception("limit order %s could not be filled", order_id)
    return filled


@transaction.atomic
def _limit_orders_fill_batch(*, order_ids: list[int], prices: dict[str, Decimal]) -> int:
    with deliveries_batched():
        orders = [
            order
            for order in _orders_lock(
                where="id = ANY(%s::bigint[]) AND status = %s",
                params=[pg_array(order_ids), Order.Status.OPEN],
            )
            if limit_crosses(order=order, price=prices[order.coin_id])
        ]
        _orders_book(orders=orders, prices=prices)
        return sum(order.status == Order.Status.FILLED for order in orders)


@transaction.atomic
def order_cancel(*, order_id: int, user: User | None = None) -> Order:
    """Cancel a pending or open order and release its reservation (else 409).

    ``user`` scopes the lookup (others' orders are 404); operators pass none.
    Racing a fill, the row lock decides: whichever commits first wins.
    """
    orders = Order.objects.select_for_update(of=("self",)).select_related("user")
    if user is not None:
        orders = orders.filter(user=user)
    order = found_or_404(orders.filter(pk=order_id).first())
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
    if user_ids:
        _queue_enqueue(force=True)
    return len(user_ids)
