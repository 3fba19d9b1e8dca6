"""Server-Sent Events: ``GET /api/v1/stream/user``, a user's ``order`` and
``notification`` events, resumable with ``Last-Event-ID``; ``GET /api/v1/stream/prices``,
the ``/ws/prices`` frames (``snapshot``, then ``tick``) for anyone.

A plain ASGI app in front of Django (as ``markets.asgi``'s fast lane), not a Django
view: Django's handler here keeps one of its ``WEB_THREADS`` request threads for a
request's whole life (``cryptovault.asgi_handler``), so a handful of open streams would
starve the REST API. Everything a stream does after its checks is async: the channel
layer for live frames and revocations, PostgreSQL (the event log) and Redis (the caps)
through short thread hops.

Order of a stream's start, so that nothing is lost between replay and live:
1. answer a CORS preflight as the API does; refuse early, as JSON (with the API's CORS
   headers, as the stream itself): a foreign ``Origin`` (403), a bad ``Last-Event-ID`` (400), a
   bad or revoked token (401), a cap reached (429), PostgreSQL or Redis down (503);
2. join the user's and the session's channel-layer groups;
3. check the session once more (a revocation published before joining is not missed);
4. open the event cursor (replay from the log, or ``reset``), then relay live frames
   through it (deduplicated by id, gaps filled from the log).
A ``session.revoked`` push ends the stream with ``event: revoked``; so does a session
found dead (idled out) at a keep-alive. SIGTERM ends every stream (its last chunk) so
the process can exit. A slow reader never holds frames in this
process: the channel layer drops what its queue cannot take, and the gap is read back
from the log once the reader catches up.
"""

import asyncio
import contextlib
import logging
import re
import signal
import threading
import time
import uuid
from urllib.parse import parse_qs

import orjson
import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django_redis import get_redis_connection
from rest_framework_simplejwt.tokens import AccessToken

from accounts.selectors import session_is_live
from accounts.services import user_from_access_token
from cryptovault.cors import cors_headers, stream_origin_allowed
from cryptovault.exceptions import DEPENDENCY_ERRORS, RETRY_AFTER_SECONDS
from cryptovault.net import client_ip_from
from markets.price_store import prices_snapshot_bytes
from markets.realtime import price_ticks_follow, prices_channel
from markets.selectors import coin_ids_tracked
from notifications.events import EventCursor, event_id_parse
from notifications.middleware import MAX_TOKEN_CHARS
from notifications.realtime import (
    session_group,
    user_group,
    user_socket_closed,
    user_socket_opened,
)

logger = logging.getLogger(__name__)

USER_STREAM_PATH = "/api/v1/stream/user"
PRICES_STREAM_PATH = "/api/v1/stream/prices"

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"same-origin"),
]


def streams_lane(django_app):
    """Serves the stream paths; everything else goes to ``django_app``."""

    streams = {USER_STREAM_PATH: user_stream, PRICES_STREAM_PATH: prices_stream}

    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["path"] in streams:
            return await _guarded(streams[scope["path"]], scope, receive, send)
        return await django_app(scope, receive, send)

    return app


async def _guarded(stream, scope, receive, send) -> None:
    headers = dict(scope["headers"])
    raw_origin = headers.get(b"origin")
    origin = None if raw_origin is None else raw_origin.decode("latin-1")
    preflight = scope["method"] == "OPTIONS" and b"access-control-request-method" in headers
    # A cross-origin EventSource (or fetch) reads nothing, not even a refusal, without
    # the API's CORS headers; the platform's own pages need none.
    cors = cors_headers(scope["path"], origin, preflight)

    async def send_with_cors(message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message["headers"], *cors]}
        await send(message)

    if preflight:
        # As CorsMiddleware answers one for the API: 200, empty.
        return await _respond(send_with_cors, 200, b"", "text/plain")
    if scope["method"] != "GET":
        return await _refuse(send_with_cors, 405, "Method not allowed.", "method_not_allowed")
    if not stream_origin_allowed(origin):
        return await _refuse(
            send_with_cors, 403, "This origin may not open streams.", "origin_not_allowed"
        )
    try:
        await stream(scope, receive, send_with_cors, headers)
    except DEPENDENCY_ERRORS as exc:
        logger.warning("stream dependency unavailable: %s: %s", type(exc).__name__, exc)
        with contextlib.suppress(RuntimeError):  # RuntimeError: the stream had started
            await _refuse(
                send_with_cors,
                503,
                "A service this request needs is unavailable.",
                "service_unavailable",
                retry=True,
            )


