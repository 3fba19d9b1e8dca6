"""``/ws/prices``: the public price stream, and the per-process feed behind it.

Fan-out: ``markets.realtime.prices_tick_publish`` publishes each tick once, already
encoded, on one Redis pub/sub channel. Every web process holds a single subscription
(``PriceFeed``) and hands that same text to each of its sockets; sockets that
subscribed to some coins get a narrowed frame, built once per tick per distinct coin
set. Nothing is written per socket in Redis, so the cost of a tick in Redis does not
grow with the audience (unlike ``group_send``, which writes once per member and
drops silently on full channels).

The stream is a plain ASGI application (``prices_socket``), not a Channels consumer:
it needs no channel layer, no per-message database clean-up and no handler dispatch,
only the ASGI ``receive``/``send`` pair the server hands it. Each socket's frames go out
through that public ``send`` (the server frames, and compresses if negotiated, per
socket). A tick's sends are awaited one after another in the feed's task, without a task
per socket; a send that would wait (its client stopped reading) is abandoned, so that
socket delays nobody else (``PriceFeed._fan_out``).

Only such a slow socket builds a backlog, in its own bounded outbox; one whose outbox
overflows gets one fresh snapshot instead of its backlog. After a Redis reconnect every
socket gets a fresh snapshot, because ticks published while the subscription was down
are lost.
"""

import asyncio
import logging
import re
import time
from collections import deque
from datetime import datetime
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async

from cryptovault.metrics import WEBSOCKET_CONNECTIONS
from markets.models import Coin
from markets.price_store import prices_snapshot_bytes
from markets.realtime import price_ticks_follow, prices_channel

logger = logging.getLogger(__name__)

