"""ASGI lane for the public market reads, in front of Django: ``GET /api/v1/prices``,
``coins``, ``coins/<id>``, ``coins/<id>/history``, ``coins/<id>/ohlc`` and ``arbitrage``.

Through Django, every request takes a hop onto one of the ``WEB_THREADS`` request
threads and runs the whole middleware chain (``cryptovault.asgi_handler``), costs that
dwarf a read of one Redis key (README, "Market data", has the measured ratios). These
reads are the same for every client, so this lane answers them from Redis: one
pipelined round trip holds the per-IP rate counter and the encoded body (the price
store's for ``/prices``; for the others the entry Django stored, ``markets.read_cache``,
served only while its version is current). It adds the headers Django's
``SecurityMiddleware``/``XFrameOptionsMiddleware`` and our
``ContentSecurityPolicyMiddleware`` would add (computed once, by those classes), the
CORS headers django-cors-headers would add (computed by its middleware once per origin
and path; a CORS preflight is answered here too), the ``X-Request-ID`` the request-id
middleware would set, the ETag and Cache-Control, and answers ``If-None-Match`` with
304. Anything it is not sure about (another method or path, a query or ``Accept`` the
view may answer differently, a host not in ``ALLOWED_HOSTS``, an HTTP request that must
be redirected to HTTPS, a cache miss, Redis trouble) goes to Django, where
``markets.apis`` serves the same bytes the slow way and stores them for the next time.

A miss is refilled once per process: when an entry expires or a poll retires it, every
connection reading it misses at the same moment, and each going to Django would queue
them all behind as many renders (the lane's p99). The first miss goes to Django; the
others wait for it (``REFILL_WAIT_SECONDS`` at most) and read what it stored. Per
request the lane does what the bare app does (one Redis round trip, one send) plus what
the contract needs; an entry's headers are decoded and encoded once per stored value,
not per request.
"""

import asyncio
import io
import re
import time
from collections.abc import Awaitable, Callable
from functools import cache, lru_cache, partial
from typing import Any, NamedTuple

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.core.signals import setting_changed
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
from markets.price_store import (
    PRICES_AS_OF_KEY,
    PRICES_BODY_KEY,
    prices_body_render,
)
from markets.read_cache import (
    cache_control,
    entry_decode,
    entry_key,
    etag_matches,
    etag_of,
    read_async,
    read_counted_async,
    read_uncount_async,
)

PRICES_PATH = "/api/v1/prices"
# Path patterns, their rate group and the URL pattern Django would have matched
# (markets/urls.py), as MetricsMiddleware labels it.
ROUTES = (
    (re.compile(r"/api/v1/prices"), "prices", "api/v1/prices"),
    (re.compile(r"/api/v1/coins"), "coins", "api/v1/coins"),
    (re.compile(r"/api/v1/coins/[^/]+"), "coin-detail", "api/v1/coins/<str:coin_id>"),
    (
        re.compile(r"/api/v1/coins/[^/]+/history"),
        "coin-history",
        "api/v1/coins/<str:coin_id>/history",
    ),
    (re.compile(r"/api/v1/coins/[^/]+/ohlc"), "coin-ohlc", "api/v1/coins/<str:coin_id>/ohlc"),
    (re.compile(r"/api/v1/arbitrage"), "arbitrage", "api/v1/arbitrage"),
)
JSON = (b"content-type", b"application/json")
# What a 304 keeps of the 200's own headers (Django's ``get_conditional_response``).
NOT_MODIFIED_HEADERS = ("etag", "vary")
# What DRF's JSON-only negotiation accepts; any other Accept is Django's to refuse (406).
ACCEPTED = (b"application/json", b"application/*", b"*/*")
REQUEST_ID_NAME = REQUEST_ID_HEADER.lower().encode("latin-1")
# How long a miss waits for the refill of the same entry already running in this
# process before it goes to Django itself (a render takes milliseconds; a coin's details
# may wait on the source).
REFILL_WAIT_SECONDS = 1.0
# Decoded entries kept per lane; past this many (queries are the client's to choose)
# they are dropped and decoded again.
DECODED_MAX = 256


