"""``/ws/prices``: the public price stream, and the per-process feed behind it.

Fan-out: ``markets.realtime.prices_tick_publish`` publishes each tick once, already
encoded, on one Redis pub/sub channel. Every web process holds a single subscription
(``PriceFeed``) and hands that same text to each of its sockets; sockets that
subscribed to some coins get a narrowed frame, built once per tick per distinct coin
set. Nothing is written per socket in Redis, so the cost of a tick in Redis does not
grow with the audience (unlike ``group_send``, which writes once per member and
drops silently on full channels).

Frames are written to each socket right away. Under uvicorn's default WebSocket
implementation (websockets-sansio) a tick's frame is also *framed* once per tick: the
same bytes (RFC 6455 header + payload, unmasked, uncompressed) are written to each
socket's transport, skipping the per-socket ASGI send, re-encoding and framing (web
CPU per tick at 5,000 sockets: 166 -> 137 ms; what is left is mostly the kernel's
send). That is valid with permessage-deflate negotiated too: a message without RSV1
is simply not compressed (RFC 7692 §6), and the compressor's context only covers
compressed messages. Any other server or state (the handshake not done, a close sent,
the transport paused by a slow reader) takes the ASGI path.

Only a socket whose client stopped reading gets a backlog, in its own bounded outbox
drained by its own task, so one slow client never delays the others. A socket whose
outbox overflows gets one fresh snapshot instead of its backlog; after a Redis
reconnect every socket gets a fresh snapshot, because ticks published while the
subscription was down are lost.
"""

import asyncio
import functools
import logging
import os
import re
import struct
import time
from collections import deque
from collections.abc import Awaitable, Coroutine
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from cryptovault.metrics import WebSocketConnectionsCounted
from markets.price_store import prices_snapshot_bytes
from markets.realtime import prices_channel

logger = logging.getLogger(__name__)

# Ticks a socket may have queued before it is considered too slow and re-synced.
OUTBOX_LIMIT = 32
# New connections within this window share one snapshot read (a tick invalidates it).
SNAPSHOT_CACHE_SECONDS = 1.0
TRACKED_CACHE_SECONDS = 60.0
MAX_CLIENT_MESSAGE_CHARS = 4096
MAX_SUBSCRIBED_COINS = 200
_COIN_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_RESYNC = object()


