"""Orders placed and cancelled on /ws/user: the REST service, validation, idempotency,
rate limit and session checks, answered ``order.ack`` or ``error``."""

import asyncio
from decimal import Decimal

import httpx
import orjson
import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from accounts import services as account_services
from accounts.tests.helpers import session_idle_out
from cryptovault.asgi import application
from cryptovault.testing import minute_fresh, uvicorn_in_thread
from notifications.consumers import UserConsumer
from notifications.middleware import JWTAuthMiddleware
from notifications.tests.ws import RECEIVE_TIMEOUT, ws_closed_with, ws_connect, ws_receive
from orders.limits import ORDER_CREATE_RATE
from orders.models import Balance, Order
from orders.tests.factories import coins_and_prices, limit_order_place, user_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

MARKET_BUY = {"coin": "bitcoin", "side": "buy", "type": "market", "quantity": "0.01"}


def _trader(usd: str = "1000"):
    coins_and_prices({"bitcoin": "50000"})
    user = user_create(usd=usd)
    session, tokens = account_services.session_start(user=user)
    return user, session, tokens["access"]


async def _open(token: str) -> WebsocketCommunicator:
    communicator, connected, _ = await ws_connect(f"/ws/user?token={token}")
    assert connected
    return communicator


async def _ask(communicator, message: dict) -> dict:
    """The reply to ``message``, past the order and notification events in between."""
    await communicator.send_json_to(message)
    while True:
        frame = await ws_receive(communicator)
        if frame["type"] not in ("order", "notification"):
            return frame


async def _send(socket, message: dict) -> None:
    await socket.send(orjson.dumps(message).decode())


async def _recv(socket) -> dict:
    return orjson.loads(await asyncio.wait_for(socket.recv(), RECEIVE_TIMEOUT))


async def _reply(socket) -> dict:
    """The next reply on a real socket, past the order and notification events (another
    process may fill or reject the orders placed before it)."""
    while True:
        frame = await _recv(socket)
        if frame["type"] not in ("order", "notification"):
            return frame


async def test_place_acks_then_streams_the_order_to_filled_on_a_real_server(celery_worker):
    user, _, token = await sync_to_async(_trader)()
    with uvicorn_in_thread(application, ws="auto") as address:
        async with websockets.connect(f"ws://{address}/ws/user?token={token}") as socket:
            await _send(socket, {"type": "order.place", "request_id": "r-1", "order": MARKET_BUY})
            ack = await _recv(socket)
            assert ack["type"] == "order.ack" and ack["request_id"] == "r-1"
            order = ack["order"]
            assert (order["coin"], order["side"], order["quantity"]) == ("bitcoin", "buy", "0.01")
            assert order["status"] == "pending"
            statuses = []
            while "filled" not in statuses:
                frame = await _recv(socket)
                assert frame["type"] in ("order", "notification"), frame
                if frame["type"] == "order":
                    assert frame["order"]["id"] == order["id"]
                    statuses.append(frame["order"]["status"])
            assert statuses[0] == "pending"
            # The REST view shows the same order.
            async with httpx.AsyncClient(base_url=f"http://{address}") as http:
                response = await http.get(
                    f"/api/v1/orders/{order['id']}", headers={"Authorization": f"Bearer {token}"}
                )
            assert response.json()["status"] == "filled"
            assert response.json()["id"] == order["id"]
    assert await Order.objects.filter(user=user).acount() == 1


async def test_one_rate_limit_counter_with_rest():
    user, _, token = await sync_to_async(_trader)("100000")
    limit = int(ORDER_CREATE_RATE.split("/")[0])
    body = {**MARKET_BUY, "quantity": "0.0001"}
    # The REST burst and the socket's two orders must fall in one rate-limit minute.
    await sync_to_async(minute_fresh)()
    with uvicorn_in_thread(application) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            for _ in range(limit - 1):
                response = await http.post(
                    "/api/v1/orders", json=body, headers={"Authorization": f"Bearer {token}"}
                )
                assert response.status_code == 201, response.text
        async with websockets.connect(f"ws://{address}/ws/user?token={token}") as socket:
            await _send(socket, {"type": "order.place", "request_id": 1, "order": body})
            assert (await _reply(socket))["type"] == "order.ack"
            await _send(socket, {"type": "order.place", "request_id": 2, "order": body})
            refused = await _reply(socket)
    assert refused["type"] == "error" and refused["request_id"] == 2
    assert refused["code"] == "rate_limited" and refused["retry_after"] >= 1
    assert await Order.objects.filter(user=user).acount() == limit


