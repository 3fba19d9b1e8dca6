"""ASGI fast lane for ``GET /api/v1/prices``, the platform's hottest endpoint.

Through Django, every request takes a hop onto one of the ``WEB_THREADS`` request
threads and runs the whole middleware chain (``cryptovault.asgi_handler``), costs that
dwarf a read of one Redis key (README, "Market data", has the measured ratio). The price
snapshot is public and pre-encoded, so this lane answers it in front of Django: one Redis
MGET, the headers Django's ``SecurityMiddleware``/``XFrameOptionsMiddleware`` and our
``ContentSecurityPolicyMiddleware`` would add (computed once, by those classes), the CORS
headers django-cors-headers would add (computed by its middleware once per origin; a CORS
preflight is answered here too), and the ``X-Request-ID`` the request-id middleware would
set. Anything it is not sure about (another method or path, a host not in
``ALLOWED_HOSTS``, an HTTP request that must be redirected to HTTPS, Redis trouble) goes
to Django, where ``markets.apis.prices`` serves the same bytes the slow way. The per-IP
rate limit rides in the same Redis round trip (one pipelined INCR).
"""

import io
import time
from functools import cache
from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse
from django.http.request import split_domain_port, validate_host
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from redis.exceptions import RedisError

from cryptovault.cors import cors_headers
from cryptovault.metrics import http_request_observe
from cryptovault.middleware import (
    REQUEST_ID_HEADER,
    ContentSecurityPolicyMiddleware,
    request_id_from,
)
from cryptovault.net import client_ip_from
from cryptovault.ratelimit import rate_limited_body
from markets.price_store import prices_snapshot_bytes_async

PRICES_PATH = "/api/v1/prices"
# The URL pattern Django would have matched (markets/urls.py), as MetricsMiddleware labels it.
PRICES_ROUTE = "api/v1/prices"


@cache
def _static_headers(secure: bool) -> tuple[tuple[bytes, bytes], ...]:
    """The headers Django's middleware adds to every response, from those classes, given
    a request as Django builds it from an ASGI scope of that scheme."""
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": PRICES_PATH,
        "scheme": "https" if secure else "http",
        "query_string": b"",
        "headers": [],
    }
    request = ASGIRequest(scope, io.BytesIO())
    response = HttpResponse(content_type="application/json")
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
        if scope["type"] != "http" or scope["path"] != PRICES_PATH:
            return await django_app(scope, receive, send)
        started = time.perf_counter()
        headers = dict(scope["headers"])
        preflight = scope["method"] == "OPTIONS" and b"access-control-request-method" in headers
        if scope["method"] not in ("GET", "HEAD") and not preflight:
            return await django_app(scope, receive, send)
        domain, _port = split_domain_port(headers.get(b"host", b"").decode("latin-1"))
        secure = _is_secure(scope, headers)
        if (
            not domain
            or not validate_host(domain, settings.ALLOWED_HOSTS)
            or (settings.SECURE_SSL_REDIRECT and not secure)
        ):
            return await django_app(scope, receive, send)
        origin = headers.get(b"origin")
        cors = cors_headers(
            PRICES_PATH, None if origin is None else origin.decode("latin-1"), preflight
        )
        if preflight:
            # As CorsMiddleware answers one: 200, empty, no rate limit spent.
            return await _respond(send, headers, secure, 200, b"", cors)
        client = client_ip_from(
            peer=(scope.get("client") or ("0.0.0.0", 0))[0],  # noqa: S104 - a value
            forwarded_for=headers.get(b"x-forwarded-for", b"").decode("latin-1"),
        )
        try:
            body, retry_after = await prices_snapshot_bytes_async(client_ip=client)
        except RedisError:
            return await django_app(scope, receive, send)
        extra_headers = []
        status = 429 if retry_after else 200
        if retry_after:
            body = rate_limited_body(retry_after)
            extra_headers.append((b"retry-after", str(retry_after).encode("latin-1")))
        await _respond(
            send,
            headers,
            secure,
            status,
            b"" if scope["method"] == "HEAD" else body,
            (*cors, *extra_headers),
            content_length=len(body),
        )
        http_request_observe(
            method=scope["method"],
            route=PRICES_ROUTE,
            status=status,
            seconds=time.perf_counter() - started,
        )

    return app


async def _respond(
    send,
    request_headers: dict[bytes, bytes],
    secure: bool,
    status: int,
    body: bytes,
    extra_headers,
    content_length: int | None = None,
) -> None:
    given_id = request_headers.get(REQUEST_ID_HEADER.lower().encode("latin-1"), b"")
    request_id = request_id_from(given_id.decode("latin-1"))
    length = len(body) if content_length is None else content_length
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *_static_headers(secure),
                *extra_headers,
                (b"content-length", str(length).encode("latin-1")),
                (REQUEST_ID_HEADER.encode("latin-1"), request_id.encode("latin-1")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
