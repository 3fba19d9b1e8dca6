"""WebSocket authentication for ``/ws/user``: the same session check as the REST API.

The access JWT comes either as ``?token=<jwt>`` or, for browsers that would rather
not put it in a URL, as the subprotocol pair ``["bearer", <jwt>]``. The scope gets
``user`` (``AnonymousUser`` when the token is missing, invalid, expired or revoked),
``session_id`` (the token's ``sid``) and ``subprotocol`` (``"bearer"`` when the
client used that form, which the server must echo when accepting).
"""

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser
from rest_framework_simplejwt.tokens import AccessToken

from accounts.services import user_from_access_token

BEARER_SUBPROTOCOL = "bearer"
MAX_TOKEN_CHARS = 4096


def token_from_scope(scope: dict) -> tuple[str | None, str | None]:
    """(token, subprotocol to accept) from the query string or the subprotocols."""
    subprotocols = list(scope.get("subprotocols") or [])
    if len(subprotocols) >= 2 and subprotocols[0].lower() == BEARER_SUBPROTOCOL:
        return subprotocols[1], BEARER_SUBPROTOCOL
    query = parse_qs(scope.get("query_string", b"").decode("latin1"))
    tokens = query.get("token")
    subprotocol = BEARER_SUBPROTOCOL if BEARER_SUBPROTOCOL in subprotocols else None
    return (tokens[0] if tokens else None), subprotocol


@database_sync_to_async
def _authenticate(token: str):
    user = user_from_access_token(token=token)
    if user is None:
        return None, None
    # The token verified above; read its session id for revocation pushes.
    return user, str(AccessToken(token).get("sid"))  # type: ignore[arg-type]  # simplejwt


async def scope_authenticate(scope: dict):
    """(user, session id) for the token of this handshake, or (None, None)."""
    token, _ = token_from_scope(scope)
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None, None
    return await _authenticate(token)


class JWTAuthMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        _, subprotocol = token_from_scope(scope)
        user, session_id = await scope_authenticate(scope)
        scope = {
            **scope,
            "user": user or AnonymousUser(),
            "session_id": session_id,
            "subprotocol": subprotocol,
        }
        return await self.app(scope, receive, send)
