"""/ws/prices over the real Redis pub/sub feed and the real price store."""

import asyncio
import os
from decimal import Decimal

import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from markets import services as market_services
from markets.consumers import price_feed
from markets.selectors import prices_snapshot
from notifications.tests.ws import COINS, ws_connect, ws_receive, ws_receive_type

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def _record_and_tick(prices: dict[str, str]) -> None:
    """What the poller does after a successful fetch: write to Redis, then fan out."""
    decimals = {coin: Decimal(price) for coin, price in prices.items()}
    as_of = market_services.prices_record(prices=decimals, as_of=timezone.now())
    market_services.prices_on_tick(as_of=as_of, prices=decimals, changed=list(decimals))


async def _connected():
    communicator, connected, _ = await ws_connect("/ws/prices")
    assert connected
    snapshot = await ws_receive(communicator)
    assert snapshot["type"] == "snapshot"
    return communicator, snapshot


async def test_snapshot_on_connect_matches_get_prices(tracked):
    communicator, snapshot = await _connected()
    expected = await sync_to_async(prices_snapshot)()
    assert snapshot["as_of"] == expected["as_of"]
    assert snapshot["prices"] == expected["prices"]
    assert snapshot["prices"]["bitcoin"]["usd"] == "65000.12"
    await communicator.disconnect()


async def test_tick_after_every_poll(tracked):
    communicator, snapshot = await _connected()
    await sync_to_async(_record_and_tick)({"bitcoin": "66000.5"})
    tick = await ws_receive(communicator)
    assert tick["type"] == "tick"
    assert tick["as_of"] > snapshot["as_of"]
    assert tick["prices"]["bitcoin"]["usd"] == "66000.5"
    assert set(tick["prices"]["bitcoin"]) >= {"usd", "change_24h_pct"}
    await sync_to_async(_record_and_tick)({"bitcoin": "66001"})
    assert (await ws_receive(communicator))["prices"]["bitcoin"]["usd"] == "66001"
    await communicator.disconnect()


async def test_every_socket_gets_the_tick(tracked):
    sockets = [await _connected() for _ in range(5)]
    await sync_to_async(_record_and_tick)({"ethereum": "3100"})
    for communicator, _ in sockets:
        tick = await ws_receive(communicator)
        assert tick["prices"]["ethereum"]["usd"] == "3100"
        await communicator.disconnect()


async def test_subscribe_narrows_ticks(tracked):
    narrow, _ = await _connected()
    wide, _ = await _connected()
    await narrow.send_json_to({"type": "subscribe", "coins": ["ethereum", "Solana"]})
    # A ping answered means the subscribe before it was handled.
    await narrow.send_json_to({"type": "ping"})
    assert await ws_receive(narrow) == {"type": "pong"}

    await sync_to_async(_record_and_tick)({"bitcoin": "70000", "ethereum": "3200"})
    tick = await ws_receive(narrow)
    assert tick["type"] == "tick"
    assert set(tick["prices"]) == {"ethereum", "solana"}
    assert set((await ws_receive(wide))["prices"]) == set(COINS)

    await narrow.send_json_to({"type": "unsubscribe"})
    await narrow.send_json_to({"type": "ping"})
    assert await ws_receive(narrow) == {"type": "pong"}
    await sync_to_async(_record_and_tick)({"bitcoin": "70001"})
    assert set((await ws_receive(narrow))["prices"]) == set(COINS)
    await narrow.disconnect()
    await wide.disconnect()


async def test_ping_pong(tracked):
    communicator, _ = await _connected()
    await communicator.send_json_to({"type": "ping"})
    assert await ws_receive(communicator) == {"type": "pong"}
    await communicator.disconnect()


BAD_MESSAGES = [
    ("not json", "invalid_message"),
    ("[1, 2]", "invalid_message"),
    ('{"type": "dance"}', "unknown_type"),
    ('{"no": "type"}', "unknown_type"),
    ('{"type": "subscribe"}', "invalid_coins"),
    ('{"type": "subscribe", "coins": "bitcoin"}', "invalid_coins"),
    ('{"type": "subscribe", "coins": []}', "invalid_coins"),
    ('{"type": "subscribe", "coins": [1]}', "invalid_coins"),
    ('{"type": "subscribe", "coins": ["nope-coin"]}', "unknown_coins"),
    ("x" * 5000, "invalid_message"),
]


async def test_bad_messages_get_an_error_and_the_socket_stays_open(tracked):
    communicator, _ = await _connected()
    for frame, code in BAD_MESSAGES:
        await communicator.send_to(text_data=frame)
        error = await ws_receive(communicator)
        assert error["type"] == "error", frame
        assert error["code"] == code, frame
        assert error["detail"]
    await communicator.send_json_to({"type": "ping"})
    assert await ws_receive(communicator) == {"type": "pong"}
    await communicator.disconnect()


async def test_binary_frames_get_an_error(tracked):
    communicator, _ = await _connected()
    await communicator.send_to(bytes_data=b"\x00\x01")
    assert (await ws_receive(communicator))["code"] == "invalid_message"
    await communicator.disconnect()