def _parse_as_of(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _encode(frame: dict) -> str:
    return orjson.dumps(frame).decode()


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked, uncompressed text frame (RFC 6455 §5.2), as a server sends it."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


# What _writable_now reads of uvicorn's connection (uvicorn is pinned; a release that
# renames any of these turns the direct path off instead of breaking the fan-out, and
# test_prices_ws's live-server test fails so the next person notices).
_DIRECT_ATTRIBUTES = ("handshake_complete", "writable", "close_sent", "disconnected", "conn")


def _direct_connection(send: Any) -> WebSocketsSansIOProtocol | None:
    """The uvicorn websockets-sansio connection behind an ASGI ``send``, if that is what
    it is (the consumer's ``send`` is the connection's bound method)."""
    connection = getattr(send, "__self__", None)
    if type(connection) is not WebSocketsSansIOProtocol:
        return None
    if not all(hasattr(connection, name) for name in _DIRECT_ATTRIBUTES):
        return None
    return connection


def _writable_now(connection: WebSocketsSansIOProtocol) -> bool:
    """Whether a data frame may go straight to the transport: open, nothing closing, and
    not paused by a slow reader (then the ASGI path queues it)."""
    return (
        connection.handshake_complete
        and connection.writable.is_set()
        and not connection.close_sent
        and not connection.disconnected
        and connection.conn.state is State.OPEN
        and not connection.transport.is_closing()
    )


class PriceFeed:
    """This process's one subscription to price ticks, fanned out to its sockets."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bind(self) -> None:
        # One feed per event loop: a process serves one loop, tests start a new one each.
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self._sockets: set[PricesConsumer] = set()
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._snapshot: tuple[float, datetime | None, str] | None = None
        self._snapshot_lock = asyncio.Lock()
        self._tracked: tuple[float, frozenset[str]] | None = None
        self.resyncs = 0

    async def join(self, socket: "PricesConsumer") -> None:
        """Register a socket; returns once ticks are flowing (or Redis is known down)."""
        self._bind()
        self._sockets.add(socket)
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = asyncio.ensure_future(self._run())
        try:
            await asyncio.wait_for(self._ready.wait(), timeout=2)
        except TimeoutError:
            logger.warning("price feed not subscribed yet; the socket is re-synced later")

    def leave(self, socket: "PricesConsumer") -> None:
        if self._loop is not asyncio.get_running_loop():
            return
        self._sockets.discard(socket)
        if not self._sockets and self._task is not None:
            self._task.cancel()
            self._task = None

    async def snapshot(self) -> tuple[datetime | None, str]:
        """The ``snapshot`` frame text (as of the latest poll), shared by new connections."""
        async with self._snapshot_lock:
            cached = self._snapshot
            if cached is None or time.monotonic() - cached[0] > SNAPSHOT_CACHE_SECONDS:
                body = await sync_to_async(prices_snapshot_bytes, thread_sensitive=False)()
                as_of = _parse_as_of(orjson.loads(body).get("as_of"))
                # The stored body is the GET /prices object; prefix the type, no re-encoding.
                text = '{"type":"snapshot",' + body.decode()[1:]
                cached = self._snapshot = (time.monotonic(), as_of, text)
            return cached[1], cached[2]

    async def tracked_coins(self) -> frozenset[str]:
        from markets.models import Coin

        cached = self._tracked
        if cached is None or time.monotonic() - cached[0] > TRACKED_CACHE_SECONDS:
            ids = await database_sync_to_async(
                lambda: frozenset(Coin.objects.filter(tracked=True).values_list("id", flat=True))
            )()
            cached = self._tracked = (time.monotonic(), ids)
        return cached[1]

    async def _run(self) -> None:
        delay = 0.2
        subscribed_before = False
        while True:
            # Reads wait in get_message(timeout=...), which bounds them itself; the
            # socket timeout covers the other commands (settings: "Redis timeouts").
            client = aioredis.Redis.from_url(
                settings.REDIS_URL,
                socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
                socket_connect_timeout=settings.REDIS_SOCKET_CONNECT_TIMEOUT,
                socket_keepalive=True,
                health_check_interval=15,
                client_name=f"cv-price-feed-{os.getpid()}",
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(prices_channel())
                self._ready.set()
                if subscribed_before:
                    self._resync_all()
                subscribed_before = True
                delay = 0.2
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None and message["type"] == "message":
                        self._fan_out(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("price feed lost Redis; reconnecting in %.1fs", delay, exc_info=True)
                self._ready.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:  # noqa: S110 - the connection is being dropped anyway
                    pass

    def _resync_all(self) -> None:
        self.resyncs += 1
        self._snapshot = None
        for socket in list(self._sockets):
            socket.resync()

    def _fan_out(self, data: bytes) -> None:
        text = data.decode()
        try:
            tick = orjson.loads(data)
            as_of = _parse_as_of(tick["as_of"])
            prices = tick["prices"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.error("malformed price tick on %s: %.200s", prices_channel(), text)
            return
        self._snapshot = None
        wire = text_frame(data)
        narrowed: dict[frozenset[str], tuple[str, bytes]] = {}
        for socket in list(self._sockets):
            coins = socket.coins
            if coins is None:
                socket.deliver(as_of, text, wire)
                continue
            frame = narrowed.get(coins)
            if frame is None:
                subset = {coin: entry for coin, entry in prices.items() if coin in coins}
                encoded = orjson.dumps({"type": "tick", "as_of": tick["as_of"], "prices": subset})
                frame = narrowed[coins] = (encoded.decode(), text_frame(encoded))
            socket.deliver(as_of, *frame)


price_feed = PriceFeed()


async def _finish(coroutine: Coroutine, pending: Any) -> None:
    """Carry on a coroutine that suspended while driven by hand, as its Task would:
    wait for what it yielded, then resume it (or throw what that raised into it)."""
    while True:
        try:
            if pending is None:  # a bare yield (sleep(0)): just give the loop a turn
                await asyncio.sleep(0)
            else:
                await pending
        except BaseException as exc:  # noqa: B036 - cancellation is forwarded too
            step = functools.partial(coroutine.throw, exc)
        else:
            step = functools.partial(coroutine.send, None)
        try:
            pending = step()
        except StopIteration:
            return


class PricesConsumer(WebSocketConnectionsCounted, AsyncWebsocketConsumer):
    """Public price stream: snapshot on connect, then a tick per poll.

    Client messages: ``{"type":"ping"}`` → ``{"type":"pong"}``;
    ``{"type":"subscribe","coins":[...]}`` narrows ticks to those coins;
    ``{"type":"unsubscribe"}`` widens them again. Anything else gets
    ``{"type":"error","code","detail"}`` and the socket stays open.
    """

    stream = "/ws/prices"
    # Ticks come from the process's PriceFeed, not from the channel layer, so this
    # consumer needs no channel of its own (an unconfigured alias means none).
    channel_layer_alias = "prices-feed-no-channel-layer"

    coins: frozenset[str] | None = None
    _direct: WebSocketsSansIOProtocol | None = None
    dropped = 0

    async def dispatch(self, message: dict) -> None:
        # The base class closes stale DB connections (a thread hop) before every
        # message; this consumer never touches the database on the hot path.
        handler = getattr(self, message["type"].replace(".", "_"), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self._outbox: deque[tuple[datetime | None, Any]] = deque()
        self._drain_task: asyncio.Task | None = None
        self._live = False  # set once the snapshot went out; ticks queue until then
        self._direct = _direct_connection(self.base_send)
        await price_feed.join(self)
        try:
            as_of, snapshot = await price_feed.snapshot()
        except Exception:
            # Before the handshake is answered: Redis down is a 503 (cryptovault.routing).
            price_feed.leave(self)
            raise
        await self.accept()
        # Ticks queued while the snapshot was read and no newer than it are in it already.
        self._outbox = deque(
            item for item in self._outbox if as_of is None or item[0] is None or item[0] > as_of
        )
        await self.send(text_data=snapshot)
        self._live = True
        if self._outbox:
            self._drain_task = asyncio.ensure_future(self._drain())

    async def disconnect(self, code: int) -> None:
        price_feed.leave(self)
        if getattr(self, "_drain_task", None) is not None:
            self._drain_task.cancel()

    def deliver(self, as_of: datetime | None, frame: Any, wire: bytes | None = None) -> None:
        """Send or queue a frame (called in the event loop by the feed; never blocks).

        Fast path: nothing queued, so the frame is written right away: its ready-made
        ``wire`` bytes straight to the transport when the server allows it (see the
        module docstring), else by driving the server's send coroutine by hand; that
        completes without suspending unless the client stopped reading (the transport
        is paused), and saves a task switch per socket per tick. A send that does
        suspend is finished by a drain task, and later frames queue behind it.
        """
        if self._live and self._drain_task is None and not self._outbox and frame is not _RESYNC:
            direct = self._direct
            if wire is not None and direct is not None and _writable_now(direct):
                direct.transport.write(wire)
                return
            send = self.base_send({"type": "websocket.send", "text": frame})
            try:
                pending = send.send(None)
            except StopIteration:
                return
            except Exception:
                return  # the client is gone; disconnect() cleans up
            self._drain_task = asyncio.ensure_future(self._drain(_finish(send, pending)))
            return
        if len(self._outbox) >= OUTBOX_LIMIT:
            self.dropped += len(self._outbox)
            logger.info(
                "price socket too slow; replacing %d frames with a snapshot", len(self._outbox)
            )
            self._outbox.clear()
            frame = _RESYNC
        self._outbox.append((as_of, frame))
        if self._live and self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())

    def resync(self) -> None:
        """Replace whatever is queued with one fresh snapshot."""
        self._outbox.clear()
        self.deliver(None, _RESYNC)

    async def _drain(self, unfinished: Awaitable[None] | None = None) -> None:
        # While it runs, this task is the only writer to the socket: frames stay in order.
        try:
            if unfinished is not None:
                await unfinished
            while self._outbox:
                _, frame = self._outbox.popleft()
                if frame is _RESYNC:
                    try:
                        _, frame = await price_feed.snapshot()
                    except Exception:
                        logger.warning("snapshot for re-sync unavailable", exc_info=True)
                        continue
                await self.send(text_data=frame)
        except Exception:
            # The client went away mid-send; disconnect() follows and cleans up.
            self._outbox.clear()
        finally:
            self._drain_task = None

    def _reply(self, frame: dict) -> None:
        self.deliver(None, _encode(frame))

    def _error(self, code: str, detail: str, **extra: Any) -> None:
        self._reply({"type": "error", "code": code, "detail": detail, **extra})

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            return self._error("invalid_message", "Send JSON text frames.")
        if len(text_data) > MAX_CLIENT_MESSAGE_CHARS:
            return self._error("invalid_message", "Message too large.")
        try:
            message = orjson.loads(text_data)
        except orjson.JSONDecodeError:
            return self._error("invalid_message", "Message is not valid JSON.")
        if not isinstance(message, dict):
            return self._error("invalid_message", "Message must be a JSON object.")
        kind = message.get("type")
        if kind == "ping":
            return self._reply({"type": "pong"})
        if kind == "subscribe":
            return await self._subscribe(message.get("coins"))
        if kind == "unsubscribe":
            self.coins = None
            return None
        return self._error("unknown_type", "Expected type ping, subscribe or unsubscribe.")

    async def _subscribe(self, coins: Any) -> None:
        if isinstance(coins, list) and all(isinstance(coin, str) for coin in coins):
            coins = [coin.strip().lower() for coin in coins]  # ids are lowercase
        if (
            not isinstance(coins, list)
            or not coins
            or len(coins) > MAX_SUBSCRIBED_COINS
            or not all(isinstance(coin, str) and _COIN_ID.match(coin) for coin in coins)
        ):
            return self._error(
                "invalid_coins",
                f"coins must be a list of 1 to {MAX_SUBSCRIBED_COINS} coin ids.",
            )
        unknown = sorted(set(coins) - await price_feed.tracked_coins())
        if unknown:
            return self._error("unknown_coins", "Not tracked coins.", coins=unknown)
        self.coins = frozenset(coins)
        return None