class Entry(NamedTuple):
    """An entry as the lane answers it: headers encoded once, not per request."""

    as_of_raw: bytes | None
    etag: str
    headers: tuple[tuple[bytes, bytes], ...]
    not_modified_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def _entry_of(as_of_raw: bytes | None, headers: list, body: bytes) -> Entry:
    encoded = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    return Entry(
        as_of_raw=as_of_raw,
        etag=next(value for name, value in headers if name == "etag"),
        headers=encoded,
        # As Django's get_conditional_response: no body, no Content-Type.
        not_modified_headers=tuple(h for h in encoded if h[0].decode() in NOT_MODIFIED_HEADERS),
        body=body,
    )


def _prices_entry(body: bytes, as_of_raw: bytes | None) -> Entry:
    """``GET /prices`` from its body as rendered for this request (its stale flag)."""
    headers = [("content-type", "application/json"), ("etag", etag_of(body))]
    return _entry_of(as_of_raw, headers, body)


def _route(path: str) -> tuple[str, str] | None:
    for pattern, group, route in ROUTES:
        if pattern.fullmatch(path):
            return group, route
    return None


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
    return tuple(
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in response.items()
        if k.lower() != "content-type"
    )


# Bounded: the Host header is the client's to choose.
@lru_cache(maxsize=256)
def _host_allowed(host: str) -> bool:
    """As Django's ``HttpRequest.get_host`` judges it (``ALLOWED_HOSTS``)."""
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


def _settings_changed(setting: str, **_: object) -> None:
    if setting == "ALLOWED_HOSTS":
        _host_allowed.cache_clear()


setting_changed.connect(_settings_changed, dispatch_uid="cv-reads-lane-hosts")


def _is_secure(scope: dict, headers: dict[bytes, bytes]) -> bool:
    if scope.get("scheme") == "https":
        return True
    proxy_header = settings.SECURE_PROXY_SSL_HEADER
    if not proxy_header:
        return False
    name, value = proxy_header
    given = headers.get(_header_name(name))
    return given is not None and given.decode("latin-1").split(",")[0].strip() == value


@cache
def _header_name(meta_name: str) -> bytes:
    """``HTTP_X_FORWARDED_PROTO`` -> ``x-forwarded-proto``."""
    return meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")


