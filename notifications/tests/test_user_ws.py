"""/ws/user end to end: real tokens and sessions, the Redis channel layer, real pushes."""

from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from rest_framework_simplejwt.tokens import AccessToken

from accounts import services as account_services
from notifications import services
from notifications.models import Notification
from notifications.tests.factories import user_create
from notifications.tests.ws import ws_closed_with, ws_connect, ws_receive, ws_receive_type

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def _login(user=None):
    user = user or user_create()
    session, tokens = account_services.session_start(user=user)
    return user, session, tokens["access"]


async def _open(token: str):
    communicator, connected, subprotocol = await ws_connect(f"/ws/user?token={token}")
    assert connected
    return communicator


async def test_notification_pushed_with_the_rest_shape():
    user, _, token = await sync_to_async(_login)()
    communicator = await _open(token)
    notification = await sync_to_async(services.notification_create)(
        user=user, kind="new_login", title="New login", body="From 1.2.3.4", data={"ip": "1.2.3.4"}
    )
    frame = await ws_receive(communicator)
    assert frame["type"] == "notification"
    assert frame["notification"] == {
        "id": notification.pk,
        "kind": "new_login",
        "title": "New login",
        "body": "From 1.2.3.4",
        "data": {"ip": "1.2.3.4"},
        "read": False,
        "created_at": frame["notification"]["created_at"],
    }
    assert frame["notification"]["created_at"].endswith("Z")
    await communicator.disconnect()


async def test_subprotocol_bearer_token():
    user, _, token = await sync_to_async(_login)()
    communicator, connected, subprotocol = await ws_connect(
        "/ws/user", subprotocols=["bearer", token]
    )
    assert connected and subprotocol == "bearer"
    await sync_to_async(services.notification_create)(user=user, kind="email_verified", title="x")
    assert (await ws_receive(communicator))["notification"]["kind"] == "email_verified"
    await communicator.disconnect()


async def test_events_reach_only_their_user_and_every_socket_of_it():
    user, _, token = await sync_to_async(_login)()
    _, _, other_token = await sync_to_async(_login)()
    first, second, other = await _open(token), await _open(token), await _open(other_token)
    await sync_to_async(services.notification_create)(user=user, kind="price_alert", title="x")
    assert (await ws_receive(first))["type"] == "notification"
    assert (await ws_receive(second))["type"] == "notification"
    assert await other.receive_nothing(timeout=0.3)
    for communicator in (first, second, other):
        await communicator.disconnect()


async def test_nothing_is_pushed_for_a_rolled_back_notification():
    user, _, token = await sync_to_async(_login)()
    communicator = await _open(token)

    def create_then_roll_back():
        from django.db import transaction

        with transaction.atomic():
            services.notification_create(user=user, kind="price_alert", title="x")
            transaction.set_rollback(True)

    await sync_to_async(create_then_roll_back)()
    assert await communicator.receive_nothing(timeout=0.3)
    assert not await Notification.objects.filter(user=user).aexists()
    await communicator.disconnect()


async def test_ping_and_bad_messages():
    _, _, token = await sync_to_async(_login)()
    communicator = await _open(token)
    await communicator.send_json_to({"type": "ping"})
    assert await ws_receive(communicator) == {"type": "pong"}
    for frame in ("nope", '{"type": "dance"}'):
        await communicator.send_to(text_data=frame)
        assert (await ws_receive(communicator))["type"] == "error"
    await communicator.send_json_to({"type": "ping"})
    assert await ws_receive(communicator) == {"type": "pong"}
    await communicator.disconnect()


def _expired_access_token(token: str) -> str:
    expired = AccessToken(token)
    expired.set_exp(from_time=timezone.now() - timedelta(hours=1))
    return str(expired)


