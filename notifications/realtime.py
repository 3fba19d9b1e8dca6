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

from orders.apis import OrderOutputSerializer

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


def order_payload(order) -> dict:
    """The order exactly as the orders API shows it."""
    return OrderOutputSerializer(order).data
