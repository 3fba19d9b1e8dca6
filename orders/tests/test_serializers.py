from decimal import Decimal

import pytest

from orders import services
from orders.models import Order
from orders.serializers import OrderOutputSerializer, order_output
from orders.tests.factories import coins_and_prices, limit_order_place, user_create

pytestmark = pytest.mark.django_db


def test_order_output_is_what_the_output_serializer_makes_of_every_kind_of_order():
    """``order_output`` reads the serializer's fields without its generic steps: the
    same dict for a pending market order, a resting limit order with a client id and a
    filled one (fee, filled price), None fields included."""
    coins_and_prices({"bitcoin": "65000"})
    user = user_create(usd="100000", bitcoin="1")
    market, _ = services.order_place(
        user=user, coin_id="bitcoin", side="sell", type="market", quantity=Decimal("0.01")
    )
    limit = limit_order_place(user=user, side="buy", quantity="0.5", limit_price="1000.5")
    limit.client_order_id = "abc-1"
    services.order_queue_process()
    filled = Order.objects.get(pk=market.pk)
    assert filled.status == Order.Status.FILLED and filled.fee is not None
    for order in (market, limit, filled):
        assert order_output(order) == OrderOutputSerializer(order).data
    assert order_output(market)["limit_price"] is None
    assert (
        order_output(filled)["filled_price"] == OrderOutputSerializer(filled).data["filled_price"]
    )


def test_a_batch_shows_datetimes_as_the_serializer_does():
    """``_Book.datetime_text`` skips DRF's steps for UTC times shown in UTC: the same text
    for every time, with or without microseconds, in UTC or another zone, and under
    another current timezone."""
    from datetime import UTC, datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    from django.utils import timezone as django_timezone
    from rest_framework import serializers

    times = [
        datetime(2026, 12, 3, 15, 4, 5, tzinfo=UTC),
        datetime(2026, 12, 3, 15, 4, 5, 120, tzinfo=UTC),
        datetime(2026, 12, 3, 15, 4, 5, 999999, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 6, 1, 1, 2, 3, 450000, tzinfo=ZoneInfo("Europe/Berlin")),
        django_timezone.now(),
    ]
    for zone in ("UTC", "America/New_York"):
        with django_timezone.override(ZoneInfo(zone)):
            book = services._Book()
            field = serializers.DateTimeField()
            assert [book.datetime_text(t) for t in times] == [
                field.to_representation(t) for t in times
            ]