STREAM = "/ws/prices"
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
        self._sockets: set[PriceSocket] = set()
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._snapshot: tuple[float, datetime | None, str] | None = None
        self._snapshot_lock = asyncio.Lock()
        self._tracked: tuple[float, frozenset[str]] | None = None
        self.resyncs = 0

    async def join(self, socket: "PriceSocket") -> None:
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

    def leave(self, socket: "PriceSocket") -> None:
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
        cached = self._tracked
        if cached is None or time.monotonic() - cached[0] > TRACKED_CACHE_SECONDS:
            ids = await database_sync_to_async(
                lambda: frozenset(Coin.objects.filter(tracked=True).values_list("id", flat=True))
            )()
            cached = self._tracked = (time.monotonic(), ids)
        return cached[1]

    async def _run(self) -> None:
        await price_ticks_follow(
            subscribed=self._subscribed, lost=self._ready.clear, tick=self._fan_out
        )

    def _subscribed(self, again: bool) -> None:
        self._ready.set()
        if again:
            self._resync_all()

    def _resync_all(self) -> None:
        self.resyncs += 1
        self._snapshot = None
        for socket in list(self._sockets):
            socket.resync()

    async def _fan_out(self, data: bytes) -> None:
        text = data.decode()
        try:
            tick = orjson.loads(data)
            as_of = _parse_as_of(tick["as_of"])
            prices = tick["prices"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.error("malformed price tick on %s: %.200s", prices_channel(), text)
            return
        self._snapshot = None
        narrowed: dict[frozenset[str], str] = {}

        def frame_for(socket: PriceSocket) -> str:
            coins = socket.coins
            if coins is None:
                return text
            frame = narrowed.get(coins)
            if frame is None:
                subset = {coin: entry for coin, entry in prices.items() if coin in coins}
                frame = narrowed[coins] = _encode(
                    {"type": "tick", "as_of": tick["as_of"], "prices": subset}
                )
            return frame

        # Each socket's send is awaited in turn, in this task, with no time to wait: a
        # server's send only waits when its client stopped reading (flow control). Such
        # a send is abandoned (whether its frame went out is then unknown) and that
        # socket gets a fresh snapshot from a writer task of its own; the loop resumes
        # with the next socket. One deadline covers the whole run, so a tick leaves no
        # per-socket timer or task behind. (uvicorn's sends finish without waiting
        # otherwise; under a server whose every send waits, each tick would reach its
        # sockets as a snapshot: correct, only costlier.)
        remaining = iter(list(self._sockets))
        while True:
            socket = None
            try:
                async with asyncio.timeout(0):
                    for socket in remaining:
                        if not socket.idle:
                            socket.deliver(as_of, frame_for(socket))
                            continue
                        try:
                            await socket.send({"type": "websocket.send", "text": frame_for(socket)})
                        except Exception:  # noqa: S112 - the client is gone; its disconnect cleans up
                            continue
                return
            except TimeoutError:
                logger.info("price socket not reading; it gets a snapshot when it drains")
                if socket is not None:
                    socket.resync()


price_feed = PriceFeed()


class PriceSocket:
    """One ``/ws/prices`` connection: its coin filter and its outbox, written in order by
    at most one task at a time."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.coins: frozenset[str] | None = None
        self.dropped = 0
        self._outbox: deque[tuple[datetime | None, Any]] = deque()
        self._writer: asyncio.Task | None = None
        self._live = False  # set once the snapshot went out; ticks queue until then

    async def open(self, as_of: datetime | None, snapshot: str) -> None:
        """Send the snapshot, then whatever was queued meanwhile and is newer than it."""
        self._outbox = deque(
            item for item in self._outbox if as_of is None or item[0] is None or item[0] > as_of
        )
        await self.send({"type": "websocket.send", "text": snapshot})
        self._live = True
        self._start_writer()

    def close(self) -> None:
        self._live = False
        self._outbox.clear()
        if self._writer is not None:
            self._writer.cancel()

    @property
    def idle(self) -> bool:
        """Open, with nothing queued or being written: a tick may be sent right away."""
        return self._live and self._writer is None and not self._outbox

    def deliver(self, as_of: datetime | None, frame: Any) -> None:
        """Queue a frame and make sure a writer runs (called in the event loop; never
        blocks). A writer still busy from an earlier frame means the client is slow:
        past ``OUTBOX_LIMIT`` frames its backlog becomes one snapshot."""
        if len(self._outbox) >= OUTBOX_LIMIT:
            self.dropped += len(self._outbox)
            logger.info(
                "price socket too slow; replacing %d frames with a snapshot", len(self._outbox)
            )
            self._outbox.clear()
            frame = _RESYNC
        self._outbox.append((as_of, frame))
        self._start_writer()

    def resync(self) -> None:
        """Replace whatever is queued with one fresh snapshot."""
        self._outbox.clear()
        self.deliver(None, _RESYNC)

    def _start_writer(self) -> None:
        if self._live and self._writer is None and self._outbox:
            self._writer = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        # While it runs, this task is the only writer to the socket: frames stay in order.
        try:
            while self._outbox:
                _, frame = self._outbox.popleft()
                if frame is _RESYNC:
                    try:
                        _, frame = await price_feed.snapshot()
                    except Exception:
                        logger.warning("snapshot for re-sync unavailable", exc_info=True)
                        continue
                await self.send({"type": "websocket.send", "text": frame})
        except Exception:
            # The client went away mid-send; the disconnect that follows cleans up.
            self._outbox.clear()
        finally:
            self._writer = None

    def _reply(self, frame: dict) -> None:
        self.deliver(None, _encode(frame))

    def _error(self, code: str, detail: str, **extra: Any) -> None:
        self._reply({"type": "error", "code": code, "detail": detail, **extra})

    async def receive(self, text_data: str | None, bytes_data: bytes | None) -> None:
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


async def prices_socket(scope: dict, receive: Any, send: Any) -> None:
    """The ``/ws/prices`` ASGI application: snapshot on connect, then a tick per poll.

    Client messages: ``{"type":"ping"}`` → ``{"type":"pong"}``;
    ``{"type":"subscribe","coins":[...]}`` narrows ticks to those coins;
    ``{"type":"unsubscribe"}`` widens them again. Anything else gets
    ``{"type":"error","code","detail"}`` and the socket stays open. A dependency down
    before the handshake is answered raises, for ``cryptovault.routing`` to answer 503.
    """
    if (await receive())["type"] != "websocket.connect":
        return
    socket = PriceSocket(send)
    await price_feed.join(socket)
    try:
        as_of, snapshot = await price_feed.snapshot()
    except Exception:
        price_feed.leave(socket)
        raise
    try:
        await send({"type": "websocket.accept"})
        WEBSOCKET_CONNECTIONS.labels(stream=STREAM).inc()
        try:
            await socket.open(as_of, snapshot)
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message["type"] == "websocket.receive":
                    await socket.receive(message.get("text"), message.get("bytes"))
        finally:
            WEBSOCKET_CONNECTIONS.labels(stream=STREAM).dec()
    finally:
        price_feed.leave(socket)
        socket.close()