@pytest.mark.parametrize("case", ["missing", "garbage", "expired", "revoked", "bad_subprotocol"])
async def test_unauthenticated_sockets_are_closed_4401(case):
    _, session, token = await sync_to_async(_login)()
    path, subprotocols = f"/ws/user?token={token}", None
    if case == "missing":
        path = "/ws/user"
    elif case == "garbage":
        path = "/ws/user?token=not.a.jwt"
    elif case == "expired":
        path = f"/ws/user?token={await sync_to_async(_expired_access_token)(token)}"
    elif case == "revoked":
        await sync_to_async(account_services.session_revoke)(session_id=session.pk)
    elif case == "bad_subprotocol":
        path, subprotocols = "/ws/user", ["bearer", token[:-3] + "abc"]
    communicator, connected, _ = await ws_connect(path, subprotocols=subprotocols)
    assert connected  # accepted first, so the client sees the 4401 close code
    assert await ws_closed_with(communicator) == 4401


async def _two_sessions_connected():
    """A user with two login sessions, a socket open on each: ``(user, the first
    session, its socket, the other's socket)``."""
    user, session, token = await sync_to_async(_login)()
    _, _, other_token = await sync_to_async(_login)(user)
    return user, session, await _open(token), await _open(other_token)


async def _assert_only_the_ended_one_closed(user, ended, alive) -> None:
    """``ended``'s socket closes with 4401; ``alive``, the user's other session, is
    still served."""
    assert await ws_closed_with(ended) == 4401
    await sync_to_async(services.notification_create)(user=user, kind="price_alert", title="x")
    assert (await ws_receive(alive))["type"] == "notification"
    await alive.disconnect()


async def test_session_revoked_while_connected_is_disconnected():
    user, session, revoked, kept = await _two_sessions_connected()
    await sync_to_async(account_services.session_revoke)(session_id=session.pk)
    await _assert_only_the_ended_one_closed(user, revoked, kept)


async def test_a_session_that_idles_out_while_connected_is_disconnected(monkeypatch):
    """Nobody pushes when a session's Redis key expires; the socket's own check notices."""
    from accounts.tests.helpers import session_idle_out
    from notifications import consumers

    monkeypatch.setattr(consumers, "SESSION_CHECK_SECONDS", 0.2)
    user, session, expiring, alive = await _two_sessions_connected()
    assert await alive.receive_nothing(timeout=0.5)  # a live session is left alone
    await sync_to_async(session_idle_out)(session.pk)
    await _assert_only_the_ended_one_closed(user, expiring, alive)


async def test_the_session_check_survives_a_redis_flush(monkeypatch):
    """The socket's check and a new handshake fall back to the session row."""
    from django_redis import get_redis_connection

    from notifications import consumers

    monkeypatch.setattr(consumers, "SESSION_CHECK_SECONDS", 0.2)
    user, _, token = await sync_to_async(_login)()
    connected = await _open(token)
    await sync_to_async(get_redis_connection("default").flushdb)()
    assert await connected.receive_nothing(timeout=0.5)  # not closed by the check
    reopened = await _open(token)
    await sync_to_async(services.notification_create)(user=user, kind="price_alert", title="x")
    assert (await ws_receive(reopened))["type"] == "notification"
    await connected.disconnect()
    await reopened.disconnect()


async def test_all_sessions_revoked_disconnects_every_socket():
    user, _, token = await sync_to_async(_login)()
    _, _, second_token = await sync_to_async(_login)(user)
    sockets = [await _open(token), await _open(second_token)]
    await sync_to_async(account_services.user_sessions_revoke_all)(user=user)
    for communicator in sockets:
        assert await ws_closed_with(communicator) == 4401


