"""``/ws/user``: a user's order and notification events.

Thin by design: authentication happens in ``notifications.middleware``, events are
pushed by services after commit (``notifications.realtime``) as ready-encoded text,
and this consumer only joins the groups and relays.
"""

import orjson
from channels.generic.websocket import AsyncWebsocketConsumer

from notifications.middleware import scope_authenticate
from notifications.realtime import WS_CLOSE_UNAUTHORIZED, session_group, user_group


class UserConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        # Accept before closing: a close before the handshake is an HTTP 403 and the
        # client could not tell "unauthorized" (4401) from any other refusal.
        await self.accept(subprotocol=self.scope.get("subprotocol"))
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=WS_CLOSE_UNAUTHORIZED)
            return
        self.groups = [user_group(user.pk), session_group(self.scope["session_id"])]
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        # A revocation published between the token check and joining the session
        # group would be missed; checking once more after joining closes that gap.
        user, _ = await scope_authenticate(self.scope)
        if user is None:
            await self.close(code=WS_CLOSE_UNAUTHORIZED)

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
        for text in event["texts"]:
            await self.send(text_data=text)

    async def session_revoked(self, event: dict) -> None:
        await self.close(code=WS_CLOSE_UNAUTHORIZED)
