"""The ASGI handler: requests on a fixed set of threads, whose DB connections persist."""

import asyncio
import threading
from contextvars import Context, ContextVar
from decimal import Decimal

import httpx
import pytest
from django.core.cache import caches
from django.core.handlers.asgi import ASGIHandler
from django.db import connections
from django.db.backends.signals import connection_created
from django_redis import get_redis_connection

from cryptovault.asgi_handler import PooledThreadsASGIHandler

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def persistent_connections():
    """CONN_MAX_AGE > 0 for connections opened by request threads (they share this dict)."""
    settings_dict = connections.settings["default"]
    before = settings_dict["CONN_MAX_AGE"]
    settings_dict["CONN_MAX_AGE"] = 60
    yield
    settings_dict["CONN_MAX_AGE"] = before


@pytest.fixture
def opened():
    """Threads that opened a database connection, one entry per connection."""
    threads: list[str] = []

    def record(sender, connection, **kwargs):
        threads.append(threading.current_thread().name)

    connection_created.connect(record)
    yield threads
    connection_created.disconnect(record)


def _close_connections_of(handler: PooledThreadsASGIHandler) -> None:
    """Close the connection of every request thread: one call per thread, each held
    until all are running, so no thread takes two."""
    barrier = threading.Barrier(handler.threads)

    def close() -> None:
        barrier.wait(timeout=10)
        connections.close_all()

    for future in [handler.executor.submit(close) for _ in range(handler.threads)]:
        future.result()


async def _requests(app, paths: list[str], *, concurrently: bool = False):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        if concurrently:
            return await asyncio.gather(*(client.get(path) for path in paths))
        return [await client.get(path) for path in paths]


async def test_connections_persist_on_the_request_threads(persistent_connections, opened):
    handler = PooledThreadsASGIHandler(threads=2)
    try:
        responses = await _requests(handler, ["/health"] * 12, concurrently=True)
        responses += await _requests(handler, ["/health"] * 8)
    finally:
        await asyncio.to_thread(_close_connections_of, handler)
    assert [r.status_code for r in responses] == [200] * 20
    # 20 requests that each query the database, on 2 threads: at most 2 connections.
    assert 1 <= len(opened) <= 2
    assert all(name.startswith("django-request") for name in opened)


async def test_djangos_own_handler_connects_per_request(persistent_connections, opened):
    """What the handler exists to avoid (and what this test suite would catch)."""
    responses = await _requests(ASGIHandler(), ["/health"] * 5)
    assert [r.status_code for r in responses] == [200] * 5
    assert len(opened) == 5


async def test_middleware_and_errors_as_under_djangos_handler():
    handler = PooledThreadsASGIHandler(threads=1)
    try:
        ours = await _requests(handler, ["/health", "/api/v1/nowhere", "/api/v1/orders"])
        theirs = await _requests(ASGIHandler(), ["/health", "/api/v1/nowhere", "/api/v1/orders"])
    finally:
        await asyncio.to_thread(_close_connections_of, handler)
    assert [r.status_code for r in ours] == [r.status_code for r in theirs] == [200, 404, 401]
    for mine, stock in zip(ours, theirs, strict=True):
        assert mine.headers["content-type"] == stock.headers["content-type"]
        assert mine.headers["x-frame-options"] == "DENY"
        assert mine.headers["x-content-type-options"] == "nosniff"
        assert len(mine.headers["x-request-id"]) == 32
    assert ours[2].json()["code"] == theirs[2].json()["code"]


async def test_the_admin_login_works_through_it():
    """Sessions, CSRF and the staff login form: Django's sync middleware, on our threads."""
    handler = PooledThreadsASGIHandler(threads=1)
    transport = httpx.ASGITransport(app=handler)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            page = await client.get("/admin/login/")
            assert page.status_code == 200
            token = client.cookies["csrftoken"]
            refused = await client.post("/admin/login/", data={"username": "x", "password": "y"})
            assert refused.status_code == 403  # no CSRF token
            wrong = await client.post(
                "/admin/login/",
                data={"username": "nobody@example.com", "password": "y"},
                headers={"X-CSRFToken": token, "Referer": "http://localhost/admin/login/"},
            )
            assert wrong.status_code == 200  # the form again, with its error
            assert b"correct email" in wrong.content.lower() or b"errornote" in wrong.content
    finally:
        await asyncio.to_thread(_close_connections_of, handler)