async def test_a_repeated_client_order_id_acks_the_first_order():
    user, _, token = await sync_to_async(_trader)()
    communicator = await _open(token)
    body = {**MARKET_BUY, "client_order_id": "bot-7"}
    first = await _ask(communicator, {"type": "order.place", "request_id": "a", "order": body})
    again = await _ask(communicator, {"type": "order.place", "request_id": "b", "order": body})
    assert (first["type"], again["type"]) == ("order.ack", "order.ack")
    assert again["request_id"] == "b"
    assert again["order"]["id"] == first["order"]["id"]
    assert again["order"]["client_order_id"] == "bot-7"
    assert await Order.objects.filter(user=user).acount() == 1
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"quantity": "0.123456789"}, "invalid", "quantity"),
        ({"quantity": "1e10"}, "invalid", "quantity"),
        ({"side": "hold"}, "invalid", "side"),
        ({"type": "limit"}, "invalid", "limit_price"),
        ({"client_order_id": "no spaces"}, "invalid", "client_order_id"),
        ({"coin": "dogecoin"}, "unknown_coin", None),
        ({"quantity": "1"}, "insufficient_funds", None),
    ],
)
async def test_rest_validation_and_errors(changes, code, field):
    user, _, token = await sync_to_async(_trader)()
    communicator = await _open(token)
    frame = await _ask(
        communicator, {"type": "order.place", "request_id": "x", "order": {**MARKET_BUY, **changes}}
    )
    assert frame["type"] == "error" and frame["request_id"] == "x"
    assert frame["code"] == code and frame["detail"]
    if field:
        assert frame["errors"][field], frame
    assert not await Order.objects.filter(user=user).aexists()
    assert await _ask(communicator, {"type": "ping"}) == {"type": "pong"}
    await communicator.disconnect()


async def test_cancel_acks_the_cancelled_order_then_conflict_and_not_found():
    user, _, token = await sync_to_async(_trader)()
    other, _, _ = await sync_to_async(_trader)()
    order = await sync_to_async(limit_order_place)(user, quantity="0.01", limit_price="10000")
    others = await sync_to_async(limit_order_place)(other, quantity="0.01", limit_price="10000")
    communicator = await _open(token)
    ack = await _ask(communicator, {"type": "order.cancel", "request_id": 5, "id": order.pk})
    assert ack["type"] == "order.ack" and ack["request_id"] == 5
    assert (ack["order"]["id"], ack["order"]["status"]) == (order.pk, "cancelled")
    balance = await Balance.objects.aget(user=user, asset="usd")
    assert balance.locked == 0 and balance.available == Decimal("1000")

    again = await _ask(communicator, {"type": "order.cancel", "request_id": 6, "id": order.pk})
    assert (again["type"], again["code"]) == ("error", "order_not_cancellable")
    for order_id in (others.pk, 2**63, 0):
        missing = await _ask(communicator, {"type": "order.cancel", "id": order_id})
        assert (missing["code"], missing["request_id"]) == ("not_found", None)
    await others.arefresh_from_db()
    assert others.status == Order.Status.PENDING
    await communicator.disconnect()


@pytest.mark.parametrize(
    "text",
    [
        "nope",
        "[1]",
        '{"type": "dance"}',
        '{"type": "order.place", "order": "bitcoin"}',
        '{"type": "order.place", "request_id": {"a": 1}, "order": {}}',
        '{"type": "order.cancel", "id": "7"}',
        '{"type": "order.cancel", "id": true}',
        '{"type": "resume", "since": "soon"}',
        "x" * 9000,
    ],
)
async def test_malformed_messages_are_bad_request_and_the_socket_stays_open(text):
    _, _, token = await sync_to_async(_trader)()
    communicator = await _open(token)
    await communicator.send_to(text_data=text)
    frame = await ws_receive(communicator)  # nothing else is pushed to this new user
    assert (frame["type"], frame["code"]) == ("error", "bad_request"), frame
    assert await _ask(communicator, {"type": "ping"}) == {"type": "pong"}
    await communicator.disconnect()


async def test_a_session_ended_without_a_push_places_nothing():
    """An idled-out session (nobody pushes) is caught by the check on each place."""
    user, session, token = await sync_to_async(_trader)()
    communicator = await _open(token)
    await sync_to_async(session_idle_out)(session.pk)
    await communicator.send_json_to({"type": "order.place", "request_id": 1, "order": MARKET_BUY})
    assert await ws_closed_with(communicator) == 4401
    assert not await Order.objects.filter(user=user).aexists()


async def test_a_locked_user_places_nothing():
    user, _, token = await sync_to_async(_trader)()
    communicator = await _open(token)
    await type(user).objects.filter(pk=user.pk).aupdate(is_active=False)
    await communicator.send_json_to({"type": "order.place", "request_id": 1, "order": MARKET_BUY})
    assert await ws_closed_with(communicator) == 4401
    assert not await Order.objects.filter(user=user).aexists()


class _ReadOnlyScopes:
    """What an authentication with scopes (an API key without ``trade``) sets."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        return await self.app({**scope, "auth_scopes": ["read"]}, receive, send)


async def test_a_socket_without_the_trade_scope_cannot_trade():
    user, _, token = await sync_to_async(_trader)()
    app = JWTAuthMiddleware(_ReadOnlyScopes(UserConsumer.as_asgi()))
    communicator = WebsocketCommunicator(app, f"/ws/user?token={token}")
    connected, _ = await communicator.connect(timeout=RECEIVE_TIMEOUT)
    assert connected
    for message in (
        {"type": "order.place", "request_id": 1, "order": MARKET_BUY},
        {"type": "order.cancel", "request_id": 2, "id": 1},
    ):
        frame = await _ask(communicator, message)
        assert (frame["type"], frame["code"]) == ("error", "permission_denied")
    assert not await Order.objects.filter(user=user).aexists()
    await communicator.disconnect()