async def test_foreign_origin_is_refused_but_own_and_none_pass(tracked):
    _, connected, _ = await ws_connect("/ws/prices", headers=[(b"origin", b"https://evil.example")])
    assert not connected
    communicator, connected, _ = await ws_connect(
        "/ws/prices", headers=[(b"origin", b"http://localhost:8000")]
    )
    assert connected
    await communicator.disconnect()


async def test_snapshot_before_first_poll_is_empty(db):
    communicator, snapshot = await _connected()
    assert snapshot["prices"] == {} and snapshot["as_of"] is None
    await communicator.disconnect()


async def test_resync_after_redis_reconnect(tracked):
    communicator, _ = await _connected()
    resyncs = price_feed.resyncs
    # Drop the feed's own subscription connection (only this process's, by name).
    client = redis.Redis.from_url(settings.REDIS_URL)
    killed = 0
    for entry in client.client_list(_type="pubsub"):
        if entry["name"] == f"cv-price-feed-{os.getpid()}":
            killed += client.client_kill_filter(_id=entry["id"])
    assert killed
    frame = await ws_receive_type(communicator, "snapshot")
    assert frame["prices"]["bitcoin"]["usd"] == "65000.12"
    assert price_feed.resyncs == resyncs + 1
    # And ticks flow again over the new subscription.
    await sync_to_async(_record_and_tick)({"bitcoin": "1"})
    assert (await ws_receive_type(communicator, "tick"))["prices"]["bitcoin"]["usd"] == "1"
    await communicator.disconnect()


def _stall(socket) -> asyncio.Event:
    """Makes ``socket`` a client that stopped reading: the server's sends to it suspend
    until the returned gate is set."""
    gate = asyncio.Event()
    send = socket.send

    async def paused_send(message):
        await gate.wait()
        await send(message)

    socket.send = paused_send
    return gate


async def test_slow_socket_gets_a_snapshot_instead_of_a_backlog(tracked):
    communicator, _ = await _connected()
    (socket,) = price_feed._sockets
    gate = _stall(socket)
    frame = '{"type":"tick","as_of":null,"prices":{}}'
    socket.deliver(None, frame)
    await asyncio.sleep(0)  # its writer takes the frame and waits on the stalled client
    for _ in range(100):
        socket.deliver(None, frame)
    assert socket.dropped > 0
    gate.set()
    assert (await ws_receive(communicator))["type"] == "tick"  # the one in flight
    assert (await ws_receive(communicator))["type"] == "snapshot"  # instead of the backlog
    await communicator.send_json_to({"type": "ping"})
    assert await ws_receive_type(communicator, "pong") == {"type": "pong"}
    await communicator.disconnect()


async def test_a_socket_that_stops_reading_does_not_hold_up_a_tick(tracked):
    stalled, _ = await _connected()
    (stalled_socket,) = price_feed._sockets
    reading, _ = await _connected()
    gate = _stall(stalled_socket)
    await sync_to_async(_record_and_tick)({"bitcoin": "67000"})
    # The reading socket has its tick while the stalled one's send still waits.
    assert (await ws_receive(reading))["prices"]["bitcoin"]["usd"] == "67000"
    gate.set()
    # The stalled socket's tick was abandoned: it gets the snapshot, which holds it.
    frame = await ws_receive(stalled)
    assert frame["type"] == "snapshot"
    assert frame["prices"]["bitcoin"]["usd"] == "67000"
    await stalled.disconnect()
    await reading.disconnect()


@pytest.fixture
def live_server_url():
    """The platform's ASGI application on a real uvicorn (websockets-sansio, as in
    production)."""
    from cryptovault.asgi import application
    from cryptovault.testing import uvicorn_in_thread

    with uvicorn_in_thread(application, ws="auto") as address:
        yield f"ws://{address}"


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_ticks_reach_a_real_client_over_uvicorn(tracked, live_server_url, compression):
    """Under uvicorn (websockets-sansio, as in production) a standards-checking client
    (websockets) reads the snapshot, ticks and replies, also with permessage-deflate
    negotiated (each socket's frames then go out compressed)."""
    import orjson
    import websockets

    async with websockets.connect(
        f"{live_server_url}/ws/prices", compression=compression, max_size=2**20
    ) as client:
        assert orjson.loads(await client.recv())["type"] == "snapshot"
        await sync_to_async(_record_and_tick)({"bitcoin": "70000.5"})
        tick = orjson.loads(await asyncio.wait_for(client.recv(), 5))
        assert tick["type"] == "tick" and tick["prices"]["bitcoin"]["usd"] == "70000.5"
        await client.send('{"type":"subscribe","coins":["ethereum"]}')
        await client.send('{"type":"ping"}')
        assert orjson.loads(await asyncio.wait_for(client.recv(), 5)) == {"type": "pong"}
        await sync_to_async(_record_and_tick)({"bitcoin": "1", "ethereum": "2"})
        narrowed = orjson.loads(await asyncio.wait_for(client.recv(), 5))
        assert narrowed["type"] == "tick" and set(narrowed["prices"]) == {"ethereum"}
