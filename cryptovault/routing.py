"""All WebSocket routes of the platform, gathered from the apps, their origin check and
their answer to a dependency outage."""

import contextlib
import logging

import orjson
from channels.security.websocket import WebsocketDenier

from cryptovault.cors import stream_origin_allowed
from cryptovault.exceptions import (
    DEPENDENCY_ERRORS,
    RETRY_AFTER_SECONDS,
    SERVICE_UNAVAILABLE_DETAIL,
    error_body,
)
from markets.routing import websocket_urlpatterns as markets_ws
from notifications.routing import websocket_urlpatterns as notifications_ws

logger = logging.getLogger(__name__)

websocket_urlpatterns = [*markets_ws, *notifications_ws]

# "Try Again Later" (RFC 6455 registry): the server is up, a dependency is not.
WS_CLOSE_TRY_AGAIN_LATER = 1013


class OriginCheckMiddleware:
    """Refuses (403) a WebSocket handshake whose ``Origin`` may not open a stream
    (cryptovault.cors: ``CORS_ALLOWED_ORIGINS``, the platform's own hosts, or none)."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
        origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
        if stream_origin_allowed(None if origin is None else origin.decode("latin-1")):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


class WebSocketOutageMiddleware:
    """A dependency outage during a WebSocket handshake is the same JSON 503 with
    Retry-After as over HTTP (the ASGI ``websocket.http.response`` extension, which
    uvicorn offers); without that extension the handshake is refused (403). After the
    socket was accepted, the socket is closed with 1013 "try again later"."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
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
    body = orjson.dumps(error_body(SERVICE_UNAVAILABLE_DETAIL, "service_unavailable"))
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