class TestEndToEnd:
    """Through the real order queue and price poll fan-out, on a real Celery worker."""

    async def test_order_events_and_fill_notification(self, celery_worker):
        from orders.services import order_place
        from orders.tests.factories import coins_and_prices
        from orders.tests.factories import user_create as funded_user_create

        await sync_to_async(coins_and_prices)({"bitcoin": "50000"})
        user = await sync_to_async(funded_user_create)(usd="1000")
        _, _, token = await sync_to_async(_login)(user)
        communicator = await _open(token)

        order, _ = await sync_to_async(order_place)(
            user=user, coin_id="bitcoin", side="buy", type="market", quantity=Decimal("0.01")
        )
        statuses = []
        while "filled" not in statuses:
            frame = await ws_receive_type(communicator, "order")
            assert frame["order"]["id"] == order.pk
            assert frame["order"]["quantity"] == "0.01"
            statuses.append(frame["order"]["status"])
        assert statuses[0] == "pending"
        filled = frame["order"]
        assert filled["filled_price"] == "50000" and filled["fee"]
        notification = (await ws_receive_type(communicator, "notification"))["notification"]
        assert notification["kind"] == "order_filled"
        assert notification["data"]["order_id"] == order.pk
        await communicator.disconnect()

    async def test_price_alert_fires_once_from_the_poll(self, celery_worker):
        from markets.services import coins_seed, prices_on_tick, prices_record

        def tick(price: str) -> None:
            prices = {"bitcoin": Decimal(price)}
            as_of = prices_record(prices=prices)
            prices_on_tick(as_of=as_of, prices=prices, changed=["bitcoin"])

        await sync_to_async(coins_seed)(coin_ids=["bitcoin"])
        user, _, token = await sync_to_async(_login)()
        alert = await sync_to_async(services.price_alert_create)(
            user=user, coin_id="bitcoin", condition="above", price=Decimal("70000")
        )
        communicator = await _open(token)
        await sync_to_async(tick)("69000")
        await sync_to_async(tick)("70500.25")
        notification = (await ws_receive_type(communicator, "notification"))["notification"]
        assert notification["kind"] == "price_alert"
        assert notification["data"]["alert_id"] == alert.pk
        assert notification["data"]["triggered_price"] == "70500.25"
        await sync_to_async(tick)("71000")
        assert await communicator.receive_nothing(timeout=0.5)
        assert await Notification.objects.filter(user=user).acount() == 1
        await alert.arefresh_from_db()
        assert alert.active is False
        await communicator.disconnect()


@pytest.mark.parametrize("caller", ["under the event loop", "outside any event loop"])
async def test_pushes_keep_their_order(caller):
    """user_push returns without waiting for Redis; one pusher per loop keeps the order
    (a view's pushes go through the server's loop, a worker's through the push loop)."""
    import threading

    from notifications.realtime import user_push

    user, _, token = await sync_to_async(_login)()
    communicator = await _open(token)
    # The socket is accepted before it joins its groups; a pong means it has joined.
    await communicator.send_json_to({"type": "ping"})
    assert await ws_receive(communicator) == {"type": "pong"}

    def push_all() -> None:
        for n in range(30):
            user_push(user_id=user.pk, frames=[{"type": "test", "n": n}, {"type": "test", "m": n}])

    if caller == "under the event loop":
        await sync_to_async(push_all)()
    else:
        thread = threading.Thread(target=push_all)
        thread.start()
        await sync_to_async(thread.join)(timeout=10)
    received = [await ws_receive(communicator) for _ in range(60)]
    assert received == [
        frame for n in range(30) for frame in ({"type": "test", "n": n}, {"type": "test", "m": n})
    ]
    await communicator.disconnect()


def _notify(user, title: str) -> None:
    services.notification_create(user=user, kind="new_login", title=title)


async def test_a_user_without_sockets_is_not_pushed_to_and_loses_nothing():
    """Pushes skip users with no socket open (notifications.realtime): the event is in
    the log, a socket opened later replays it (``?since=``), live pushes resume while a
    socket is open, and closing the last one unmarks the user."""
    from notifications.realtime import users_with_sockets

    user, _, token = await sync_to_async(_login)()
    assert await sync_to_async(users_with_sockets)([user.pk]) == set()
    await sync_to_async(_notify)(user, "while away")  # id 1: logged, pushed to nobody
    communicator = await _open(f"{token}&since=0")
    assert (await ws_receive(communicator))["notification"]["title"] == "while away"
    assert await sync_to_async(users_with_sockets)([user.pk]) == {user.pk}
    await sync_to_async(_notify)(user, "live")
    assert (await ws_receive(communicator))["id"] == 2
    await communicator.disconnect()
    assert await sync_to_async(users_with_sockets)([user.pk]) == set()


