"""All WebSocket routes of the platform, gathered from the apps, their origin check and
their answer to a dependency outage."""

import contextlib
import logging

import orjson
from channels.security.websocket import OriginValidator
from django.conf import settings

from cryptovault.exceptions import DEPENDENCY_ERRORS, RETRY_AFTER_SECONDS
from markets.routing import websocket_urlpatterns as markets_ws
from notifications.routing import websocket_urlpatterns as notifications_ws

logger = logging.getLogger(__name__)

websocket_urlpatterns = [*markets_ws, *notifications_ws]

# "Try Again Later" (RFC 6455 registry): the server is up, a dependency is not.
WS_CLOSE_TRY_AGAIN_LATER = 1013


class AllowedHostsOriginValidator(OriginValidator):
    """Channels' ``AllowedHostsOriginValidator``, except that a handshake without an
    ``Origin`` header passes.

    Browsers always send ``Origin``, and cross-site WebSocket hijacking needs a
    browser, so a foreign origin is still refused (403). Programs (bots, servers,
    CLI tools) send none and would otherwise be locked out of ``/ws/prices``.
    """

    def __init__(self, application) -> None:
        allowed_hosts = settings.ALLOWED_HOSTS
        if settings.DEBUG and not allowed_hosts:
            allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
        super().__init__(application, allowed_hosts)

    def valid_origin(self, parsed_origin) -> bool:
        return parsed_origin is None or super().valid_origin(parsed_origin)


class WebSocketOutageMiddleware:
    """A dependency outage during a WebSocket handshake is the same JSON 503 with
    Retry-After as over HTTP (the ASGI ``websocket.http.response`` extension, which
    uvicorn offers); without that extension the handshake is refused (403). After the
    socket was accepted, the socket is closed with 1013 "try again later"."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
        # ``send`` is passed on as it is: the price stream recognises uvicorn's own
        # connection behind it (markets.consumers).
        try:
            return await self.application(scope, receive, send)
        except DEPENDENCY_ERRORS as exc:
            logger.warning(
                "dependency unavailable",
                extra={"path": scope.get("path"), "error": f"{type(exc).__name__}: {exc}"},
            )
        try:
            if "websocket.http.response" in scope.get("extensions", {}):
                await _deny_service_unavailable(send)
            else:
                await send({"type": "websocket.close"})
        except RuntimeError:
            # The handshake was answered already (ASGI servers refuse a second answer).
            with contextlib.suppress(RuntimeError):
                await send({"type": "websocket.close", "code": WS_CLOSE_TRY_AGAIN_LATER})


async def _deny_service_unavailable(send) -> None:
    body = orjson.dumps(
        {"detail": "A service this request needs is unavailable.", "code": "service_unavailable"}
    )
    await send(
        {
            "type": "websocket.http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})