async def _refuse(send, status: int, detail: str, code: str, *, retry: bool = False) -> None:
    """The JSON error body; ``retry``: a passing condition, worth retrying after
    ``Retry-After``."""
    body = orjson.dumps({"detail": detail, "code": code})
    headers = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())] if retry else []
    await _respond(send, status, body, "application/json", headers)


async def _respond(send, status: int, body: bytes, content_type: str, extra_headers=()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *_SECURITY_HEADERS,
                *extra_headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _start_stream(send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
                *_SECURITY_HEADERS,
            ],
        }
    )


def sse_event(*, event: str, data: str, event_id: int | None = None) -> bytes:
    """One SSE event (``data`` is single-line JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


KEEP_ALIVE = b": keep-alive\n\n"


# --- Caps on open streams ------------------------------------------------------------

# Each open stream is a member of a sorted set per user and per IP, scored by when its
# lease ends; a stream renews it at every keep-alive, so a process that died without
# closing its streams frees their places when the leases run out.
_ACQUIRE = """
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
  if redis.call('ZCARD', key) >= tonumber(ARGV[4 + i]) then return i end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[2], ARGV[3])
  redis.call('EXPIRE', key, ARGV[4])
end
return 0
"""


class StreamSlot:
    """A place among the open streams of a user and of an IP address."""

    def __init__(self, caps: dict[str, int]) -> None:
        self.keys = [f"cv:streams:{name}" for name in caps]
        self.caps = list(caps.values())
        self.member = uuid.uuid4().hex

    def _lease_seconds(self) -> int:
        return int(settings.STREAM_KEEPALIVE_SECONDS * 3) + 5

    def acquire(self) -> bool:
        redis = get_redis_connection("default")
        now = time.time()
        full = redis.eval(
            _ACQUIRE,
            len(self.keys),
            *self.keys,
            now,
            now + self._lease_seconds(),
            self.member,
            self._lease_seconds(),
            *self.caps,
        )
        return full == 0

    def renew(self) -> None:
        redis = get_redis_connection("default")
        expires = time.time() + self._lease_seconds()
        with redis.pipeline(transaction=False) as pipe:
            for key in self.keys:
                pipe.zadd(key, {self.member: expires}, xx=True)
                pipe.expire(key, self._lease_seconds())
            pipe.execute()

    def release(self) -> None:
        redis = get_redis_connection("default")
        with redis.pipeline(transaction=False) as pipe:
            for key in self.keys:
                pipe.zrem(key, self.member)
            pipe.execute()


def _ip_cap_key(scope, headers: dict[bytes, bytes]) -> str:
    """The cap of the client's IP: one for both kinds of stream."""
    client_ip = client_ip_from(
        peer=(scope.get("client") or ("0.0.0.0", 0))[0],  # noqa: S104 - a value
        forwarded_for=headers.get(b"x-forwarded-for", b"").decode("latin-1"),
    )
    return f"ip:{client_ip}"


async def _refuse_too_many(send) -> None:
    await _refuse(send, 429, "Too many open streams.", "too_many_streams", retry=True)


def _in_thread(func):
    return database_sync_to_async(func, thread_sensitive=False)


# --- GET /api/v1/stream/user -----------------------------------------------------------


def _authenticate(token: str) -> tuple[int | None, str | None]:
    """(user id, session id) for a live access token, else (None, None)."""
    user = user_from_access_token(token=token)
    if user is None:
        return None, None
    return user.pk, str(AccessToken(token).get("sid"))  # type: ignore[arg-type]  # simplejwt


def _token(headers: dict[bytes, bytes], query: dict[str, list[str]]) -> str | None:
    scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    tokens = query.get("token")
    return tokens[0] if tokens else None


def _last_event_id(headers: dict[bytes, bytes], query: dict[str, list[str]]) -> int | None:
    """The id to resume after; ValueError for one that is not an event id."""
    raw = (
        headers.get(b"last-event-id", b"").decode("latin-1").strip()
        or (query.get("last_event_id") or [""])[0].strip()
    )
    return event_id_parse(raw) if raw else None


