"""Pushes to ``/ws/user`` sockets through the channel layer (Redis).

Group names are part of the seam with other apps:
- ``user.<user id>``: every socket of one user; receives order and notification frames.
- ``session.<session id>``: every socket opened with one login session; a
  ``session.revoked`` message closes them with code 4401.

Frames are encoded to JSON text once here, in the sender, and relayed verbatim.

Sync callers (Celery tasks, commands, views on their request threads) send through one
long-lived event loop per process, run by a daemon thread: ``async_to_sync`` outside an
event loop would make a new loop, and with it a new Redis connection, for every push,
a large share of an order fill's cost. The channel layer keeps one connection pool per
loop, so this loop's pool is reused by every push of the process. Views send on it too
rather than on the server's loop: finding that loop from a request thread takes asgiref
internals, and one more pool per web process costs nothing that matters.

``user_push`` does not wait: it chains the push behind the previous one on its loop, so
pushes go out one at a time in the order they were handed over (a user's frames keep
their order), and a failure is logged. A request or a fill thus never waits for Redis to
take its push; a push still queued when its process dies is lost, as one sent to a
socket that just closed is.
``sessions_close`` waits, so a revocation has been published when it returns.

Users with no socket open get no push at all: every ``/ws/user`` socket and user stream
marks its channel in the user's socket set (``user_socket_opened``) before it joins the
user's group, and so before it reads the event log, and unmarks it when it closes.
``users_push_texts`` reads the sets of the users it pushes to (one Redis round trip for
the batch, after the events committed) and sends only to users with a mark; an order's
placement reads its user's set in the round trip that also sets the order queue's mark
(``user_sockets_watch``, ``user_push_listening``). Nothing is
lost: a socket marked after that read joined the group and read the log after the
events committed, so its replay (``?since=``, ``Last-Event-ID``) has them, and a socket
opened without one starts after them. The set is in the channel layer's Redis and
forgets a mark on the group's terms (``group_expiry``), so a mark lives exactly as long
as the membership it stands for; a mark left by a process that died before unmarking
only costs its user pushes nobody receives, until it expires.
"""

import asyncio
import contextvars
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

import orjson
from channels.layers import get_channel_layer
from django.conf import settings
from django_redis import get_redis_connection
from rest_framework.utils.encoders import JSONEncoder

from cryptovault.logging import request_id_var

logger = logging.getLogger(__name__)

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


# Per loop, the last push handed over: each push waits for the one before it, so the
# frames of one process keep their order.
_last_push: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task]" = (
    weakref.WeakKeyDictionary()
)


async def _send_after(previous: asyncio.Task | None, send: Callable[[], Awaitable[None]]) -> None:
    if previous is not None and not previous.done():
        await asyncio.wait([previous])
    try:
        await asyncio.wait_for(send(), PUSH_TIMEOUT_SECONDS)
    except Exception:
        logger.exception("realtime push failed")


def _push_soon(send: Callable[[], Awaitable[None]]) -> None:
    """Hand ``send`` to the push loop and return at once (see the module docstring)."""
    loop = _layer_loop()

    def start() -> None:
        # Each pending task is referenced by the next one's ``previous`` and the last by
        # _last_push, so none can be garbage-collected mid-flight.
        _last_push[loop] = loop.create_task(_send_after(_last_push.get(loop), send))

    # The push outlives the request that made it, so it runs in a context of its own
    # (not the request's thread-sensitive one), carrying only the request id for logs.
    context = contextvars.Context()
    context.run(request_id_var.set, request_id_var.get())
    loop.call_soon_threadsafe(start, context=context)


def _run(send: Callable[[], Awaitable[None]]) -> None:
    """Run ``send()`` on the push loop and wait for it (revocations: published when
    this returns)."""

    async def call() -> None:
        await send()

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


# The types orjson encodes exactly as the standard library's encoder does (checked by
# ``_orjson_plain``): a str, int (orjson refuses one beyond 64 bits), bool or None, and
# a dict (orjson refuses a key that is not a str), list or tuple of them; and a str enum
# whose members' values are their own texts, such as an order's status (TextChoices):
# the standard library writes a member's text; orjson writes a str subclass's text and
# an enum member's value, here the same. Such an enum joins the set when first seen (its
# members are fixed when its class is made). Not a float (orjson writes NaN and the
# infinities as null), another subclass, a Decimal or a datetime (DRF's encoder shows
# those).
_ORJSON_PLAIN_TYPES: set[type] = {str, int, bool, type(None)}
_ORJSON_CONTAINERS = frozenset({dict, list, tuple})


def _orjson_enum_plain(kind: type) -> bool:
    return (
        issubclass(kind, str)
        and issubclass(kind, Enum)
        and all(
            type(member.value) is str and member.value == str.__str__(member) for member in kind
        )
    )


def _orjson_plain(value: dict | list | tuple) -> bool:
    for item in value.values() if type(value) is dict else value:
        kind = type(item)
        if kind in _ORJSON_PLAIN_TYPES:
            continue
        if kind in _ORJSON_CONTAINERS:
            if _orjson_plain(item):
                continue
            return False
        if _orjson_enum_plain(kind):
            _ORJSON_PLAIN_TYPES.add(kind)
            continue
        return False
    return True


