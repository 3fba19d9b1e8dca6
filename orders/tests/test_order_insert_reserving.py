"""``orders_order_insert_reserving`` (migration 0004), the PL/pgSQL function behind
``order_place``'s one-statement path, against the statement it replaced: same
reservation, same order row, the same refusals (nothing written)."""

from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction

from markets.models import Coin
from orders.models import Balance, Order
from orders.services import _ORDER_INSERT_RESERVING
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


def _run(statement: str, user_id: int, **order) -> tuple | None:
    arguments = {
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
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, arguments)
        return cursor.fetchone()


def _state(user_id: int) -> tuple[list, list]:
    balances = list(
        Balance.objects.filter(user_id=user_id)
        .order_by("asset")
        .values_list("asset", "available", "locked")
    )
    orders = list(Order.objects.filter(user_id=user_id).order_by("id").values_list(*_ORDER_FIELDS))
    return balances, orders


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
        rows = [
            _run(_STATEMENT_BEFORE, before.pk, **order),
            _run(_ORDER_INSERT_RESERVING, after.pk, **order),
        ]
        assert [row is not None for row in rows] == [placed, placed]
        if placed:
            assert rows[0][1] == rows[1][1]  # the reservation
    assert _state(before.pk) == _state(after.pk)


def test_a_repeated_client_order_id_is_an_integrity_error_and_writes_nothing():
    """``order_place`` catches the unique violation of a racing twin and returns the
    first order: the function must raise it, not swallow it."""
    coins_and_prices()
    user = user_create(usd="5000")
    assert _run(_ORDER_INSERT_RESERVING, user.pk, client_order_id="twin") is not None
    state = _state(user.pk)
    with pytest.raises(IntegrityError):
        _run(_ORDER_INSERT_RESERVING, user.pk, client_order_id="twin")
    assert _state(user.pk) == state
