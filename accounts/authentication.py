"""DRF authentication: a simplejwt access token whose login session is still alive, or
a request signed with an API key."""

import hashlib
import time

from django.conf import settings
from django_redis import get_redis_connection
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied
from rest_framework_simplejwt.authentication import JWTAuthentication


class SessionJWTAuthentication(JWTAuthentication):
    """Bearer access JWT + server-side session check.

    The signature, expiry and token type are checked by simplejwt (so ``alg: none``,
    tampered and expired tokens are refused); then the ``sid`` claim must name a live
    session of that user. Logout and revocation delete the session, so its tokens stop
    working on the very next request.
    """

    def get_user(self, validated_token):
        # Imported here: DRF imports this class while rest_framework.views is still
        # initialising, and the services' imports lead back to it (accounts.services ->
        # cryptovault.exceptions -> rest_framework.views -> DEFAULT_AUTHENTICATION_CLASSES).
        from accounts.services import session_user_get

        # A session store that cannot answer raises one of DEPENDENCY_ERRORS, which
        # DependencyOutageMiddleware answers as a JSON 503 with Retry-After.
        user = session_user_get(token=validated_token)
        if user is None:
            raise AuthenticationFailed("Session has ended.", code="session_revoked")
        return user


def api_key_scope_required(view, method: str) -> str | None:
    """The scope a view declares for ``method`` in its ``api_key_scopes`` (``{"GET":
    "read", "POST": "trade"}``); None: API keys may not call it."""
    scopes = getattr(view, "api_key_scopes", None) or {}
    return scopes.get("GET" if method in ("HEAD", "OPTIONS") else method)


class ApiKeyAuthentication(BaseAuthentication):
    """Signed requests with an API key: ``X-API-Key``, ``X-API-Timestamp`` (epoch ms)
    and ``X-API-Signature`` over ``timestamp + METHOD + path?query + body`` (hex
    HMAC-SHA256 with the secret, or base64 Ed25519).

    On top of ``api_key_authenticate``: the timestamp must be within
    ``API_KEY_TIMESTAMP_WINDOW_MS`` of the server's clock, and a signature is accepted
    once (remembered in Redis, SET NX, until its timestamp leaves the window; a Redis
    flush therefore reopens replays only within that window).

    The scope is checked here, not in a permission class: permission classes are per
    view and a view that sets its own would silently let keys in. A key reaches only
    the views that declare a scope for the method (``api_key_scopes``); everything else
    (keys, sessions, 2FA, profile, password) answers 403 ``api_key_not_allowed``.
    """

    def authenticate(self, request):
        key = request.META.get("HTTP_X_API_KEY")
        if not key:
            return None
        # Imported here, as in SessionJWTAuthentication above.
        from accounts.services import api_key_authenticate, api_key_has_scope
        from cryptovault.exceptions import ApplicationError
        from cryptovault.net import client_ip

        timestamp = request.META.get("HTTP_X_API_TIMESTAMP", "")
        signature = request.META.get("HTTP_X_API_SIGNATURE", "")
        if not timestamp or not signature:
            raise AuthenticationFailed(
                "X-API-Key needs X-API-Timestamp and X-API-Signature.", code="signature_required"
            )
        now_ms = int(time.time() * 1000)
        window = settings.API_KEY_TIMESTAMP_WINDOW_MS
        if not timestamp.isdigit() or abs(now_ms - int(timestamp)) > window:
            raise AuthenticationFailed(
                f"X-API-Timestamp must be epoch milliseconds within {window // 1000} s of "
                f"the server's clock (now {now_ms}).",
                code="timestamp_out_of_window",
            )
        message = (
            timestamp.encode()
            + request.method.encode()
            + request.get_full_path().encode()
            + request.body
        )
        try:
            api_key = api_key_authenticate(
                key=key, message=message, signature=signature, client_ip=client_ip(request)
            )
        except ApplicationError as exc:
            if exc.status_code == 401:
                raise AuthenticationFailed(exc.message, code=exc.code) from exc
            raise PermissionDenied(exc.message, code=exc.code) from exc
        # Until the timestamp leaves the window, plus a second of rounding.
        ttl = (int(timestamp) + window - now_ms) // 1000 + 1
        seen = (
            "cv:accounts:api-signature:" + hashlib.sha256(f"{key}:{signature}".encode()).hexdigest()
        )
        if not get_redis_connection("default").set(seen, 1, nx=True, ex=max(1, ttl)):
            raise AuthenticationFailed("This signature was already used.", code="replayed_request")
        scope = api_key_scope_required(request.parser_context.get("view"), request.method)
        if scope is None:
            raise PermissionDenied(
                "API keys cannot call this endpoint.", code="api_key_not_allowed"
            )
        if not api_key_has_scope(api_key, scope):
            raise PermissionDenied(
                f"This API key lacks the {scope!r} scope.", code="insufficient_scope"
            )
        return api_key.user, api_key