async def test_an_async_view_still_works():
    from markets.price_store import prices_snapshot_bytes
    from markets.services import prices_record

    await asyncio.to_thread(prices_record, prices={"bitcoin": Decimal("65000")})
    handler = PooledThreadsASGIHandler(threads=1)
    try:
        (response,) = await _requests(handler, ["/api/v1/prices"])
    finally:
        await asyncio.to_thread(_close_connections_of, handler)
    assert response.status_code == 200
    assert response.content == await asyncio.to_thread(prices_snapshot_bytes)


def test_at_least_one_thread():
    with pytest.raises(ValueError, match="at least 1"):
        PooledThreadsASGIHandler(threads=0)


async def test_a_body_without_content_length_reaches_the_view():
    """A chunked request body (no Content-Length) is read whole and parsed by DRF."""
    handler = PooledThreadsASGIHandler(threads=1)

    async def chunks():
        yield b'{"email": "nobody@example.com", '
        yield b'"password": "wrong-password"}'

    transport = httpx.ASGITransport(app=handler)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            chunked = await client.post(
                "/api/v1/auth/login", content=chunks(), headers={"Content-Type": "application/json"}
            )
            empty = await client.post(
                "/api/v1/auth/login", content=b"", headers={"Content-Type": "application/json"}
            )
    finally:
        await asyncio.to_thread(_close_connections_of, handler)
    assert "content-length" not in chunked.request.headers
    # Credentials read and refused, unlike the empty body's missing fields.
    assert chunked.status_code == 401, chunked.text
    assert empty.status_code == 400


def _observing(handler: PooledThreadsASGIHandler, observe) -> None:
    """Run ``observe()`` on the request thread before each request reaches Django."""
    django_app = handler.wsgi_app

    def app(environ, start_response):
        observe()
        return django_app(environ, start_response)

    handler.wsgi_app = app


async def test_caches_persist_on_the_request_threads():
    """One RedisCache (and redis-py client) per thread, as under a threaded WSGI server,
    not one per request."""
    handler = PooledThreadsASGIHandler(threads=2)
    # The objects themselves, kept alive: the id of a freed one is reused.
    seen: list[tuple[int, object, object]] = []
    _observing(
        handler,
        lambda: seen.append(
            (threading.get_ident(), caches["default"], get_redis_connection("default"))
        ),
    )
    transport = httpx.ASGITransport(app=handler)
    loop = asyncio.get_running_loop()

    def request(client: httpx.AsyncClient) -> asyncio.Task:
        # In a task of its own, from a context with nothing set, as uvicorn runs them.
        return loop.create_task(client.get("/health"), context=Context())

    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            responses = list(await asyncio.gather(*(request(client) for _ in range(12))))
            responses += [await request(client) for _ in range(8)]
    finally:
        await asyncio.to_thread(_close_connections_of, handler)
    assert [r.status_code for r in responses] == [200] * 20
    threads = {thread for thread, _, _ in seen}
    assert 1 <= len(threads) <= 2
    assert len({(thread, id(cache)) for thread, cache, _ in seen}) == len(threads)
    assert len({(thread, id(client)) for thread, _, client in seen}) == len(threads)


async def test_what_a_request_sets_stays_with_it():
    """Context variables start afresh on every request, also on one thread. (Each request
    in a task of its own, as uvicorn runs them: sync_to_async copies what its function set
    back into the calling task's context.)"""
    marker: ContextVar[str | None] = ContextVar("marker", default=None)
    handler = PooledThreadsASGIHandler(threads=1)
    found: list[str | None] = []

    def observe() -> None:
        found.append(marker.get())
        marker.set("set by a request")

    _observing(handler, observe)
    transport = httpx.ASGITransport(app=handler)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            responses = [await asyncio.create_task(client.get("/health")) for _ in range(3)]
    finally:
        await asyncio.to_thread(_close_connections_of, handler)
    assert [r.status_code for r in responses] == [200] * 3
    assert found == [None, None, None]
