"""Long-lived sockets on a real uvicorn with the real Redis channel layer, price feed and
Celery worker: a socket that stays idle for longer than every Redis and socket timeout
in the stack (settings.REDIS_SOCKET_TIMEOUT, the broker's, the feed's health check,
uvicorn's ping) is still up, and the next event reaches it.

Each Redis client waits in a blocking read while nothing happens (BZPOPMIN for
/ws/user, pub/sub for /ws/prices, BRPOP for the worker). A socket timeout below that
wait dropped an idle /ws/user socket after 5 s (redis-py 8's default): the channel
layer's TimeoutError closed it with 1013 and was logged as a Redis outage.
"""

import asyncio
import logging
from decimal import Decimal

import httpx
import orjson
import pytest
import websockets
from asgiref.sync import sync_to_async
from django.conf import settings

from accounts import services as account_services
from cryptovault.asgi import application
from cryptovault.testing import uvicorn_in_thread
from markets.services import prices_on_tick, prices_record
from orders.tests.factories import coins_and_prices, user_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

IDLE_SECONDS = 30
EVENT_TIMEOUT = 10


def _tick(price: str) -> None:
    prices = {"bitcoin": Decimal(price)}
    as_of = prices_record(prices=prices)
    prices_on_tick(as_of=as_of, prices=prices, changed=["bitcoin"])


async def _recv(socket) -> dict:
    return orjson.loads(await asyncio.wait_for(socket.recv(), EVENT_TIMEOUT))


async def _stays_silent(socket, seconds: float) -> None:
    """Idle for ``seconds``: nothing arrives and the server does not drop the socket
    (``recv`` would raise ConnectionClosed)."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(socket.recv(), seconds)


async def _close_code(socket) -> int:
    """The code the server closed ``socket`` with, after any frames still in flight."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await _recv(socket)
    return closed.value.rcvd.code


async def test_idle_sockets_outlive_every_redis_timeout(celery_worker, caplog):
    # The 30 s must exceed every timeout it is meant to cover.
    assert IDLE_SECONDS > settings.REDIS_SOCKET_TIMEOUT
    assert IDLE_SECONDS > settings.CELERY_BROKER_TRANSPORT_OPTIONS["socket_timeout"]

    await sync_to_async(coins_and_prices)({"bitcoin": "50000"})
    user = await sync_to_async(user_create)(usd="1000")
    _, tokens = await sync_to_async(account_services.session_start)(user=user)
    access = tokens["access"]
    caplog.set_level(logging.WARNING)

    # log_config=None: uvicorn's records reach the root logger, so caplog sees them.
    with uvicorn_in_thread(application, ws="auto", log_config=None) as address:
        # No client pings: only the server keeps the connection alive (or not).
        user_ws = await websockets.connect(
            f"ws://{address}/ws/user?token={access}", ping_interval=None
        )
        prices_ws = await websockets.connect(f"ws://{address}/ws/prices", ping_interval=None)
        assert (await _recv(prices_ws))["type"] == "snapshot"
        await asyncio.gather(
            _stays_silent(user_ws, IDLE_SECONDS), _stays_silent(prices_ws, IDLE_SECONDS)
        )

        await sync_to_async(_tick)("50001.5")
        tick = await _recv(prices_ws)
        assert tick["type"] == "tick" and tick["prices"]["bitcoin"]["usd"] == "50001.5"

        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            response = await http.post(
                "/api/v1/orders",
                json={"coin": "bitcoin", "side": "buy", "type": "market", "quantity": "0.01"},
                headers={"Authorization": f"Bearer {access}"},
            )
        assert response.status_code in (201, 202), response.text
        order_id = response.json()["id"]
        statuses = []
        while "filled" not in statuses:
            frame = await _recv(user_ws)
            if frame["type"] == "order":
                assert frame["order"]["id"] == order_id
                statuses.append(frame["order"]["status"])
        assert statuses[0] == "pending"
        # Leaving the block shuts the server down with both sockets still open.

    for socket in (user_ws, prices_ws):
        assert await _close_code(socket) == 1012  # "service restart": uvicorn's shutdown

    # Neither idling nor the server shutting down with sockets open logged an error or
    # a dependency outage (an idle /ws/user socket's Redis TimeoutError was logged so).
    problems = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info or r.name == "cryptovault.routing"
    ]
    assert not problems, [f"{r.name}: {r.getMessage()}" for r in problems]