async def user_stream(scope, receive, send, headers: dict[bytes, bytes]) -> None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    try:
        after = _last_event_id(headers, query)
    except ValueError:
        return await _refuse(
            send, 400, "Last-Event-ID must be an event id.", "invalid_last_event_id"
        )
    token = _token(headers, query)
    user_id = session_id = None
    if token and len(token) <= MAX_TOKEN_CHARS:
        user_id, session_id = await _in_thread(_authenticate)(token)
    if user_id is None or session_id is None:
        return await _refuse(
            send,
            401,
            "Authentication credentials were not provided or are invalid.",
            "not_authenticated",
        )
    slot = StreamSlot(
        {
            f"user:{user_id}": settings.STREAM_MAX_PER_USER,
            _ip_cap_key(scope, headers): settings.STREAM_MAX_PER_IP,
        }
    )
    if not await _in_thread(slot.acquire)():
        return await _refuse_too_many(send)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    groups = [user_group(user_id), session_group(session_id)]
    try:
        # Marked before joining: pushes skip users with no socket (notifications.realtime).
        await _in_thread(user_socket_opened)(user_id=user_id, channel=channel)
        for group in groups:
            await layer.group_add(group, channel)
        if not await _in_thread(session_is_live)(session_id=session_id):
            return await _refuse(send, 401, "Session has ended.", "session_revoked")
        cursor, reset = await EventCursor.open(user_id=user_id, after=after)
        await _start_stream(send)
        await _relay(
            send,
            receive,
            _UserFeed(layer, channel, cursor, session_id, slot),
            reset=reset,
        )
    finally:
        for group in groups:
            with contextlib.suppress(*DEPENDENCY_ERRORS):
                await layer.group_discard(group, channel)
        with contextlib.suppress(*DEPENDENCY_ERRORS):
            await _in_thread(user_socket_closed)(user_id=user_id, channel=channel)
        with contextlib.suppress(*DEPENDENCY_ERRORS):
            await _in_thread(slot.release)()


class _StreamEnd(Exception):
    """The stream ends after the bytes carried (``event: revoked``)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


class _UserFeed:
    def __init__(self, layer, channel, cursor: EventCursor, session_id: str, slot) -> None:
        self.layer, self.channel, self.cursor = layer, channel, cursor
        self.session_id, self.slot = session_id, slot

    async def first(self, *, reset: bool) -> bytes:
        if reset:
            data = orjson.dumps({"last_event_id": self.cursor.last_id}).decode()
            return sse_event(event="reset", data=data, event_id=self.cursor.last_id)
        return b"".join(self._encode(event) for event in await self.cursor.catch_up())

    @staticmethod
    def _encode(event) -> bytes:
        return sse_event(event=event.kind, data=event.text, event_id=event.id)

    async def next(self) -> bytes:
        message = await self.layer.receive(self.channel)
        if message.get("type") == "session.revoked":
            raise _StreamEnd(_revoked())
        if message.get("type") != "user.frames":
            return b""
        return b"".join(self._encode(event) for event in await self.cursor.live(message["texts"]))

    async def idle(self) -> None:
        """At each keep-alive: the session may have idled out; the caps' lease renews."""
        if not await _in_thread(session_is_live)(session_id=self.session_id):
            raise _StreamEnd(_revoked())
        await _in_thread(self.slot.renew)()


def _revoked() -> bytes:
    return sse_event(event="revoked", data='{"detail":"Session has ended."}')


# --- GET /api/v1/stream/prices ---------------------------------------------------------

MAX_STREAM_COINS = 200
_COIN_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
# Ticks a price stream may have waiting; past that its reader is too slow, and it gets
# one fresh snapshot instead of the backlog.
TICKS_QUEUED = 32
_RESYNC = object()


