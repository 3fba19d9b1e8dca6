"""What tests of the order path share: waiting on the real worker, and an order placed
over the API that it settles."""

import time

from orders.models import Order


def wait_until(predicate, timeout: float = 15.0) -> None:
    """Polls ``predicate`` until it holds; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def market_order_settled(api_client, *, side: str, quantity: str, ends: str) -> int:
    """Places a bitcoin market order over the API (``api_client`` authenticated) and waits
    until the worker ``ends`` it (``filled``, ``rejected``): the order's id."""
    response = api_client.post(
        "/api/v1/orders",
        {"coin": "bitcoin", "side": side, "type": "market", "quantity": quantity},
        format="json",
    )
    assert response.status_code == 201, response.content
    order_id = response.json()["id"]
    wait_until(lambda: Order.objects.get(pk=order_id).status == ends)
    return order_id
