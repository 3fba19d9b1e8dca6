"""An order placed outside any transaction (as a request places it): one statement, then
one round trip to Redis for the queue's mark and the user's socket check."""

from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_redis import get_redis_connection

from notifications import realtime
from notifications.models import UserEvent
from orders import services
from orders.tests.factories import coins_and_prices, user_create

pytestmark = pytest.mark.django_db(transaction=True)


def _place(user) -> tuple:
    return services.order_place(
        user=user, coin_id="bitcoin", side="buy", type="market", quantity=Decimal("0.01")
    )


@pytest.fixture
def redis():
    redis = get_redis_connection("default")
    redis.delete(services.QUEUE_RUN_KEY, "orders")
    yield redis
    redis.delete(services.QUEUE_RUN_KEY, "orders")


def test_one_statement_and_one_run_enqueued_while_the_mark_stands(redis):
    coins_and_prices({"bitcoin": "50000"})
    user = user_create(usd="10000")
    with CaptureQueriesContext(connection) as queries:
        order, created = _place(user)
    assert created
    assert len(queries.captured_queries) == 1, queries.captured_queries
    assert "FROM orders_order_place(" in queries.captured_queries[0]["sql"]
    assert redis.exists(services.QUEUE_RUN_KEY)
    assert redis.llen("orders") == 1
    _place(user)  # a run is already waiting to start: no second one
    assert redis.llen("orders") == 1
    redis.delete(services.QUEUE_RUN_KEY)
    _place(user)
    assert redis.llen("orders") == 2


def test_the_logged_frame_is_pushed_to_a_user_with_a_socket_and_to_nobody_else(redis):
    coins_and_prices({"bitcoin": "50000"})
    listening, away = user_create(usd="10000"), user_create(usd="10000")
    layer = get_channel_layer()
    channels = {}
    for user in (listening, away):
        channels[user.pk] = async_to_sync(layer.new_channel)()
        async_to_sync(layer.group_add)(realtime.user_group(user.pk), channels[user.pk])
    realtime.user_socket_opened(user_id=listening.pk, channel=channels[listening.pk])
    try:
        _place(away)
        order, _ = _place(listening)
        message = async_to_sync(layer.receive)(channels[listening.pk])
        event = UserEvent.objects.get(user=listening)
        assert message == {"type": "user.frames", "texts": [event.frame]}
        assert f'"order":{{"id":{order.pk},' in event.frame
        assert UserEvent.objects.filter(user=away).count() == 1
        # The user without a socket was skipped: nothing waits on its channel.
        with pytest.raises(TimeoutError):
            async_to_sync(_receive_within)(layer, channels[away.pk], 0.3)
    finally:
        realtime.user_socket_closed(user_id=listening.pk, channel=channels[listening.pk])


async def _receive_within(layer, channel: str, seconds: float):
    import asyncio

    return await asyncio.wait_for(layer.receive(channel), seconds)
