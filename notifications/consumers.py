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

Messages: ``ping``; ``resume`` (``{"type":"resume","since":<id>}``, the same replay as
``?since=``); ``order.place`` and ``order.cancel``, answered ``order.ack`` or ``error``
with the client's ``request_id`` (orders.socket_api does what the REST views do). The
consumer handles one message at a time, channel-layer events included, so an order's
ack is sent before its first ``order`` event. A socket authenticated with scopes
(``scope["auth_scopes"]``, set by an authentication that has them; a JWT session has
none and full rights) needs ``trade`` for orders.
"""

import asyncio
import contextlib
import logging
from urllib.parse import parse_qs

import orjson
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from rest_framework.exceptions import ValidationError

from accounts.selectors import session_is_live
from cryptovault.exceptions import DEPENDENCY_ERRORS, SERVICE_UNAVAILABLE_DETAIL, ApplicationError
from cryptovault.metrics import WebSocketConnectionsCounted
from notifications.events import EventCursor, event_id_parse
from notifications.middleware import scope_authenticate
from notifications.realtime import (
    WS_CLOSE_UNAUTHORIZED,
    frame_encode,
    session_group,
    user_group,
    user_socket_closed,
    user_socket_opened,
)

logger = logging.getLogger(__name__)

SESSION_CHECK_SECONDS = 60.0
# A bad ``?since=`` (the 4000-4999 range is the application's).
WS_CLOSE_INVALID = 4400
# Far above any order message; a larger one is refused unread.
MAX_MESSAGE_CHARS = 8192
MAX_REQUEST_ID_CHARS = 128


class BadRequest(Exception):
    """A message that is not one the socket understands."""


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
        # Marked before joining: pushes skip users with no socket (notifications.realtime).
        await sync_to_async(user_socket_opened, thread_sensitive=False)(
            user_id=user.pk, channel=self.channel_name
        )
        self._marked_user_id = user.pk
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
            await self._send_frame(
                {"type": "error", "code": "invalid_since", "detail": "Not an event id."}
            )
            await self.close(code=WS_CLOSE_INVALID)
            return
        await self._replay(user_id=user_id, since=since)

    async def _replay(self, *, user_id: int, since: int) -> None:
        """The events after ``since``, then live ones through the cursor: each once, in
        id order (or a ``reset`` frame when the log no longer reaches back that far).
        Live events that arrive meanwhile wait in the channel layer until this returns."""
        self._cursor, reset = await EventCursor.open(user_id=user_id, after=since)
        if reset:
            await self._send_frame({"type": "reset", "last_event_id": self._cursor.last_id})
            return
        for event in await self._cursor.catch_up():
            await self.send(text_data=event.text)

    async def _send_frame(self, frame: dict) -> None:
        await self.send(text_data=frame_encode(frame))

    async def _send_error(self, request_id, code: str, detail: str) -> None:
        await self._send_frame(
            {"type": "error", "request_id": request_id, "code": code, "detail": detail}
        )

    async def disconnect(self, code: int) -> None:
        check = getattr(self, "_session_check", None)
        if check is not None:
            check.cancel()
        user_id = getattr(self, "_marked_user_id", None)
        if user_id is not None:
            with contextlib.suppress(*DEPENDENCY_ERRORS):
                await sync_to_async(user_socket_closed, thread_sensitive=False)(
                    user_id=user_id, channel=self.channel_name
                )

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
        request_id = None
        try:
            message = self._message_parse(text_data)
            request_id = message.get("request_id")
            if request_id is not None and not _request_id_valid(request_id):
                request_id = None
                raise BadRequest(f"request_id: a string of at most {MAX_REQUEST_ID_CHARS}.")
            kind = message.get("type")
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise BadRequest(f"type: one of {', '.join(self._handlers)}.")
            await handler(self, message, request_id)
        except BadRequest as exc:
            await self._send_error(request_id, "bad_request", str(exc))

    @staticmethod
    def _message_parse(text_data: str | None) -> dict:
        if text_data is None:
            raise BadRequest("Send JSON text frames.")
        if len(text_data) > MAX_MESSAGE_CHARS:
            raise BadRequest("Message too large.")
        try:
            message = orjson.loads(text_data)
        except orjson.JSONDecodeError:
            raise BadRequest("Message is not valid JSON.") from None
        if not isinstance(message, dict):
            raise BadRequest("Message must be a JSON object.")
        return message

    async def _ping(self, message: dict, request_id) -> None:
        await self.send(text_data='{"type":"pong"}')

    async def _resume_message(self, message: dict, request_id) -> None:
        since = message.get("since")
        try:
            if isinstance(since, bool) or not isinstance(since, int | str):
                raise ValueError(since)
            since = event_id_parse(str(since))
        except ValueError:
            raise BadRequest("since: an event id.") from None
        await self._replay(user_id=self.scope["user"].pk, since=since)

    async def _order_place(self, message: dict, request_id) -> None:
        body = message.get("order")
        if not isinstance(body, dict):
            raise BadRequest("order: the POST /api/v1/orders body, an object.")
        await self._order_call("order_place_message", request_id, body=body)

    async def _order_cancel(self, message: dict, request_id) -> None:
        order_id = message.get("id")
        if isinstance(order_id, bool) or not isinstance(order_id, int):
            raise BadRequest("id: an order id.")
        await self._order_call("order_cancel_message", request_id, order_id=order_id)

    async def _order_call(self, name: str, request_id, **kwargs) -> None:
        """Run ``orders.socket_api.<name>`` in a worker thread and answer its outcome."""
        # Imported here: orders imports notifications at load time (its services push
        # the order events), so a load-time import back would make the apps a cycle.
        from orders import socket_api

        scopes = self.scope.get("auth_scopes")
        if scopes is not None and "trade" not in scopes:
            await self._send_error(request_id, "permission_denied", "Needs the trade scope.")
            return
        try:
            order = await database_sync_to_async(getattr(socket_api, name), thread_sensitive=False)(
                user_id=self.scope["user"].pk, session_id=self.scope["session_id"], **kwargs
            )
        except socket_api.SessionEnded:
            await self.close(code=WS_CLOSE_UNAUTHORIZED)
            return
        except (ValidationError, ApplicationError) as exc:
            await self._send_frame(socket_api.error_frame(exc, request_id=request_id))
            return
        except DEPENDENCY_ERRORS:
            logger.warning("order message: dependency unavailable", exc_info=True)
            await self._send_error(request_id, "service_unavailable", SERVICE_UNAVAILABLE_DETAIL)
            return
        await self._send_frame({"type": "order.ack", "request_id": request_id, "order": order})

    _handlers = {
        "ping": _ping,
        "resume": _resume_message,
        "order.place": _order_place,
        "order.cancel": _order_cancel,
    }

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


def _request_id_valid(request_id) -> bool:
    if isinstance(request_id, str):
        return len(request_id) <= MAX_REQUEST_ID_CHARS
    return isinstance(request_id, int) and not isinstance(request_id, bool)
