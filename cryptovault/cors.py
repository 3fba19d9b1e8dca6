"""Which browser origins may open a stream (WebSocket, Server-Sent Events).

CORS on plain HTTP is django-cors-headers' job (settings ``CORS_*``). A stream
handshake is checked here instead, against the same ``CORS_ALLOWED_ORIGINS`` plus the
platform's own hosts (``ALLOWED_HOSTS``, so its own pages can open streams): a browser
on another origin must not ride a user's ``?token=`` link or, for a public stream,
the platform's capacity, without being allowed in. A handshake without ``Origin``
passes: browsers always send it, programs (bots, servers, CLI tools) do not, and
cross-site hijacking needs a browser.
"""

from urllib.parse import urlsplit

from django.conf import settings
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
