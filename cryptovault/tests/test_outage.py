"""Dependency outages through the real ASGI stack on a real uvicorn: PostgreSQL behind a
TCP proxy the test cuts and restores, then recovery without restarting anything."""

import asyncio
import shutil
import socket
import subprocess
import threading
import time

import httpx
import psycopg2
import pytest
import redis
import websockets
from channels.routing import ProtocolTypeRouter, URLRouter
from django.conf import settings
from django.db import connection
from django.test import Client

from accounts.tests.factories import PASSWORD, user_create
from cryptovault.asgi_handler import PooledThreadsASGIHandler
from cryptovault.routing import (
    OriginCheckMiddleware,
    WebSocketOutageMiddleware,
    websocket_urlpatterns,
)
from cryptovault.testing import TcpProxy, uvicorn_in_thread
from markets.asgi import public_reads_lane

pytestmark = pytest.mark.django_db(transaction=True)

REQUEST_THREADS = 2
APP_NAME = "cv-outage-test-web"


@pytest.fixture
def postgres_proxy():
    """Every new database connection of this test goes through a proxy we control."""
    db = settings.DATABASES["default"]
    saved = {key: db.get(key) for key in ("HOST", "PORT", "CONN_MAX_AGE")}
    saved_options = dict(db["OPTIONS"])
    proxy = TcpProxy((db.get("HOST") or "localhost", int(db.get("PORT") or 5432)))
    # Persistent, as in production: the request threads keep their connections.
    db.update(HOST="127.0.0.1", PORT=str(proxy.port), CONN_MAX_AGE=60)
    db["OPTIONS"]["application_name"] = APP_NAME
    yield proxy
    db.update(saved)
    db["OPTIONS"].clear()
    db["OPTIONS"].update(saved_options)
    connection.close()  # this thread's connection went through the proxy too
    proxy.down()


def _application(*, threads: int) -> ProtocolTypeRouter:
    """The web process's stack, its request pool ``threads`` wide."""
    return ProtocolTypeRouter(
        {
            "http": public_reads_lane(PooledThreadsASGIHandler(threads=threads)),
            "websocket": WebSocketOutageMiddleware(
                OriginCheckMiddleware(URLRouter(websocket_urlpatterns))
            ),
        }
    )


@pytest.fixture
def server(postgres_proxy):
    # Fresh request threads, so every connection they open goes through the proxy.
    application = _application(threads=REQUEST_THREADS)
    with uvicorn_in_thread(application, ws="auto") as address:
        yield address


def _assert_service_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["code"] == "service_unavailable"
    assert response.json()["detail"]
    assert int(response.headers["Retry-After"]) >= 1


def _ws_status(url: str) -> int:
    """The handshake's status: 101, or a refusal that must be the JSON 503 outage."""

    async def handshake() -> int:
        try:
            async with websockets.connect(url):
                return 101
        except websockets.InvalidStatus as exc:
            assert exc.response.headers["Retry-After"]
            assert b"service_unavailable" in exc.response.body
            return exc.response.status_code

    return asyncio.run(handshake())


def _login(http: httpx.Client, email: str) -> httpx.Response:
    return http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})


def test_refused_postgres_is_503_json_then_recovers(server, postgres_proxy, settings):
    settings.DEBUG = True  # no HTML debug page either
    # Longer than the connect retries: each request gives up after them (kept short here).
    settings.DATABASE_CONNECT_RETRY_SECONDS = 0.5
    user = user_create()
    with httpx.Client(base_url=f"http://{server}", timeout=20) as http:
        access = _login(http, user.email).json()["access"]
        me = http.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {access}"})
        assert me.status_code == 200

        postgres_proxy.down()
        auth = {"Authorization": f"Bearer {access}"}
        _assert_service_unavailable(http.get("/api/v1/auth/me", headers=auth))
        order = {"coin": "bitcoin", "side": "buy", "type": "market", "quantity": "0.01"}
        _assert_service_unavailable(http.post("/api/v1/orders", json=order, headers=auth))
        _assert_service_unavailable(_login(http, user.email))
        assert _ws_status(f"ws://{server}/ws/user?token={access}") == 503

        postgres_proxy.up()
        assert http.get("/api/v1/auth/me", headers=auth).status_code == 200
        assert _login(http, user.email).status_code == 200
        assert _ws_status(f"ws://{server}/ws/user?token={access}") == 101


