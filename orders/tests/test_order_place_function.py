"""``orders_order_place`` (migration 0005), the PL/pgSQL function behind
``order_place``'s one-statement path, against the statements it replaced (the
reservation and INSERT of before migration 0004, then ``events_record``): same
reservation, same order row, same event, the same refusals (nothing written)."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from rest_framework import serializers

from markets.models import Coin
from notifications.events import events_record
from notifications.models import UserEvent
from notifications.realtime import frame_encode
from orders.models import Balance, Order
from orders.serializers import order_output
from orders.services import _ORDER_PLACE, _order_frame_parts
from orders.tests.factories import coins_and_prices, user_create

pytestmark = pytest.mark.django_db

# The statement ``_order_insert_reserving`` ran before the function.
_STATEMENT_BEFORE = """
WITH b AS (
    SELECT id, LEAST(available, %(cap)s) AS reserve FROM orders_balance
    WHERE user_id = %(user_id)s AND asset = %(asset)s AND available >= %(required)s
    AND EXISTS (SELECT 1 FROM markets_coin WHERE id = %(coin_id)s AND tracked)
    FOR UPDATE OF orders_balance
), u AS (
    UPDATE orders_balance AS t
    SET available = t.available - b.reserve, locked = t.locked + b.reserve,
        updated_at = clock_timestamp()
    FROM b WHERE t.id = b.id RETURNING b.reserve, t.updated_at AS at
)
INSERT INTO orders_order (
    user_id, client_order_id, coin_id, side, type, quantity, limit_price, status,
    reserved_asset, reserved_amount, created_at, updated_at
)
SELECT %(user_id)s, %(client_order_id)s, %(coin_id)s, %(side)s, %(type)s, %(quantity)s,
    %(limit_price)s, %(status)s, %(asset)s, u.reserve, u.at, u.at
FROM u RETURNING id, reserved_amount, created_at
"""

_ORDER_FIELDS = (
    "client_order_id", "coin_id", "side", "type", "quantity", "limit_price", "status",
    "reserved_asset", "reserved_amount",
)  # fmt: skip


def _arguments(user_id: int, **order) -> dict:
    return {
        "user_id": user_id,
        "asset": "usd",
        "required": Decimal("650.65"),
        "cap": Decimal("650.65"),
        "coin_id": "bitcoin",
        "client_order_id": None,
        "side": "buy",
        "type": "limit",
        "quantity": Decimal("0.01"),
        "limit_price": Decimal("65000"),
        "status": Order.Status.PENDING,
    } | order


def _frame(order: Order) -> dict:
    return {"type": "order", "order": order_output(order)}


def _run_before(user_id: int, **order) -> tuple | None:
    """The statement before migration 0004, then the event as ``events_record`` logs it."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_STATEMENT_BEFORE, _arguments(user_id, **order))
        row = cursor.fetchone()
        if row is not None:
            events_record(frames_by_user={user_id: [_frame(Order.objects.get(pk=row[0]))]})
        return row


def _run_after(user_id: int, **order) -> tuple | None:
    arguments = _arguments(user_id, **order)
    unsaved = Order(
        user_id=user_id,
        client_order_id=arguments["client_order_id"],
        coin_id=arguments["coin_id"],
        side=arguments["side"],
        type=arguments["type"],
        quantity=arguments["quantity"],
        limit_price=arguments["limit_price"],
        reserved_asset=arguments["asset"],
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_ORDER_PLACE, arguments | {"frame_parts": _order_frame_parts(unsaved)})
        return cursor.fetchone()


def _state(user_id: int) -> tuple[list, list, list]:
    balances = list(
        Balance.objects.filter(user_id=user_id)
        .order_by("asset")
        .values_list("asset", "available", "locked")
    )
    orders = list(Order.objects.filter(user_id=user_id).order_by("id").values_list(*_ORDER_FIELDS))
    events = [
        (event.event_id, event.kind, _event_order(event.frame))
        for event in UserEvent.objects.filter(user_id=user_id).order_by("event_id")
    ]
    return balances, orders, events


def _event_order(text: str) -> dict:
    """An order event's frame, without what differs between two users' orders (ids,
    times)."""
    import json

    frame = json.loads(text)
    return {
        key: value
        for key, value in frame["order"].items()
        if key not in ("id", "created_at", "updated_at")
    }


CASES = [
    pytest.param({}, True, id="limit buy"),
    pytest.param(
        {"type": "market", "limit_price": None, "cap": Decimal("3000")}, True, id="market buy cap"
    ),
    pytest.param(
        {"side": "sell", "asset": "bitcoin", "required": Decimal("0.5"), "cap": Decimal("0.5")},
        True,
        id="sell",
    ),
    pytest.param({"client_order_id": "abc-1"}, True, id="client order id"),
    pytest.param({"required": Decimal("5000.01")}, False, id="insufficient funds"),
    pytest.param({"coin_id": "ethereum"}, False, id="untracked coin"),
    pytest.param({"coin_id": "dogecoin"}, False, id="unknown coin"),
    pytest.param({"asset": "solana"}, False, id="no balance row"),
]


@pytest.mark.parametrize(("order", "placed"), CASES)
def test_the_function_does_what_the_statement_before_it_did(order, placed):
    coins_and_prices({"bitcoin": "65000", "ethereum": "3000"})
    Coin.objects.filter(pk="ethereum").update(tracked=False)
    before, after = (user_create(usd="5000", bitcoin="1") for _ in range(2))
    for call in range(2):  # the second call runs on the reservation of the first
        if order.get("client_order_id"):
            order = order | {"client_order_id": f"{order['client_order_id']}-{call}"}
        rows = [_run_before(before.pk, **order), _run_after(after.pk, **order)]
        assert [row is not None for row in rows] == [placed, placed]
        if placed:
            assert rows[0][1] == rows[1][1]  # the reservation
            # The frame returned is the one logged, and shows the order as stored.
            order_id, _, created_at, text = rows[1]
            logged = UserEvent.objects.get(user_id=after.pk, frame=text)
            stored = Order.objects.get(pk=order_id)
            assert stored.created_at == stored.updated_at == created_at
            assert text == frame_encode({"id": logged.event_id, **_frame(stored)})
    assert _state(before.pk) == _state(after.pk)


def test_a_repeated_client_order_id_is_an_integrity_error_and_writes_nothing():
    """``order_place`` catches the unique violation of a racing twin and returns the
    first order: the function must raise it, not swallow it."""
    coins_and_prices()
    user = user_create(usd="5000")
    assert _run_after(user.pk, client_order_id="twin") is not None
    state = _state(user.pk)
    with pytest.raises(IntegrityError):
        _run_after(user.pk, client_order_id="twin")
    assert _state(user.pk) == state


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 12, 3, 15, 6, 24, 161000, tzinfo=UTC),
        datetime(2026, 12, 3, 15, 6, 24, tzinfo=UTC),  # no microseconds: none shown
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_datetimes_are_shown_as_the_api_shows_them(at):
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL TIME ZONE 'America/New_York'")  # the session's is not used
        cursor.execute("SELECT orders_api_datetime(%s)", [at])
        assert cursor.fetchone()[0] == serializers.DateTimeField().to_representation(at)