class _PriceTicks:
    """This process's one subscription to the price ticks (``prices_channel``, where
    ``markets.realtime`` publishes each tick once, encoded), shared by its price
    streams: each gets the tick, narrowed once per distinct coin set, in its own
    bounded queue. Redis sees one subscriber per process, not one per stream."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bind(self) -> None:
        # redis.asyncio connections belong to one event loop; tests run several.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._queues: dict[asyncio.Queue, frozenset[str] | None] = {}
            self._task: asyncio.Task | None = None
            self._ready = asyncio.Event()

    async def join(self, coins: frozenset[str] | None) -> asyncio.Queue:
        """A queue of this stream's tick texts (and ``_RESYNC``), once ticks flow."""
        self._bind()
        queue: asyncio.Queue = asyncio.Queue(maxsize=TICKS_QUEUED)
        self._queues[queue] = coins
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = asyncio.ensure_future(self._run())
        try:
            await asyncio.wait_for(
                self._ready.wait(), timeout=settings.REDIS_SOCKET_CONNECT_TIMEOUT + 1
            )
        except TimeoutError:
            self.leave(queue)
            raise aioredis.ConnectionError("price ticks unavailable") from None
        return queue

    def leave(self, queue: asyncio.Queue) -> None:
        self._queues.pop(queue, None)
        if not self._queues and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        await price_ticks_follow(
            subscribed=self._subscribed, lost=self._ready.clear, tick=self._fan_out
        )

    def _subscribed(self, again: bool) -> None:
        self._ready.set()
        if again:  # ticks published meanwhile are lost
            self._put_all({queue: _RESYNC for queue in self._queues})

    async def _fan_out(self, data: bytes) -> None:
        try:
            tick = orjson.loads(data)
            prices = tick["prices"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.error("malformed price tick on %s: %.200s", prices_channel(), data)
            return
        texts: dict[frozenset[str] | None, str] = {None: data.decode()}
        items = {}
        for queue, coins in self._queues.items():
            if coins is not None and coins not in texts:
                subset = {coin: entry for coin, entry in prices.items() if coin in coins}
                texts[coins] = orjson.dumps(
                    {"type": "tick", "as_of": tick["as_of"], "prices": subset}
                ).decode()
            items[queue] = texts[coins]
        self._put_all(items)

    @staticmethod
    def _put_all(items: dict) -> None:
        for queue, item in items.items():
            if queue.full():
                _drain(queue)
                item = _RESYNC
            queue.put_nowait(item)


_price_ticks = _PriceTicks()


def _coins(query: dict[str, list[str]]) -> frozenset[str] | None:
    """The coins asked for (``?coins=a,b``), None for all; ValueError if malformed."""
    coins = {
        coin.strip().lower()
        for value in query.get("coins", [])
        for coin in value.split(",")
        if coin.strip()
    }
    if not coins:
        return None
    if len(coins) > MAX_STREAM_COINS or not all(_COIN_ID.match(coin) for coin in coins):
        raise ValueError
    return frozenset(coins)


def _snapshot_text(coins: frozenset[str] | None) -> str:
    """The ``/ws/prices`` snapshot frame (the ``GET /prices`` object, typed)."""
    body = prices_snapshot_bytes()
    if coins is None:
        return '{"type":"snapshot",' + body.decode()[1:]  # no re-encoding
    snapshot = orjson.loads(body)
    snapshot["prices"] = {c: e for c, e in snapshot["prices"].items() if c in coins}
    return orjson.dumps({"type": "snapshot", **snapshot}).decode()


async def prices_stream(scope, receive, send, headers: dict[bytes, bytes]) -> None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    try:
        coins = _coins(query)
    except ValueError:
        return await _refuse(
            send,
            400,
            f"coins must be 1 to {MAX_STREAM_COINS} comma-separated coin ids.",
            "invalid_coins",
        )
    if coins is not None:
        unknown = sorted(coins - await _in_thread(coin_ids_tracked)())
        if unknown:
            body = orjson.dumps(
                {"detail": "Not tracked coins.", "code": "unknown_coins", "coins": unknown}
            )
            return await _respond(send, 400, body, "application/json")
    slot = StreamSlot({_ip_cap_key(scope, headers): settings.STREAM_MAX_PER_IP})
    if not await _in_thread(slot.acquire)():
        return await _refuse_too_many(send)
    queue = None
    try:
        # Subscribed before the snapshot is read: a tick in between is not missed.
        queue = await _price_ticks.join(coins)
        snapshot = await _in_thread(_snapshot_text)(coins)
        await _start_stream(send)
        await _relay(send, receive, _PricesFeed(queue, coins, snapshot, slot))
    finally:
        if queue is not None:
            _price_ticks.leave(queue)
        with contextlib.suppress(*DEPENDENCY_ERRORS):
            await _in_thread(slot.release)()


class _PricesFeed:
    def __init__(self, queue: asyncio.Queue, coins, snapshot: str, slot: StreamSlot) -> None:
        self.queue, self.coins, self.snapshot, self.slot = queue, coins, snapshot, slot

    async def first(self, *, reset: bool) -> bytes:
        as_of = orjson.loads(self.snapshot).get("as_of")
        # Ticks queued while the snapshot was read and no newer than it are in it.
        fresh = [
            text
            for text in _drain(self.queue)
            if text is _RESYNC or as_of is None or orjson.loads(text)["as_of"] > as_of
        ]
        for text in fresh:
            self.queue.put_nowait(text)
        return sse_event(event="snapshot", data=self.snapshot)

    async def next(self) -> bytes:
        text = await self.queue.get()
        if text is _RESYNC:
            return sse_event(event="snapshot", data=await _in_thread(_snapshot_text)(self.coins))
        return sse_event(event="tick", data=text)

    async def idle(self) -> None:
        await _in_thread(self.slot.renew)()


def _drain(queue: asyncio.Queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


# --- Shutdown -------------------------------------------------------------------------

# The event loop of the main thread -> its event, set when the process is told to stop.
_stopping: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}


def _stopping_event() -> asyncio.Event:
    """Set when this process is told to stop (SIGTERM, SIGINT).

    On those signals uvicorn stops accepting connections, then waits for the open
    responses to finish, without telling them (no ``http.disconnect``): a stream would
    hold the shutdown until its client leaves. So the handler in place (uvicorn's,
    installed before it loads the app) is wrapped, once per server loop: it still
    runs, after setting this event. Only the main thread can take signals; a server
    run in another thread (tests) keeps its streams until they end."""
    loop = asyncio.get_running_loop()
    if threading.current_thread() is not threading.main_thread():
        return asyncio.Event()
    if loop not in _stopping:
        event = _stopping[loop] = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _chained(signum, loop, event))
    return _stopping[loop]


