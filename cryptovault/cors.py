"""Browser origins: which may open a stream (WebSocket, Server-Sent Events), and the
CORS headers of the responses answered in front of Django.

CORS on plain HTTP is django-cors-headers' job (settings ``CORS_*``). The ASGI lanes
that answer before Django's middleware (``markets.asgi``, ``notifications.streams``)
take their CORS headers from that same middleware (``cors_headers``). A stream
handshake is checked here instead, against the same ``CORS_ALLOWED_ORIGINS`` plus the
platform's own hosts (``ALLOWED_HOSTS``, so its own pages can open streams): a browser
on another origin must not ride a user's ``?token=`` link or, for a public stream,
the platform's capacity, without being allowed in. A handshake without ``Origin``
passes: browsers always send it, programs (bots, servers, CLI tools) do not, and
cross-site hijacking needs a browser.
"""

from functools import lru_cache
from typing import cast
from urllib.parse import urlsplit

from corsheaders.middleware import CorsMiddleware
from django.conf import settings
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.http.request import validate_host


def stream_origin_allowed(origin: str | None) -> bool:
    """Whether a stream handshake carrying this ``Origin`` header (None: no header)
    may proceed; the caller refuses it with 403 otherwise."""
    if origin is None:
        return True
    if origin in settings.CORS_ALLOWED_ORIGINS:
        return True
    try:
        parsed = urlsplit(origin)
        hostname = parsed.hostname
    except ValueError:
        return False
    if parsed.scheme not in ("http", "https") or not hostname:
        return False  # "null" (sandboxed frames, file://) and garbage
    # ALLOWED_HOSTS names hosts, not ports or schemes (as Django's Host check).
    host = f"[{hostname}]" if ":" in hostname else hostname
    hosts = settings.ALLOWED_HOSTS
    # What Django itself accepts as Host in DEBUG when the list is empty.
    if settings.DEBUG and not hosts:
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return validate_host(host, hosts)


# Headers that are CORS's to set, out of what its middleware returns.
_CORS_HEADERS = frozenset(
    {
        b"vary",
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-expose-headers",
        b"access-control-allow-headers",
        b"access-control-allow-methods",
        b"access-control-max-age",
    }
)


# Bounded: the Origin header is the client's to choose (callers pass fixed paths).
@lru_cache(maxsize=256)
def cors_headers(path: str, origin: str | None, preflight: bool) -> tuple[tuple[bytes, bytes], ...]:
    """The headers django-cors-headers' middleware adds for this origin to a GET on
    ``path`` (or to the answer of its preflight), from that middleware."""
    request = HttpRequest()
    request.method = "OPTIONS" if preflight else "GET"
    request.path = request.path_info = path
    if origin is not None:
        request.META["HTTP_ORIGIN"] = origin
    if preflight:
        request.META["HTTP_ACCESS_CONTROL_REQUEST_METHOD"] = "GET"
    # A sync get_response: the middleware answers a response, not an awaitable.
    response = cast(HttpResponseBase, CorsMiddleware(lambda r: HttpResponse())(request))
    headers = ((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.items())
    return tuple((k, v) for k, v in headers if k in _CORS_HEADERS)


def _cors_settings_changed(setting: str, **_: object) -> None:
    if setting.startswith("CORS_"):
        cors_headers.cache_clear()


setting_changed.connect(_cors_settings_changed, dispatch_uid="cv-cors-headers")
