"""``/ws/user``: a user's order and notification events.

Thin by design: authentication happens in ``notifications.middleware``, events are
pushed by services after commit (``notifications.realtime``) as ready-encoded text,
and this consumer only joins the groups and relays.

``?since=<event id>`` replays the events after that id from the log
(notifications.events) before the live ones, each once (or sends a ``reset`` frame when
the log no longer reaches back that far).

A revoked session closes its sockets at once (a ``session.revoked`` push). A session
that merely idles out (``SESSION_IDLE_SECONDS`` without an API request; nobody pushes)
is noticed by a check every ``SESSION_CHECK_SECONDS``: the socket is closed with 4401
as the API would answer 401. The check does not slide the session, so an open socket
alone does not keep a login alive, and falls back to the session row when Redis lost
the cached session.
"""

import asyncio
import logging
from urllib.parse import parse_qs

import orjson
from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from accounts.selectors import session_is_live
from cryptovault.metrics import WebSocketConnectionsCounted
from notifications.events import EventCursor, event_id_parse
from notifications.middleware import scope_authenticate
from notifications.realtime import WS_CLOSE_UNAUTHORIZED, session_group, user_group

logger = logging.getLogger(__name__)

SESSION_CHECK_SECONDS = 60.0
# A bad ``?since=`` (the 4000-4999 range is the application's).
WS_CLOSE_INVALID = 4400


class UserConsumer(WebSocketConnectionsCounted, AsyncWebsocketConsumer):
    stream = "/ws/user"

    async def connect(self) -> None:
        # Accept before closing: a close before the handshake is an HTTP 403 and the
        # client could not tell "unauthorized" (4401) from any other refusal.
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.accept(subprotocol=self.scope.get("subprotocol"))
            await self.close(code=WS_CLOSE_UNAUTHORIZED)
            return
        # Joined before accepting: Redis or PostgreSQL down is then a 503 handshake
        # (cryptovault.routing), not an open socket that closes at once.
        self.groups = [user_group(user.pk), session_group(self.scope["session_id"])]
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        # A revocation published between the token check and joining the session
        # group would be missed; checking once more after joining closes that gap.
        user, _ = await scope_authenticate(self.scope)
        await self.accept(subprotocol=self.scope.get("subprotocol"))
        if user is None:
            await self.close(code=WS_CLOSE_UNAUTHORIZED)
            return
        self._session_check = asyncio.ensure_future(self._check_session_alive())
        await self._resume(user_id=user.pk)

    async def _resume(self, *, user_id: int) -> None:
        """Replay from ``?since=`` (groups joined already: nothing is lost in between)."""
        raw = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get("since")
        if not raw:
            return
        try:
            since = event_id_parse(raw[0])
        except ValueError:
            await self.send(
                text_data='{"type":"error","code":"invalid_since","detail":"Not an event id."}'
            )
            await self.close(code=WS_CLOSE_INVALID)
            return
        self._cursor, reset = await EventCursor.open(user_id=user_id, after=since)
        if reset:
            await self.send(
                text_data=orjson.dumps(
                    {"type": "reset", "last_event_id": self._cursor.last_id}
                ).decode()
            )
            return
        for event in await self._cursor.catch_up():
            await self.send(text_data=event.text)

    async def disconnect(self, code: int) -> None:
        check = getattr(self, "_session_check", None)
        if check is not None:
            check.cancel()

    async def _check_session_alive(self) -> None:
        session_id = self.scope["session_id"]
        while True:
            await asyncio.sleep(SESSION_CHECK_SECONDS)
            try:
                live = await sync_to_async(session_is_live, thread_sensitive=False)(
                    session_id=session_id
                )
            except Exception:
                # Redis unreachable: not the client's fault; check again later.
                logger.warning("session check failed; retrying", exc_info=True)
                continue
            if not live:
                await self.close(code=WS_CLOSE_UNAUTHORIZED)
                return

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = orjson.loads(text_data) if text_data is not None else None
        except orjson.JSONDecodeError:
            message = None
        if isinstance(message, dict) and message.get("type") == "ping":
            await self.send(text_data='{"type":"pong"}')
            return
        await self.send(
            text_data=orjson.dumps(
                {"type": "error", "code": "invalid_message", "detail": 'Expected {"type":"ping"}.'}
            ).decode()
        )

    async def user_frames(self, event: dict) -> None:
        cursor = getattr(self, "_cursor", None)
        if cursor is None:
            for text in event["texts"]:
                await self.send(text_data=text)
            return
        for logged in await cursor.live(event["texts"]):
            await self.send(text_data=logged.text)

    async def session_revoked(self, event: dict) -> None:
        await self.close(code=WS_CLOSE_UNAUTHORIZED)
