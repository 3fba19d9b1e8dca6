"""ASGI fast lane for ``GET /api/v1/prices``, the platform's hottest endpoint.

Django's built-in middleware (security, sessions, CSRF, auth ...) runs on its async
path through ``sync_to_async``: about a dozen thread hops per request, which caps even a
trivial async view at a few hundred requests/s on a small machine. The price snapshot is
public and pre-encoded, so this lane answers it in front of Django: one Redis MGET, the
headers Django's ``SecurityMiddleware``/``XFrameOptionsMiddleware`` and our
``ContentSecurityPolicyMiddleware`` would add (computed once, by those classes), and the
``X-Request-ID`` the request-id middleware would set. Anything it is not sure about
(another method or path, a host not in ``ALLOWED_HOSTS``, an HTTP request that must be
redirected to HTTPS, Redis trouble) goes to Django, where ``markets.apis.prices`` serves
the same bytes the slow way. The per-IP rate limit rides in the same Redis round trip
(one pipelined INCR).
"""

from functools import cache
from types import SimpleNamespace

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port, validate_host
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from redis.exceptions import RedisError

from accounts.ratelimit import rate_limited_body
from cryptovault.middleware import (
    REQUEST_ID_HEADER,
    ContentSecurityPolicyMiddleware,
    request_id_from,
)
from cryptovault.net import client_ip_from
from markets.selectors import prices_snapshot_bytes_async

PRICES_PATH = "/api/v1/prices"


class _ProbeRequest(HttpRequest):
    def __init__(self, secure: bool) -> None:
        super().__init__()
        self._secure = secure

    def _get_scheme(self) -> str:
        return "https" if self._secure else "http"


@cache
def _static_headers(secure: bool) -> tuple[tuple[bytes, bytes], ...]:
    """The headers Django's middleware adds to every response, from those classes."""
    response = HttpResponse(content_type="application/json")
    request = _ProbeRequest(secure)
    SecurityMiddleware(lambda r: response).process_response(request, response)
    XFrameOptionsMiddleware(lambda r: response).process_response(request, response)
    ContentSecurityPolicyMiddleware(lambda r: response).process_response(request, response)
    return tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.items())


def _is_secure(scope: dict, headers: dict[bytes, bytes]) -> bool:
    if scope.get("scheme") == "https":
        return True
    proxy_header = settings.SECURE_PROXY_SSL_HEADER
    if not proxy_header:
        return False
    name, value = proxy_header
    wanted = name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
    return headers.get(wanted, b"").decode("latin-1").split(",")[0].strip() == value


def prices_fast_lane(django_app):
    async def app(scope, receive, send):
        if (
            scope["type"] != "http"
            or scope["path"] != PRICES_PATH
            or scope["method"] not in ("GET", "HEAD")
        ):
            return await django_app(scope, receive, send)
        headers = dict(scope["headers"])
        domain, _port = split_domain_port(headers.get(b"host", b"").decode("latin-1"))
        secure = _is_secure(scope, headers)
        if (
            not domain
            or not validate_host(domain, settings.ALLOWED_HOSTS)
            or (settings.SECURE_SSL_REDIRECT and not secure)
        ):
            return await django_app(scope, receive, send)
        client = client_ip_from(
            peer=(scope.get("client") or ("0.0.0.0", 0))[0],  # noqa: S104 - a value
            forwarded_for=headers.get(b"x-forwarded-for", b"").decode("latin-1"),
        )
        try:
            body, retry_after = await prices_snapshot_bytes_async(client_ip=client)
        except RedisError:
            return await django_app(scope, receive, send)
        extra_headers = []
        if retry_after:
            body = rate_limited_body(retry_after)
            extra_headers.append((b"retry-after", str(retry_after).encode("latin-1")))
        given_id = headers.get(REQUEST_ID_HEADER.lower().encode("latin-1"), b"")
        request_id = request_id_from(
            SimpleNamespace(headers={REQUEST_ID_HEADER: given_id.decode("latin-1")})
        )
        await send(
            {
                "type": "http.response.start",
                "status": 429 if retry_after else 200,
                "headers": [
                    *_static_headers(secure),
                    *extra_headers,
                    (b"content-length", str(len(body)).encode("latin-1")),
                    (REQUEST_ID_HEADER.encode("latin-1"), request_id.encode("latin-1")),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    return app
