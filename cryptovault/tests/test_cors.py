"""Browser apps on other origins: CORS on the API (Django's path and the /prices fast
lane, through the real ASGI application) and the origin check of stream handshakes
(a real uvicorn and real WebSocket clients)."""

import asyncio
from decimal import Decimal

import httpx
import pytest
import websockets

from cryptovault.asgi import application
from cryptovault.cors import stream_origin_allowed
from cryptovault.testing import uvicorn_in_thread
from markets.services import prices_record

APP = "http://localhost:3000"
STRANGER = "http://evil.example"


@pytest.fixture(autouse=True)
def _browser_app_allowed(settings):
    settings.CORS_ALLOWED_ORIGINS = [APP]


def _preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }


async def _request(method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        return await client.request(method, path, headers=headers)


def _cors(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def _assert_preflight_allowed(response: httpx.Response) -> None:
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    assert int(response.headers["access-control-max-age"]) > 0
    # Bearer tokens, not cookies: the browser sends no credentials.
    assert "access-control-allow-credentials" not in response.headers
    assert "origin" in response.headers["vary"].lower()


@pytest.mark.django_db
async def test_a_preflight_from_a_listed_origin_is_allowed_and_cached():
    response = await _request("OPTIONS", "/api/v1/orders", _preflight(APP))
    _assert_preflight_allowed(response)
    assert response.content == b""


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/orders", "/api/v1/prices"])
async def test_an_unlisted_origin_gets_no_cors_headers(path):
    preflight = await _request("OPTIONS", path, _preflight(STRANGER, "GET"))
    actual = await _request("GET", path, {"Origin": STRANGER})
    assert preflight.status_code == 200
    assert _cors(preflight) == {}
    assert _cors(actual) == {}


@pytest.mark.django_db
async def test_an_actual_request_exposes_the_request_id_and_retry_after():
    response = await _request("GET", "/api/v1/orders", {"Origin": APP})
    assert response.status_code == 401  # CORS headers on errors too, or the app sees none
    assert response.headers["access-control-allow-origin"] == APP
    exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
    assert exposed == {"x-request-id", "retry-after"}
    assert "access-control-allow-credentials" not in response.headers
    assert "access-control-max-age" not in response.headers


@pytest.mark.django_db
async def test_pages_outside_the_api_get_no_cors_headers():
    response = await _request("GET", "/health", {"Origin": APP})
    assert _cors(response) == {}


@pytest.mark.django_db
async def test_the_prices_fast_lane_answers_cors_as_django_does():
    prices_record(prices={"bitcoin": Decimal("65000")})
    fast_preflight = await _request("OPTIONS", "/api/v1/prices", _preflight(APP, "GET"))
    django_preflight = await _request("OPTIONS", "/api/v1/coins", _preflight(APP, "GET"))
    fast = await _request("GET", "/api/v1/prices", {"Origin": APP})
    django = await _request("GET", "/api/v1/coins", {"Origin": APP})

    _assert_preflight_allowed(fast_preflight)
    assert _cors(fast_preflight) == _cors(django_preflight)
    assert fast_preflight.headers["x-request-id"]
    assert fast.status_code == django.status_code == 200
    assert fast.json()["prices"]["bitcoin"]["usd"] == "65000"
    assert _cors(fast) == _cors(django)
    assert fast.headers["access-control-allow-origin"] == APP
    assert fast.headers["vary"] == django.headers["vary"]


def _ws_status(address: str, path: str, origin: str | None) -> int:
    async def handshake() -> int:
        try:
            async with websockets.connect(f"ws://{address}{path}", origin=origin) as socket:
                await asyncio.wait_for(socket.recv(), timeout=10)
                return 101
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    return asyncio.run(handshake())


@pytest.mark.django_db(transaction=True)
def test_websocket_handshakes_accept_listed_origins_own_hosts_and_programs():
    prices_record(prices={"bitcoin": Decimal("65000")})
    with uvicorn_in_thread(application, ws="auto") as address:
        own = f"http://localhost:{address.rsplit(':', 1)[1]}"
        assert _ws_status(address, "/ws/prices", APP) == 101
        assert _ws_status(address, "/ws/prices", own) == 101
        assert _ws_status(address, "/ws/prices", None) == 101  # bots, servers, CLI tools
        assert _ws_status(address, "/ws/prices", STRANGER) == 403
        assert _ws_status(address, "/ws/user?token=x", STRANGER) == 403


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        (APP, True),
        ("http://127.0.0.1:8000", True),  # ALLOWED_HOSTS names hosts, any port
        ("https://localhost", True),
        ("http://[::1]:3000", True),
        ("https://app.example.com", False),
        ("http://localhost.evil.example", False),
        (STRANGER, False),
        ("null", False),
        ("ws://evil.example", False),
        ("http://[::1", False),
        ("", False),
    ],
)
def test_stream_origin_allowed(origin, allowed):
    assert stream_origin_allowed(origin) is allowed


def test_the_default_allowed_origin_is_app_urls():
    from cryptovault.tests.test_settings import run_python

    result = run_python(
        ["-c", "from django.conf import settings; print(settings.CORS_ALLOWED_ORIGINS)"],
        DEBUG="true",
        APP_URL="https://app.example.com:8443/console/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['https://app.example.com:8443']"
