"""Pushes to ``/ws/user`` sockets through the channel layer (Redis).

Group names are part of the seam with other apps:
- ``user.<user id>``: every socket of one user; receives order and notification frames.
- ``session.<session id>``: every socket opened with one login session; a
  ``session.revoked`` message closes them with code 4401.

Frames are encoded to JSON text once here, in the sender, and relayed verbatim.

Sync callers outside any event loop (Celery tasks, commands) send through one
long-lived event loop per process, run by a daemon thread: ``async_to_sync`` there would
make a new loop, and with it a new Redis connection, for every push, which was half the
cost of an order fill. The channel layer keeps one connection pool per loop, so this loop's
pool is reused by every push of the process.
"""

import asyncio
import json
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer
from rest_framework.utils.encoders import JSONEncoder

from orders.apis import OrderOutputSerializer

WS_CLOSE_UNAUTHORIZED = 4401
# A push that Redis has not taken by then fails (and is logged by the caller) rather
# than holding a fill's worker forever.
PUSH_TIMEOUT_SECONDS = 5

_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None


def _layer_loop() -> asyncio.AbstractEventLoop:
    """This process's push loop, started on first use.

    Keyed by pid: a prefork Celery child inherits the parent's variables but not its
    threads, so it starts its own loop.
    """
    global _loop, _loop_pid
    with _loop_lock:
        if _loop is None or _loop_pid != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="channel-layer", daemon=True).start()
            _loop, _loop_pid = loop, os.getpid()
        return _loop


def _under_event_loop() -> bool:
    """Whether this thread runs sync code for an event loop of this process (a view
    under ASGI, ``sync_to_async``), the same test ``async_to_sync`` makes."""
    state = SyncToAsync.threadlocal
    return getattr(state, "main_event_loop_pid", None) == os.getpid() and (
        getattr(state, "main_event_loop", None) is not None
    )


def _run(send: Callable[[], Awaitable[None]]) -> None:
    """Run ``send()`` and wait for it, so pushes keep their order.

    Under an event loop, ``async_to_sync`` runs it on that loop (no new loop), in
    order with the loop's own work; elsewhere (Celery, commands) on the push loop.
    """

    async def call() -> None:
        await send()

    if _under_event_loop():
        async_to_sync(call)()
        return
    future = asyncio.run_coroutine_threadsafe(call(), _layer_loop())
    try:
        future.result(timeout=PUSH_TIMEOUT_SECONDS)
    except TimeoutError:
        future.cancel()
        raise


def user_group(user_id: Any) -> str:
    return f"user.{user_id}"


def session_group(session_id: Any) -> str:
    return f"session.{session_id}"


def frame_encode(frame: dict) -> str:
    return json.dumps(frame, cls=JSONEncoder, separators=(",", ":"))


def user_push(*, user_id: Any, frames: list[dict]) -> None:
    """One channel-layer message carrying the frames, which each socket sends in order."""
    layer = get_channel_layer()
    message = {"type": "user.frames", "texts": [frame_encode(frame) for frame in frames]}
    _run(lambda: layer.group_send(user_group(user_id), message))


def sessions_close(*, session_ids: list[str]) -> None:
    layer = get_channel_layer()

    async def close_all() -> None:
        for session_id in session_ids:
            await layer.group_send(session_group(session_id), {"type": "session.revoked"})

    _run(close_all)


def order_payload(order) -> dict:
    """The order exactly as the orders API shows it."""
    return OrderOutputSerializer(order).data