def public_reads_lane(django_app):
    # Refills of a missed entry running in this process, by cache key: the first miss
    # goes to Django, which stores the body; the misses after it wait for that and read
    # it (one render per entry and process, not one per waiting connection).
    refills: dict[str, asyncio.Event] = {}
    # Entries decoded from Redis, by cache key, with what they were decoded from.
    decoded: dict[str, tuple[tuple[bytes, bytes | None], Entry]] = {}

    def entry_from(key: str, prices: bool, values: list) -> Entry | None:
        """The entry to serve from what Redis holds, or None: a miss (for ``/prices``
        an empty store, which Django refills from PostgreSQL). ``/prices`` is known by
        its bytes as rendered for this request, so a stale flag that has turned since is
        never served from the entry of the bytes before."""
        raw = values[0]
        if raw is None:
            return None
        seen = (
            (prices_body_render(body=raw, as_of_raw=values[1]), values[1])
            if prices
            else (raw, None)
        )
        known = decoded.get(key)
        if known is not None and known[0] == seen:
            return known[1]
        if len(decoded) >= DECODED_MAX:
            decoded.clear()
        entry = _prices_entry(*seen) if prices else _entry_of(*entry_decode(raw))
        decoded[key] = (seen, entry)
        return entry

    async def refilled(key: str, pending: asyncio.Event, prices: bool, keys: list) -> Entry | None:
        """The entry the refill in flight stores, once it has answered; None when it
        stored nothing or took longer than ``REFILL_WAIT_SECONDS``."""
        try:
            async with asyncio.timeout(REFILL_WAIT_SECONDS):
                await pending.wait()
        except TimeoutError:
            return None
        return entry_from(key, prices, await read_async(keys))

    async def to_django(
        key: str, uncount: Callable[[], Awaitable[None]] | None, scope, receive, send
    ) -> None:
        """A miss: Django answers, fills the cache and counts the read itself (the
        lane's count, ``uncount``, is taken back). The first miss of a key claims its
        refill before anything is awaited, so a miss after it waits in ``refilled``;
        one that waited in vain goes straight on."""
        done = None if key in refills else refills.setdefault(key, asyncio.Event())
        try:
            if uncount is not None:
                try:
                    await uncount()
                except RedisError:
                    pass  # Django counts it again: one read counted twice, none lost
            await django_app(scope, receive, send)
        finally:
            if done is not None:
                del refills[key]
                done.set()

    async def app(scope, receive, send):
        if scope["type"] != "http" or (routed := _route(scope["path"])) is None:
            return await django_app(scope, receive, send)
        group, route = routed
        started = time.perf_counter()
        headers = dict(scope["headers"])
        preflight = scope["method"] == "OPTIONS" and b"access-control-request-method" in headers
        if scope["method"] not in ("GET", "HEAD") and not preflight:
            return await django_app(scope, receive, send)
        host = headers.get(b"host", b"").decode("latin-1")
        secure = _is_secure(scope, headers)
        accept = headers.get(b"accept")
        if (
            not _host_allowed(host)
            or (settings.SECURE_SSL_REDIRECT and not secure)
            or scope.get("root_path")
            or settings.USE_X_FORWARDED_HOST
            or (accept is not None and not any(kind in accept for kind in ACCEPTED))
        ):
            return await django_app(scope, receive, send)
        origin = headers.get(b"origin")
        cors = cors_headers(
            scope["path"], None if origin is None else origin.decode("latin-1"), preflight
        )
        if preflight:
            # As CorsMiddleware answers one: 200, empty, no rate limit spent.
            return await _respond(send, headers, secure, 200, b"", cors)
        # Only counted reads need the client (``RATELIMIT_ENABLE``).
        client = (
            client_ip_from(
                peer=(scope.get("client") or ("0.0.0.0", 0))[0],  # noqa: S104 - a value
                forwarded_for=headers.get(b"x-forwarded-for", b"").decode("latin-1"),
            )
            if settings.RATELIMIT_ENABLE
            else ""
        )
        prices = group == "prices"
        key = (
            PRICES_BODY_KEY
            if prices
            else entry_key(
                scheme="https" if secure else "http",
                host=host,
                path=scope["path"],
                query=scope["query_string"].decode("latin-1"),
            )
        )
        keys = [key, PRICES_AS_OF_KEY] if prices else [key]
        try:
            values, retry_after = await read_counted_async(group=group, client_ip=client, keys=keys)
            entry = None if retry_after else entry_from(key, prices, values)
            if entry is None and not retry_after and (pending := refills.get(key)) is not None:
                entry = await refilled(key, pending, prices, keys)
        except RedisError:
            # Django counts it (or answers a JSON 503: Redis is out).
            return await to_django(key, None, scope, receive, send)
        if entry is None and not retry_after:
            uncount = partial(read_uncount_async, group=group, client_ip=client)
            return await to_django(key, uncount, scope, receive, send)
        extra: tuple[tuple[bytes, bytes], ...]
        if entry is None:
            status, body = 429, rate_limited_body(retry_after)
            extra = (JSON, (b"retry-after", str(retry_after).encode("latin-1")))
        else:
            status, body, extra = 200, entry.body, entry.headers
            given = headers.get(b"if-none-match")
            if given is not None and etag_matches(given.decode("latin-1"), entry.etag):
                status, body, extra = 304, b"", entry.not_modified_headers
            cache = (b"cache-control", cache_control(entry.as_of_raw).encode("latin-1"))
            extra = (*extra, cache)
        await _respond(
            send,
            headers,
            secure,
            status,
            b"" if scope["method"] == "HEAD" else body,
            (*cors, *extra),
            content_length=len(body),
        )
        http_request_observe(
            method=scope["method"],
            route=route,
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
    request_id = request_id_from(request_headers.get(REQUEST_ID_NAME, b"").decode("latin-1"))
    length = len(body) if content_length is None else content_length
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *_static_headers(secure),
                *extra_headers,
                (b"content-length", str(length).encode("latin-1")),
                (REQUEST_ID_NAME, request_id.encode("latin-1")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
