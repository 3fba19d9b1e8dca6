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
