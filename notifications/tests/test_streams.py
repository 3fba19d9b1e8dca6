"""GET /api/v1/stream/user end to end: a real uvicorn, a real SSE client (httpx
streaming), real sessions, the Redis channel layer and the PostgreSQL event log."""

import signal
import socket
import threading
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import orjson
import pytest
from django.db import transaction
from django.utils import timezone
from websockets.sync.client import connect as ws_connect

from accounts import services as account_services
from cryptovault.asgi import application
from cryptovault.testing import uvicorn_in_thread
from markets import services as market_services
from markets.selectors import prices_snapshot
from notifications import services
from notifications.events import EVENT_RETENTION_PER_USER, events_prune
from notifications.models import UserEvent
from notifications.tests.factories import user_create
from notifications.tests.ws import uvicorn_process

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = httpx.Timeout(10.0)


@pytest.fixture(scope="module")
def server():
    with uvicorn_in_thread(application) as address:
        yield f"http://{address}"


def _login(user=None):
    user = user or user_create()
    session, tokens = account_services.session_start(user=user)
    return user, session, tokens["access"]


def _notify(user, title: str = "x"):
    return services.notification_create(user=user, kind="new_login", title=title)


class SSE:
    """A minimal EventSource: the events (and comments) of one open stream."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()

    def next(self) -> dict:
        """The next event as {"event", "id", "data"} or {"comment"}; {} at the end."""
        event: dict = {}
        for line in self._lines:
            if line == "":
                if event:
                    return event
                continue
            if line.startswith(":"):
                return {"comment": line[1:].strip()}
            field, _, value = line.partition(": ")
            event[field] = value
        return event

    def next_event(self) -> dict:
        while "comment" in (event := self.next()):
            pass
        if "data" in event:
            event["data"] = orjson.loads(event["data"])
        return event


def _stream(client: httpx.Client, server: str, token: str | None = None, **params):
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if "last_event_id" in params:
        headers["Last-Event-ID"] = str(params.pop("last_event_id"))
    return client.stream(
        "GET", f"{server}/api/v1/stream/user", headers=headers, params=params, timeout=TIMEOUT
    )


def _assert_refused(response: httpx.Response, status: int, code: str) -> None:
    """A stream refused before it started: ``status`` with the JSON error ``code``."""
    response.read()
    assert response.status_code == status
    assert response.json()["code"] == code


def test_live_events_carry_ids_and_the_ws_shape(server):
    user, _, token = _login()
    with httpx.Client() as client, _stream(client, server, token) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        sse = SSE(response)
        assert sse.next() == {"comment": "keep-alive"}  # sent at once: the stream is open
        notification = _notify(user, "hello")
        event = sse.next_event()
        assert event["event"] == "notification"
        assert event["data"]["id"] == int(event["id"])
        assert event["data"]["type"] == "notification"
        assert event["data"]["notification"]["id"] == notification.pk
        assert event["data"]["notification"]["title"] == "hello"
        # The frame logged is the frame pushed.
        logged = UserEvent.objects.get(user=user, event_id=int(event["id"]))
        assert orjson.loads(logged.frame) == event["data"]


def test_a_stream_marks_its_user_as_having_a_socket_while_open(server):
    """User streams take part in the push skip of notifications.realtime as sockets do."""
    from notifications.realtime import users_with_sockets

    user, _, token = _login()
    with httpx.Client() as client, _stream(client, server, token) as response:
        assert SSE(response).next() == {"comment": "keep-alive"}
        assert users_with_sockets([user.pk]) == {user.pk}
    deadline = time.monotonic() + 10
    while users_with_sockets([user.pk]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert users_with_sockets([user.pk]) == set()


def test_replay_across_a_disconnect_with_an_event_committed_during_the_replay(server):
    user, _, token = _login()
    with httpx.Client() as client:
        with _stream(client, server, token) as response:
            sse = SSE(response)
            sse.next()
            _notify(user, "seen")
            seen = sse.next_event()
        # Missed while disconnected.
        missed = [_notify(user, f"missed {n}") for n in range(3)]

        # A transaction that has its event id (the next one) but has not committed yet
        # when the client comes back: the replay cannot see it, the live feed brings it.
        took_id, commit = threading.Event(), threading.Event()

        def slow_commit() -> None:
            with transaction.atomic():
                _notify(user, "during replay")
                took_id.set()
                commit.wait(10)

        writer = threading.Thread(target=slow_commit)
        writer.start()
        assert took_id.wait(10)
        try:
            with _stream(client, server, token, last_event_id=seen["id"]) as response:
                sse = SSE(response)
                replayed = [sse.next_event() for _ in missed]
                assert [e["data"]["notification"]["title"] for e in replayed] == [
                    "missed 0",
                    "missed 1",
                    "missed 2",
                ]
                commit.set()
                writer.join(10)
                during = sse.next_event()
                assert during["data"]["notification"]["title"] == "during replay"
                _notify(user, "after")
                after = sse.next_event()
                assert after["data"]["notification"]["title"] == "after"
        finally:
            commit.set()
            writer.join(10)
        ids = [int(e["id"]) for e in [seen, *replayed, during, after]]
        assert ids == list(range(ids[0], ids[0] + 6))  # no gap, no duplicate


def test_last_event_id_in_the_query_and_order_events(server):
    from orders.tests.factories import coins_and_prices, limit_order_place
    from orders.tests.factories import user_create as trader_create

    coins_and_prices()
    user, _, token = _login(trader_create(usd="1000"))
    _notify(user)
    last_id = UserEvent.objects.get(user=user).event_id
    order = limit_order_place(user, quantity="0.001", limit_price="1000")
    with (
        httpx.Client() as client,
        client.stream(
            "GET",
            f"{server}/api/v1/stream/user",
            params={"token": token, "last_event_id": last_id},
            timeout=TIMEOUT,
        ) as response,
    ):
        event = SSE(response).next_event()
        assert event["event"] == "order"
        assert int(event["id"]) == last_id + 1
        assert event["data"]["order"]["id"] == order.pk


def test_revoked_mid_stream_ends_the_stream(server):
    user, session, token = _login()
    with httpx.Client() as client, _stream(client, server, token) as response:
        sse = SSE(response)
        sse.next()
        account_services.session_revoke(session_id=session.pk)
        assert sse.next_event()["event"] == "revoked"
        assert sse.next() == {}  # the server ended the stream
    # And the token no longer opens one.
    with httpx.Client() as client, _stream(client, server, token) as response:
        _assert_refused(response, 401, "not_authenticated")


@pytest.mark.parametrize("token", [None, "garbage"])
def test_bad_token_is_401_json(server, token):
    with httpx.Client() as client, _stream(client, server, token) as response:
        response.read()
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/json"


def test_bad_last_event_id_is_400(server):
    _, _, token = _login()
    with httpx.Client() as client, _stream(client, server, token, last_event_id="x") as response:
        _assert_refused(response, 400, "invalid_last_event_id")


def test_keep_alive(server, settings):
    settings.STREAM_KEEPALIVE_SECONDS = 0.2
    _, _, token = _login()
    with httpx.Client() as client, _stream(client, server, token) as response:
        sse = SSE(response)
        assert [sse.next() for _ in range(3)] == [{"comment": "keep-alive"}] * 3


def _assert_a_second_stream_refused(server, first_token: str, second_token: str) -> None:
    """With a stream open on ``first_token``, another on ``second_token`` is refused."""
    with httpx.Client() as client, _stream(client, server, first_token) as first:
        # Kept referenced: a collected line iterator closes its connection.
        first_events = SSE(first)
        first_events.next()
        with _stream(client, server, second_token) as second:
            _assert_refused(second, 429, "too_many_streams")


def test_cap_per_user_and_its_place_given_back(server, settings):
    settings.STREAM_MAX_PER_USER = 1
    _, _, token = _login()
    _assert_a_second_stream_refused(server, token, token)
    # Closing the first gives its place back, once the server has noticed.
    deadline = time.monotonic() + 10
    with httpx.Client() as client:
        while True:
            with _stream(client, server, token) as again:
                if again.status_code == 200 or time.monotonic() > deadline:
                    assert again.status_code == 200
                    SSE(again).next()
                    break
            time.sleep(0.05)


def test_cap_per_ip(server, settings):
    settings.STREAM_MAX_PER_USER = 5
    settings.STREAM_MAX_PER_IP = 1
    (_, _, token), (_, _, other) = _login(), _login()
    _assert_a_second_stream_refused(server, token, other)


APP = "http://localhost:3000"


def _cors(response: httpx.Response) -> dict[str, str]:
    return {
        k: v for k, v in response.headers.items() if k.startswith("access-control-") or k == "vary"
    }


def test_a_cross_origin_event_source_gets_the_apis_cors_headers(server, settings):
    settings.CORS_ALLOWED_ORIGINS = [APP]
    _, _, token = _login()
    with httpx.Client(timeout=TIMEOUT) as client:
        api = client.get(f"{server}/api/v1/orders", headers={"Origin": APP})  # Django's
        with client.stream(
            "GET", f"{server}/api/v1/stream/user", params={"token": token}, headers={"Origin": APP}
        ) as stream:
            assert stream.status_code == 200
            assert SSE(stream).next() == {"comment": "keep-alive"}
            stream_cors = _cors(stream)
        refused = client.get(f"{server}/api/v1/stream/user", headers={"Origin": APP})

    assert api.status_code == refused.status_code == 401
    assert refused.json()["code"] == "not_authenticated"
    assert stream_cors["access-control-allow-origin"] == APP
    assert "origin" in stream_cors["vary"].lower()
    assert stream_cors == _cors(api) == _cors(refused)
    assert set(stream_cors["access-control-expose-headers"].split(", ")) == {
        "x-request-id",
        "retry-after",
    }


def test_a_stream_preflight_is_answered_as_the_apis(server, settings):
    settings.CORS_ALLOWED_ORIGINS = [APP]
    preflight = {
        "Origin": APP,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, last-event-id",
    }
    with httpx.Client(timeout=TIMEOUT) as client:
        stream = client.options(f"{server}/api/v1/stream/user", headers=preflight)
        api = client.options(f"{server}/api/v1/orders", headers=preflight)
        stranger = client.options(
            f"{server}/api/v1/stream/user", headers={**preflight, "Origin": "http://evil.example"}
        )
        refused = client.get(
            f"{server}/api/v1/stream/user", headers={"Origin": "http://evil.example"}
        )

    assert stream.status_code == api.status_code == 200
    assert stream.content == b""
    assert _cors(stream) == _cors(api)
    assert stream.headers["access-control-allow-origin"] == APP
    allowed = {h.strip() for h in stream.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "last-event-id"} <= allowed
    assert "GET" in stream.headers["access-control-allow-methods"]
    # A foreign origin gets no CORS headers: the browser hides the 403 from its page.
    assert stranger.status_code == 200
    assert "access-control-allow-origin" not in stranger.headers
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers


def test_an_id_past_retention_is_a_reset(server):
    user, _, token = _login()
    for _ in range(3):
        _notify(user)
    UserEvent.objects.filter(user=user, event_id__lte=2).update(
        created_at=timezone.now() - timedelta(days=2)
    )
    assert events_prune() == 2
    with httpx.Client() as client:
        # Pruned, then never given; each round's live event moves the latest id on.
        for gone, latest in ((1, 3), (99, 4)):
            with _stream(client, server, token, last_event_id=gone) as response:
                sse = SSE(response)
                reset = sse.next_event()
                assert reset["event"] == "reset"
                assert reset["id"] == str(latest)
                assert reset["data"] == {"last_event_id": latest}
                _notify(user, "live")
                assert sse.next_event()["id"] == str(latest + 1)
        # Resuming from the oldest id still logged replays the rest.
        with _stream(client, server, token, last_event_id=2) as response:
            assert SSE(response).next_event()["id"] == "3"


def test_prune_keeps_the_last_events_of_each_user():
    user = user_create()
    with transaction.atomic(), services.deliveries_batched():
        for _ in range(EVENT_RETENTION_PER_USER + 2):
            _notify(user)
    assert events_prune() == 2
    assert UserEvent.objects.filter(user=user).order_by("event_id").first().event_id == 3


@pytest.mark.asyncio
async def test_ws_user_since_replays_then_goes_live_once():
    from asgiref.sync import sync_to_async

    from notifications.tests.ws import ws_connect, ws_receive

    user, _, token = await sync_to_async(_login)()
    for n in range(3):
        await sync_to_async(_notify)(user, f"n{n}")
    # A new user's ids start at 1.
    communicator, connected, _ = await ws_connect(f"/ws/user?token={token}&since=1")
    assert connected
    replayed = [await ws_receive(communicator) for _ in range(2)]
    assert [f["id"] for f in replayed] == [2, 3]
    assert [f["notification"]["title"] for f in replayed] == ["n1", "n2"]
    await sync_to_async(_notify)(user, "live")
    live = await ws_receive(communicator)
    assert (live["id"], live["notification"]["title"]) == (4, "live")
    await communicator.disconnect()

    communicator, connected, _ = await ws_connect(f"/ws/user?token={token}&since=99")
    assert await ws_receive(communicator) == {"type": "reset", "last_event_id": 4}
    await communicator.disconnect()


def test_sigterm_ends_open_streams_and_the_server_exits_cleanly():
    # uvicorn as the Procfile runs it, in its own process: signals reach its main thread.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = uvicorn_process(port)
    try:
        _, _, token = _login()
        server = f"http://127.0.0.1:{port}"
        with httpx.Client() as client, _stream(client, server, token) as response:
            assert response.status_code == 200
            sse = SSE(response)
            assert sse.next() == {"comment": "keep-alive"}
            process.send_signal(signal.SIGTERM)
            assert sse.next() == {}  # the server ended the stream (not a read timeout)
        # Exits on its own: the open stream no longer holds the shutdown.
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in stderr, stderr
    assert "Shutting down" in stderr


def _tick(prices: dict[str, str]) -> None:
    """What the poller does after a successful fetch: write to Redis, then publish."""
    decimals = {coin: Decimal(price) for coin, price in prices.items()}
    as_of = market_services.prices_record(prices=decimals, as_of=timezone.now())
    market_services.prices_on_tick(as_of=as_of, prices=decimals, changed=list(decimals))


def _prices(client: httpx.Client, server: str, **params):
    return client.stream("GET", f"{server}/api/v1/stream/prices", params=params, timeout=TIMEOUT)


def test_price_stream_sends_the_ws_prices_frames(server, tracked):
    address = server.removeprefix("http://")
    with (
        ws_connect(f"ws://{address}/ws/prices") as socket,
        httpx.Client() as client,
        _prices(client, server) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        sse = SSE(response)
        ws_snapshot = orjson.loads(socket.recv(timeout=10))
        snapshot = sse.next_event()
        assert snapshot["event"] == "snapshot" and "id" not in snapshot
        assert snapshot["data"] == ws_snapshot == {"type": "snapshot", **prices_snapshot()}
        assert snapshot["data"]["prices"]["bitcoin"]["usd"] == "65000.12"

        _tick({"bitcoin": "66000.5", "ethereum": "3100"})
        tick = sse.next_event()
        assert tick["event"] == "tick"
        assert tick["data"] == orjson.loads(socket.recv(timeout=10))
        assert tick["data"]["prices"]["bitcoin"]["usd"] == "66000.5"
        assert tick["data"]["as_of"] > snapshot["data"]["as_of"]


def test_price_stream_narrows_to_coins(server, tracked):
    with httpx.Client() as client, _prices(client, server, coins="Bitcoin, solana") as response:
        sse = SSE(response)
        assert set(sse.next_event()["data"]["prices"]) == {"bitcoin", "solana"}
        _tick({"bitcoin": "66000.5", "ethereum": "3100"})
        tick = sse.next_event()["data"]["prices"]
        assert set(tick) == {"bitcoin", "solana"}
        assert tick["bitcoin"] == prices_snapshot()["prices"]["bitcoin"]
        assert tick["bitcoin"]["usd"] == "66000.5"


@pytest.mark.parametrize(
    ("coins", "code"),
    [
        ("bitcoin,nope-coin", "unknown_coins"),
        ("BTC/USD", "invalid_coins"),
        (",".join(f"c{i}" for i in range(201)), "invalid_coins"),
    ],
)
def test_price_stream_refuses_bad_coins(server, tracked, coins, code):
    with httpx.Client() as client, _prices(client, server, coins=coins) as response:
        _assert_refused(response, 400, code)
    if code == "unknown_coins":
        assert response.json()["coins"] == ["nope-coin"]


def test_price_streams_are_anonymous_and_capped_per_ip(server, settings, tracked):
    settings.STREAM_MAX_PER_IP = 1
    with httpx.Client() as client:
        with _prices(client, server) as first:
            first_events = SSE(first)  # kept referenced: its connection stays open
            assert first_events.next_event()["event"] == "snapshot"
            # One cap per IP for every kind of stream.
            _, _, token = _login()
            for second in (_prices(client, server), _stream(client, server, token)):
                with second as refused:
                    refused.read()
                    assert refused.status_code == 429
                    assert refused.json()["code"] == "too_many_streams"
