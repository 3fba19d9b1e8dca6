"""``frame_encode``: orjson where it gives the standard library's bytes, else the latter."""

import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum

import orjson
import pytest
from rest_framework.utils.encoders import JSONEncoder

from notifications.realtime import _orjson_plain, frame_encode
from orders.models import Order
from orders.serializers import order_output


class Text(str):
    pass


class Mixed(Text, Enum):
    """A str enum whose values are not exact strs (the str subclass it mixes in):
    ``_orjson_plain`` admits no such enum."""

    A = "a"


class Number(IntEnum):
    ONE = 1


def stdlib(frame: dict) -> str:
    """The frame's text as it was always encoded (and as the event log holds it)."""
    return json.dumps(frame, cls=JSONEncoder, separators=(",", ":"))


ORDER = {
    "id": 9_223_372_036_854_775_807,
    "client_order_id": None,
    "coin": "bitcoin",
    "side": "buy",
    "type": "limit",
    "quantity": "0.01000000",
    "limit_price": "50000.00",
    "status": "filled",
    "filled_price": "49999.12",
    "fee": "0.5",
    "reject_reason": None,
    "created_at": "2026-12-03T16:23:29.123456Z",
    "updated_at": "2026-12-03T16:23:29Z",
}
NOTIFICATION = {
    "id": 5,
    "kind": "order_filled",
    "title": "Order filled",
    "body": 'Your "buy" of 0.01 bitcoin\\filled\n\tat 49999.12 </script>',
    "data": {"order_id": -(2**63), "nested": [1, [True, False], (None, "x"), {}, []]},
    "read": False,
    "created_at": "2026-12-03T16:23:29.123456Z",
}

# Frames orjson encodes: plain values, their text printable ASCII.
PLAIN_FRAMES = [
    {},
    {"type": "order", "order": ORDER},
    {"type": "notification", "notification": NOTIFICATION},
    {"id": 1, "type": "reset", "last_event_id": 0},
    # Every ASCII character orjson and the standard library escape alike: the controls
    # (\b \f \n \r \t by name, the rest as \u00XX), the quote and the backslash.
    {"all": "".join(map(chr, range(0x7F))), 'keys \x00\x1f"\\': "\x00id\x00"},
    {"ints": [0, -1, 2**63, 2**64 - 1, -(2**63)], "bools": (True, False, None)},
    # TextChoices members (a batch of fills sets an order's status to one).
    {"order": {"side": Order.Side.BUY, "status": Order.Status.FILLED}, "s": [Order.Type.LIMIT]},
]

# Frames the standard library encodes, each for a reason.
OTHER_FRAMES = [
    {"del": "a\x7fb"},  # orjson leaves DEL unescaped
    {"title": "Prix atteint: 50 000 € — 比特币 🚀", "data": {"coin": "é"}},  # non-ASCII
    {"line separator": "\u2028\u2029"},
    {"price": Decimal("49999.120000000000"), "nan": Decimal("NaN")},
    {"at": datetime(2026, 12, 3, 16, 23, 29, 123456, tzinfo=UTC)},
    {"at": datetime(2026, 12, 3, 16, 23, 29, tzinfo=UTC)},
    {"naive": datetime(2026, 1, 1)},  # noqa: DTZ001 - its text is pinned too
    {"at": datetime(2026, 12, 3, 16, 23, 29, tzinfo=timezone(timedelta(hours=-5)))},
    {"day": date(2026, 12, 3), "span": timedelta(seconds=90)},
    {"floats": [1.5, 1e16, 1e-7, 0.1, -0.0, float("nan"), float("inf"), float("-inf")]},
    {"big": 2**64, "small": -(2**63) - 1},  # beyond what orjson encodes
    {"keys": {1: "int", None: "none", 1.5: "float"}, "bool key": {True: "bool"}},
    {"uuid": uuid.UUID("12345678-1234-5678-1234-567812345678")},
    {"enum": Mixed.A, "int enum": Number.ONE},
    {"str subclass": Text("x")},
    {"nested": {"deeper": [{"at": datetime(2026, 12, 3, tzinfo=UTC), "n": None}]}},
]


@pytest.mark.parametrize("frame", PLAIN_FRAMES)
def test_a_plain_frame_is_encoded_by_orjson_as_the_standard_library_does(frame):
    assert _orjson_plain(frame)
    text = frame_encode(frame)
    assert text == orjson.dumps(frame).decode()
    assert text == stdlib(frame)
    assert text.isascii()


@pytest.mark.parametrize("frame", OTHER_FRAMES)
def test_any_other_frame_has_the_standard_librarys_text(frame):
    assert frame_encode(frame) == stdlib(frame)


def test_each_ascii_character_is_escaped_alike_but_del():
    """Escapes are per character, so this covers every printable-ASCII text."""
    differing = [c for c in range(0x80) if orjson.dumps(chr(c)).decode() != stdlib(chr(c))]
    assert differing == [0x7F]


def test_an_order_frame_as_a_fill_builds_it_takes_orjson():
    order = Order(
        id=42,
        user_id=1,
        coin_id="bitcoin",
        side=Order.Side.SELL,
        type=Order.Type.LIMIT,
        quantity=Decimal("0.50000000"),
        limit_price=Decimal("100.000000000000"),
        status=Order.Status.FILLED,
        filled_price=Decimal("101.25"),
        fee=Decimal("0.05"),
        created_at=datetime(2026, 12, 3, 16, 23, 29, 123456, tzinfo=UTC),
        updated_at=datetime(2026, 12, 3, 16, 23, 30, tzinfo=UTC),
    )
    frame = {"id": 7, "type": "order", "order": order_output(order)}
    assert _orjson_plain(frame)
    assert frame_encode(frame) == stdlib(frame)


def test_a_str_enum_is_plain_only_when_its_values_are_its_texts():
    assert _orjson_plain({"status": Order.Status.FILLED})
    assert not _orjson_plain({"enum": Mixed.A})
    assert not _orjson_plain({"enum": Number.ONE})