async def test_a_socket_opened_before_the_event_commits_gets_it_live():
    """Who has a socket is read after commit: a socket opened while the transaction that
    makes an event is still open (no ``?since=``) gets the event pushed."""
    import threading

    from django.db import close_old_connections, transaction

    user, _, token = await sync_to_async(_login)()
    logged, opened = threading.Event(), threading.Event()

    def notify_in_an_open_transaction() -> None:
        try:
            with transaction.atomic():
                _notify(user, "mid-way")
                logged.set()
                opened.wait(timeout=10)
        finally:
            close_old_connections()

    thread = threading.Thread(target=notify_in_an_open_transaction)
    thread.start()
    assert await sync_to_async(logged.wait)(timeout=10)
    communicator = await _open(token)
    opened.set()
    frame = await ws_receive(communicator)
    assert (frame["id"], frame["notification"]["title"]) == (1, "mid-way")
    await sync_to_async(thread.join)(timeout=10)
    await communicator.disconnect()


async def test_resume_message_replays_what_was_missed_once():
    """``{"type":"resume","since":N}`` on an open socket: the ``?since=`` replay."""
    user, _, token = await sync_to_async(_login)()
    communicator = await _open(token)
    await sync_to_async(_notify)(user, "seen")
    assert (await ws_receive(communicator))["id"] == 1
    await communicator.disconnect()
    for n in range(3):  # missed while away
        await sync_to_async(_notify)(user, f"missed {n}")

    communicator = await _open(token)
    await sync_to_async(_notify)(user, "live before resume")  # id 5, pushed live
    assert (await ws_receive(communicator))["id"] == 5
    await communicator.send_json_to({"type": "resume", "since": 1})
    replayed = [await ws_receive(communicator) for _ in range(4)]
    assert [frame["id"] for frame in replayed] == [2, 3, 4, 5]
    assert replayed[0]["notification"]["title"] == "missed 0"
    await sync_to_async(_notify)(user, "live")
    assert (await ws_receive(communicator))["id"] == 6
    assert await communicator.receive_nothing(timeout=0.3)  # no duplicate of 2-6
    # The id as a string (as ?since= has it) is the same resume.
    await communicator.send_json_to({"type": "resume", "since": "6"})
    await sync_to_async(_notify)(user, "after")
    assert (await ws_receive(communicator))["id"] == 7
    await communicator.disconnect()


async def test_resume_message_from_beyond_the_log_is_a_reset():
    from notifications.models import UserEvent

    user, _, token = await sync_to_async(_login)()
    for n in range(3):
        await sync_to_async(_notify)(user, f"n{n}")
    communicator = await _open(token)
    await communicator.send_json_to({"type": "resume", "since": 99})
    assert await ws_receive(communicator) == {"type": "reset", "last_event_id": 3}
    # Pruned past retention: event 2 is gone, so "after 1" cannot be resumed.
    await UserEvent.objects.filter(user=user, event_id__lte=2).adelete()
    await communicator.send_json_to({"type": "resume", "since": 1})
    assert await ws_receive(communicator) == {"type": "reset", "last_event_id": 3}
    # ?since= answers the same.
    again, connected, _ = await ws_connect(f"/ws/user?token={token}&since=1")
    assert connected
    assert await ws_receive(again) == {"type": "reset", "last_event_id": 3}
    # The socket stays open and goes on live.
    await sync_to_async(_notify)(user, "live")
    assert (await ws_receive(communicator))["id"] == 4
    for socket in (communicator, again):
        await socket.disconnect()