def _chained(signum: int, loop: asyncio.AbstractEventLoop, event: asyncio.Event):
    previous = signal.getsignal(signum)

    def handler(received: int, frame) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(event.set)
        if callable(previous):
            previous(received, frame)
        elif previous is not None:  # SIG_DFL or SIG_IGN: as without this handler
            signal.signal(received, previous)
            signal.raise_signal(received)

    return handler


async def _relay(send, receive, feed, *, reset: bool = False) -> None:
    """Send the feed's bytes until the client goes away, the feed ends the stream or
    the server stops; ``: keep-alive`` whenever nothing was sent for
    STREAM_KEEPALIVE_SECONDS."""

    async def produce() -> None:
        first = await feed.first(reset=reset)
        await send({"type": "http.response.body", "body": first or KEEP_ALIVE, "more_body": True})
        pending: asyncio.Task | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(feed.next())
                done, _ = await asyncio.wait({pending}, timeout=settings.STREAM_KEEPALIVE_SECONDS)
                if done:
                    # Taken out first: a task is awaited once, whatever it raised.
                    task, pending = pending, None
                    chunk = task.result()
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                else:
                    await feed.idle()
                    await send(
                        {"type": "http.response.body", "body": KEEP_ALIVE, "more_body": True}
                    )
        except _StreamEnd as end:
            await send({"type": "http.response.body", "body": end.data, "more_body": False})
        finally:
            if pending is not None:
                pending.cancel()

    async def client_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    producer = asyncio.ensure_future(produce())
    watcher = asyncio.ensure_future(client_gone())
    stopping = asyncio.ensure_future(_stopping_event().wait())
    tasks = {producer, watcher, stopping}
    done: set = set()
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if done == {stopping}:
        # The last chunk: the client sees the stream end and resumes, with its
        # Last-Event-ID, on an instance that stays; uvicorn can then exit.
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    if producer.done() and not producer.cancelled() and (error := producer.exception()):
        raise error