def _frame_encode_stdlib(frame: dict) -> str:
    return json.dumps(frame, cls=JSONEncoder, separators=(",", ":"))


def frame_encode(frame: dict) -> str:
    """The frame's JSON text: the standard library's, with DRF's encoder for Decimals,
    datetimes and the like, ``ensure_ascii`` and no spaces. This exact text is logged
    and pushed, and ``notifications_events_record`` and ``orders_order_place`` build
    frames around it.

    orjson writes it about three times faster (a limit fill encodes two frames) and gives
    the same bytes for plain values (``_orjson_plain``) whose text is printable ASCII:
    it escapes the same characters the same way, but for DEL (0x7f), which it leaves as
    it is, and for any non-ASCII character, which it writes as UTF-8. Anything else is
    encoded by the standard library (``tests/test_realtime.py`` pins the equality)."""
    if type(frame) is dict and _orjson_plain(frame):
        try:
            text = orjson.dumps(frame)
        except TypeError:  # a key that is not a str, an int beyond 64 bits
            return _frame_encode_stdlib(frame)
        if text.isascii() and b"\x7f" not in text:
            return text.decode()
    return _frame_encode_stdlib(frame)


def _user_sockets_key(user_id: Any) -> str:
    return f"cv:realtime:sockets:{user_id}"


def _group_expiry() -> int:
    layers: dict[str, Any] = settings.CHANNEL_LAYERS
    return int(layers["default"]["CONFIG"]["group_expiry"])


def user_socket_opened(*, user_id: Any, channel: str) -> None:
    """Mark ``channel`` (a socket or stream of the user) as open, before it joins the
    user's group (see the module docstring); drops marks past ``group_expiry``."""
    now, expiry = time.time(), _group_expiry()
    key = _user_sockets_key(user_id)
    pipe = get_redis_connection("default").pipeline(transaction=False)
    pipe.zremrangebyscore(key, "-inf", now - expiry)
    pipe.zadd(key, {channel: now})
    pipe.expire(key, expiry)
    pipe.execute()


def user_socket_closed(*, user_id: Any, channel: str) -> None:
    get_redis_connection("default").zrem(_user_sockets_key(user_id), channel)


def users_with_sockets(user_ids: list[Any]) -> set[Any]:
    """Those of ``user_ids`` with a socket or stream open, in one round trip."""
    redis = get_redis_connection("default")
    if len(user_ids) == 1:  # one command costs less than a pipeline
        return set(user_ids) if redis.zcount(*user_sockets_watch(user_ids[0]), "+inf") else set()
    pipe = redis.pipeline(transaction=False)
    for user_id in user_ids:
        pipe.zcount(*user_sockets_watch(user_id), "+inf")
    return {user_id for user_id, count in zip(user_ids, pipe.execute(), strict=True) if count}


def user_sockets_watch(user_id: Any) -> tuple[str, float]:
    """``(key, since)``: the user has a socket or stream open if ``ZCOUNT key since
    +inf`` (in the ``default`` Redis) is not 0. The check ``users_with_sockets`` makes,
    for a caller that sends it with commands of its own after the same commit (an order
    placed: with the queue's mark, in one script), and then hands the frames to
    ``user_push_listening`` if a socket is open."""
    return _user_sockets_key(user_id), time.time() - _group_expiry()


def user_push(*, user_id: Any, frames: list[dict]) -> None:
    """One channel-layer message carrying the frames, which each socket sends in order."""
    users_push_texts({user_id: [frame_encode(frame) for frame in frames]})


def users_push_texts(texts_by_user: dict[Any, list[str]]) -> None:
    """``user_push`` of frames already encoded (as the event log holds them), to each
    user that has a socket open (one Redis round trip for all of them)."""
    listening = users_with_sockets(list(texts_by_user)) if texts_by_user else set()
    for user_id, texts in texts_by_user.items():
        if user_id in listening:
            user_push_listening(user_id=user_id, texts=texts)


def user_push_listening(*, user_id: Any, texts: list[str]) -> None:
    """``users_push_texts`` for one user whose socket check (``user_sockets_watch``)
    found a socket open; a failure is logged, never raised (one user's failed push must
    not cost the others theirs)."""
    try:
        _user_push_texts(user_id=user_id, texts=texts)
    except Exception:
        logger.exception("could not push to user %s", user_id)


def _user_push_texts(*, user_id: Any, texts: list[str]) -> None:
    layer = get_channel_layer()
    message = {"type": "user.frames", "texts": texts}
    _push_soon(lambda: layer.group_send(user_group(user_id), message))


def sessions_close(*, session_ids: list[str]) -> None:
    layer = get_channel_layer()

    async def close_all() -> None:
        for session_id in session_ids:
            await layer.group_send(session_group(session_id), {"type": "session.revoked"})

    _run(close_all)
