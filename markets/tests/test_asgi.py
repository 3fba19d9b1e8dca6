"""The public reads lane in front of Django for GET /prices, through the real ASGI application."""

import asyncio
import time
from decimal import Decimal

import httpx
import pytest
from django.core.asgi import get_asgi_application

from cryptovault.asgi import application, django_asgi_app
from markets.asgi import public_reads_lane
from markets.price_store import prices_snapshot_bytes
from markets.services import prices_record

# Headers whose values differ per response by design.
PER_RESPONSE = {"x-request-id", "content-length"}


async def _get(app, path="/api/v1/prices", **kwargs):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        return await client.request(kwargs.pop("method", "GET"), path, **kwargs)


@pytest.fixture
def snapshot():
    prices_record(prices={"bitcoin": Decimal("65000"), "ethereum": Decimal("3000.5")})
    return prices_snapshot_bytes()


async def test_same_bytes_and_headers_as_the_django_view(snapshot):
    fast = await _get(application)
    slow = await _get(django_asgi_app)
    assert fast.status_code == slow.status_code == 200
    assert fast.content == slow.content == snapshot
    # Same header names and values as Django's middleware produces (security headers
    # included); only the request id and length are per response.
    assert {k: v for k, v in fast.headers.items() if k not in PER_RESPONSE} == {
        k: v for k, v in slow.headers.items() if k not in PER_RESPONSE
    }
    assert fast.headers["x-content-type-options"] == "nosniff"
    assert fast.headers["x-frame-options"] == "DENY"
    assert len(fast.headers["x-request-id"]) == 32


async def test_hsts_when_https(snapshot, settings):
    settings.HTTPS = True
    settings.SECURE_HSTS_SECONDS = 31536000
    from markets.asgi import _static_headers

    _static_headers.cache_clear()
    https = {"X-Forwarded-Proto": "https"}
    try:
        fast = await _get(application, headers=https)
        # A fresh Django app: its middleware reads the settings when loaded.
        slow = await _get(get_asgi_application(), headers=https)
    finally:
        _static_headers.cache_clear()
    assert fast.status_code == slow.status_code == 200
    assert fast.headers["strict-transport-security"].startswith("max-age=31536000")
    assert {k: v for k, v in fast.headers.items() if k not in PER_RESPONSE} == {
        k: v for k, v in slow.headers.items() if k not in PER_RESPONSE
    }


async def test_https_from_the_servers_scheme(snapshot, settings):
    """HTTPS the server saw itself (no proxy header): HSTS as Django would add it."""
    settings.HTTPS = True
    settings.SECURE_HSTS_SECONDS = 31536000
    from markets.asgi import _static_headers

    _static_headers.cache_clear()
    try:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="https://localhost") as client:
            fast = await client.get("/api/v1/prices")
        transport = httpx.ASGITransport(app=get_asgi_application())
        async with httpx.AsyncClient(transport=transport, base_url="https://localhost") as client:
            slow = await client.get("/api/v1/prices")
    finally:
        _static_headers.cache_clear()
    assert fast.status_code == slow.status_code == 200
    assert "strict-transport-security" in slow.headers
    assert {k: v for k, v in fast.headers.items() if k not in PER_RESPONSE} == {
        k: v for k, v in slow.headers.items() if k not in PER_RESPONSE
    }


async def test_echoes_a_sane_request_id_only(snapshot):
    echoed = await _get(application, headers={"X-Request-ID": "trace-42"})
    assert echoed.headers["x-request-id"] == "trace-42"
    replaced = await _get(application, headers={"X-Request-ID": "bad id!"})
    assert replaced.headers["x-request-id"] != "bad id!"


async def test_head_has_no_body(snapshot):
    response = await _get(application, method="HEAD")
    assert response.status_code == 200
    assert response.content == b""


async def _teapot(scope, receive, send):
    """Stands in for Django to show which requests the lane hands on."""
    await send({"type": "http.response.start", "status": 418, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/api/v1/prices", {}),
        ("GET", "/api/v1/prices/", {}),
        ("GET", "/api/v1/coins", {}),
        ("GET", "/api/v1/prices", {"Host": "evil.example"}),
    ],
)
async def test_hands_on_what_it_does_not_serve(snapshot, method, path, headers):
    lane = public_reads_lane(_teapot)
    response = await _get(lane, path=path, method=method, headers=headers)
    assert response.status_code == 418


async def test_ssl_redirect_left_to_django(snapshot, settings):
    settings.SECURE_SSL_REDIRECT = True
    lane = public_reads_lane(_teapot)
    assert (await _get(lane)).status_code == 418
    assert (await _get(lane, headers={"X-Forwarded-Proto": "https"})).status_code == 200


async def test_django_answers_what_the_lane_hands_on(snapshot):
    assert (await _get(application, headers={"Host": "evil.example"})).status_code == 400
    post = await _get(application, method="POST")
    assert post.status_code == 405
    assert post.json()["code"] == "method_not_allowed"


async def test_rate_limited_per_ip_in_the_lane_and_in_django(snapshot, settings):
    from markets.read_cache import READS_PER_MINUTE

    # The counts are per minute (fixed windows): a burst that straddles a minute's end
    # starts over, so it starts early in a minute.
    if time.time() % 60 > 40:
        await asyncio.sleep(60.5 - time.time() % 60)
    for _ in range(READS_PER_MINUTE["prices"]):
        assert (await _get(application)).status_code == 200
    for app in (application, django_asgi_app):  # one counter, whichever lane answers
        limited = await _get(app)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["code"] == "rate_limited"
        assert limited.headers["x-content-type-options"] == "nosniff"
    # Another client, as told by a trusted proxy, has its own count.
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    other = await _get(application, headers={"X-Forwarded-For": "203.0.113.9"})
    assert other.status_code == 200 and other.content == snapshot
    settings.RATELIMIT_ENABLE = False
    assert (await _get(application)).status_code == 200
