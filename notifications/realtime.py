"""Pushes to ``/ws/user`` sockets through the channel layer (Redis).

Group names are part of the seam with other apps:
- ``user.<user id>``: every socket of one user; receives order and notification frames.
- ``session.<session id>``: every socket opened with one login session; a
  ``session.revoked`` message closes them with code 4401.

Frames are encoded to JSON text once here, in the sender, and relayed verbatim.
"""

import json
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from rest_framework.utils.encoders import JSONEncoder

WS_CLOSE_UNAUTHORIZED = 4401


def user_group(user_id: Any) -> str:
    return f"user.{user_id}"


def session_group(session_id: Any) -> str:
    return f"session.{session_id}"


def frame_encode(frame: dict) -> str:
    return json.dumps(frame, cls=JSONEncoder, separators=(",", ":"))


def user_push(*, user_id: Any, frame: dict) -> None:
    async_to_sync(get_channel_layer().group_send)(
        user_group(user_id), {"type": "user.frame", "text": frame_encode(frame)}
    )


def sessions_close(*, session_ids: list[str]) -> None:
    layer = get_channel_layer()

    async def close_all() -> None:
        for session_id in session_ids:
            await layer.group_send(session_group(session_id), {"type": "session.revoked"})

    async_to_sync(close_all)()


ORDER_FIELDS = (
    "id",
    "client_order_id",
    "coin",
    "side",
    "type",
    "quantity",
    "limit_price",
    "status",
    "filled_price",
    "fee",
    "reject_reason",
    "created_at",
    "updated_at",
)


def order_payload(order) -> dict:
    """The order as the REST API shows it (the contract's order fields)."""
    from notifications.serializers import decimal_str

    values = {field: getattr(order, field, None) for field in ORDER_FIELDS}
    values["coin"] = order.coin_id
    for field in ("quantity", "limit_price", "filled_price", "fee"):
        values[field] = decimal_str(values[field])
    return json.loads(frame_encode(values))