def test_a_postgres_restart_shorter_than_the_connect_retries_is_invisible(
    server, postgres_proxy, settings
):
    assert settings.DATABASE_CONNECT_RETRY_SECONDS >= 2
    user = user_create()
    with httpx.Client(base_url=f"http://{server}", timeout=20) as http:
        access = _login(http, user.email).json()["access"]
        auth = {"Authorization": f"Bearer {access}"}
        assert http.get("/api/v1/auth/me", headers=auth).status_code == 200

        postgres_proxy.down()  # refused for about a second, then accepted again
        threading.Timer(1.0, postgres_proxy.up).start()
        assert http.get("/api/v1/auth/me", headers=auth).status_code == 200
        assert _login(http, user.email).status_code == 200


def test_terminated_backends_are_replaced_on_the_next_request(server):
    user = user_create()
    with httpx.Client(base_url=f"http://{server}", timeout=20) as http:
        access = _login(http, user.email).json()["access"]
        auth = {"Authorization": f"Bearer {access}"}
        for _ in range(2 * REQUEST_THREADS):
            assert http.get("/api/v1/auth/me", headers=auth).status_code == 200
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                [APP_NAME],
            )
            assert cursor.fetchone()[0] >= 1
        statuses = [
            http.get("/api/v1/auth/me", headers=auth).status_code
            for _ in range(2 * REQUEST_THREADS)
        ]
        assert statuses == [200] * (2 * REQUEST_THREADS)


def test_a_statement_timeout_in_a_request_is_503(api_client, settings):
    """A request stuck behind a lock ends at the session's limit: 503, not a hung thread."""
    user = user_create()
    access = api_client.post(
        "/api/v1/auth/login", {"email": user.email, "password": PASSWORD}, format="json"
    ).json()["access"]
    db = settings.DATABASES["default"]
    blocker = psycopg2.connect(
        dbname=db["NAME"], user=db["USER"], host=db["HOST"] or "localhost", port=db["PORT"]
    )
    try:
        with blocker.cursor() as cursor:
            cursor.execute("LOCK TABLE accounts_user IN ACCESS EXCLUSIVE MODE")
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 300")
        try:
            response = api_client.get("/api/v1/auth/me", HTTP_AUTHORIZATION=f"Bearer {access}")
        finally:
            blocker.rollback()
            with connection.cursor() as cursor:
                cursor.execute("RESET statement_timeout")
    finally:
        blocker.close()
    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"
    assert response["Retry-After"] == "5"


def test_every_connection_starts_with_the_database_limits():
    with connection.cursor() as cursor:
        for name, ms in settings.DATABASE_LIMITS_MS.items():
            cursor.execute("SELECT setting::int FROM pg_settings WHERE name = %s", [name])
            assert cursor.fetchone()[0] == ms


def test_redis_down_is_503_json_on_prices_and_their_socket(settings):
    unreachable = "redis://127.0.0.1:1/0"
    settings.REDIS_URL = unreachable
    settings.REDIS_CONNECT_RETRY_SECONDS = 0.3  # a long outage: the retries give up
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": unreachable,
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        }
    }
    application = _application(threads=1)

    with uvicorn_in_thread(application, ws="auto") as address:
        _assert_service_unavailable(httpx.get(f"http://{address}/api/v1/prices", timeout=20))
        assert _ws_status(f"ws://{address}/ws/prices") == 503


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def full_redis(tmp_path):
    """A throwaway redis-server on a free port that refuses every write: maxmemory is
    already exceeded and nothing may be evicted."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - fixed arguments
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--maxmemory",
            "1",
            "--maxmemory-policy",
            "noeviction",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


def test_redis_refusing_writes_is_503_json_on_auth_rate_limits_and_the_admin(full_redis, settings):
    user = user_create()
    client = Client()
    access = client.post(
        "/api/v1/auth/login",
        {"email": user.email, "password": PASSWORD},
        content_type="application/json",
    ).json()["access"]
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": full_redis,
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
        }
    }

    responses = [
        # The session check writes through the raw client (OutOfMemoryError) ...
        client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {access}"}),
        # ... rate limits through the cache (ConnectionInterrupted), in DRF and the admin.
        client.post("/api/v1/auth/forgot-password", {"email": "x@example.com"}, "application/json"),
        client.post("/admin/login/", {"username": user.email, "password": PASSWORD}),
    ]
    for response in responses:
        assert response.status_code == 503, response.content
        assert response["Content-Type"].startswith("application/json")
        assert response.json()["code"] == "service_unavailable"
        assert int(response["Retry-After"]) >= 1
