import pytest
from django.urls import reverse

from orders import services
from orders.models import Balance, Order
from orders.serializers import order_output
from orders.tests.factories import coins_and_prices, limit_order_place, user_create

pytestmark = pytest.mark.django_db

ORDERS = "/api/v1/orders"


@pytest.fixture(autouse=True)
def _market():
    coins_and_prices({"bitcoin": "65000", "ethereum": "3000"})


@pytest.fixture
def user():
    return user_create(usd="10000", bitcoin="1")


@pytest.fixture
def client(api_client, user):
    api_client.force_authenticate(user)
    return api_client


def order_body(**kw):
    return {"coin": "bitcoin", "side": "buy", "type": "market", "quantity": "0.01", **kw}


def test_place_answers_201_with_the_pending_order(client):
    response = client.post(ORDERS, order_body(client_order_id="c-1"), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {
        "id",
        "client_order_id",
        "coin",
        "side",
        "type",
        "quantity",
        "limit_price",
        "status",
        "filled_price",
        "fee",
        "reject_reason",
        "created_at",
        "updated_at",
    }
    assert body["status"] == "pending"
    assert (body["coin"], body["quantity"], body["client_order_id"]) == ("bitcoin", "0.01", "c-1")
    assert body["limit_price"] is None and body["filled_price"] is None
    assert body["created_at"].endswith("Z")


def test_repeat_with_client_order_id_or_idempotency_key_returns_the_first_order(client, user):
    first = client.post(ORDERS, order_body(client_order_id="same"), format="json")
    again = client.post(ORDERS, order_body(client_order_id="same"), format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]

    keyed = client.post(ORDERS, order_body(), format="json", HTTP_IDEMPOTENCY_KEY="k-9")
    keyed_again = client.post(ORDERS, order_body(), format="json", HTTP_IDEMPOTENCY_KEY="k-9")
    assert (keyed.status_code, keyed_again.status_code) == (201, 200)
    assert keyed_again.json()["id"] == keyed.json()["id"]
    assert keyed.json()["client_order_id"] == "k-9"
    assert Order.objects.filter(user=user).count() == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"quantity": "NaN"},
        {"quantity": "Infinity"},
        {"quantity": "-Infinity"},
        {"quantity": "1e-3"},
        {"quantity": "1E3"},
        {"quantity": "-0.1"},
        {"quantity": "0"},
        {"quantity": "0.000000001"},
        {"quantity": "abc"},
        {"quantity": "\u0661"},  # a non-ASCII digit
        {"quantity": " 1 2"},
        {"quantity": ""},
        {"quantity": True},
        {"quantity": 1e-05},
        {"quantity": ["1"]},
        {"quantity": "1" * 40},
        {"coin": "not-a-coin"},
        {"coin": ""},
        {"side": "hold"},
        {"type": "stop"},
        {"type": "limit"},
        {"type": "limit", "limit_price": "-5"},
        {"type": "limit", "limit_price": "NaN"},
        {"limit_price": "60000"},
        {"client_order_id": "x" * 65},
        {"client_order_id": "no spaces"},
    ],
)
def test_bad_input_is_400_never_500(client, changes):
    response = client.post(ORDERS, order_body(**changes), format="json")
    assert response.status_code == 400, response.content
    assert not Order.objects.exists()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        # The example: 10^10 coins at 10^10 usd overflowed Decimal (500).
        ({"type": "limit", "quantity": "10000000000", "limit_price": "10000000000"}, "limit_price"),
        ({"type": "limit", "quantity": "10000000000", "limit_price": "1000000"}, "quantity"),
        ({"quantity": "1000000000000.00000001"}, "quantity"),
        ({"quantity": "9" * 400}, "quantity"),
        ({"quantity": "0.123456789"}, "quantity"),
        ({"type": "limit", "limit_price": "60000.0000000000001"}, "limit_price"),
        ({"type": "limit", "limit_price": "1000000000.000000000001"}, "limit_price"),
        ({"quantity": "1e10"}, "quantity"),
        ({"quantity": "1E+10"}, "quantity"),
        ({"type": "limit", "limit_price": "6.5e4"}, "limit_price"),
        ({"quantity": 1e300}, "quantity"),
        # Notional over the cap at the latest price, before any funds check.
        ({"quantity": 1e10}, "quantity"),
        ({"quantity": "100000"}, "quantity"),
        ({"side": "sell", "quantity": "100000"}, "quantity"),
    ],
)
def test_huge_overprecise_or_exponent_decimals_are_400_with_a_field_error(client, changes, field):
    response = client.post(ORDERS, order_body(**changes), format="json")
    assert response.status_code == 400, response.content
    assert response.json()[field], response.content
    assert not Order.objects.exists()


def test_the_bounds_themselves_are_accepted(client):
    # The largest quantity at the smallest price, and the largest price for a small quantity.
    smallest = "0.000000000001"
    cheap = order_body(type="limit", quantity="1000000000000", limit_price=smallest)
    dear = order_body(type="limit", quantity="0.000001", limit_price="1000000000")
    for body in (cheap, dear):
        response = client.post(ORDERS, body, format="json")
        assert response.status_code == 201, response.content
        assert (response.json()["quantity"], response.json()["limit_price"]) == (
            body["quantity"],
            body["limit_price"],
        )


def test_bad_idempotency_key_is_400(client):
    response = client.post(ORDERS, order_body(), format="json", HTTP_IDEMPOTENCY_KEY="x" * 65)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()


def test_missing_fields_and_non_json_are_400(client):
    assert client.post(ORDERS, {}, format="json").status_code == 400
    response = client.post(ORDERS, "{not json", content_type="application/json")
    assert response.status_code == 400
    response = client.post(ORDERS, '{"quantity": NaN}', content_type="application/json")
    assert response.status_code == 400


@pytest.mark.parametrize("body", ["null", "[]", '"bitcoin"', "1"])
def test_a_body_that_is_not_an_object_is_400_as_the_serializer_says(client, body):
    """Objects are validated by one shared serializer (orders.apis.order_input), anything
    else by a serializer of its own: the errors are the serializer's, never a 500."""
    import json

    from orders.apis import OrderListCreateApi

    response = client.post(ORDERS, body, content_type="application/json")
    assert response.status_code == 400, response.content
    serializer = OrderListCreateApi.InputSerializer(data=json.loads(body))
    assert not serializer.is_valid()
    assert response.json() == serializer.errors


def test_field_errors_of_the_shared_serializer_are_each_requests_own(client):
    """The shared input serializer keeps no state: one request's errors are not the next's."""
    first = client.post(ORDERS, order_body(side="up", quantity="-1"), format="json")
    assert first.status_code == 400
    assert set(first.json()) == {"side", "quantity"}
    second = client.post(ORDERS, order_body(type="limit"), format="json")
    assert second.status_code == 400
    assert set(second.json()) == {"limit_price"}
    assert client.post(ORDERS, order_body(), format="json").status_code == 201


def test_json_number_quantity_is_accepted_when_plain(client):
    response = client.post(ORDERS, order_body(quantity=0.5, side="sell"), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["quantity"] == "0.5"


def test_insufficient_funds_is_400_with_code(client):
    response = client.post(ORDERS, order_body(quantity="10"), format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "insufficient_funds"


def test_place_takes_one_statement_the_order_and_its_event(client, user):
    """The reservation, the INSERT and the event log's part (the user's row, its counter,
    the event row) are one call (``orders_order_place``): a pinned count, so none creeps
    back. Outside a transaction (a request's) that call is its own, so no ``BEGIN`` or
    ``COMMIT`` either; here, inside the test's, it takes a savepoint."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from notifications.models import UserEvent
    from notifications.realtime import frame_encode

    with CaptureQueriesContext(connection) as queries:
        response = client.post(ORDERS, order_body(), format="json")
    assert response.status_code == 201, response.content
    statements = [
        query["sql"] for query in queries.captured_queries if "SAVEPOINT" not in query["sql"]
    ]
    assert len(statements) == 1, statements
    assert "FROM orders_order_place(" in statements[0]
    order = Order.objects.get(pk=response.json()["id"])
    balance = Balance.objects.get(user=user, asset="usd")
    assert order.reserved_amount == balance.locked > 0
    # The answer shows the order as stored, timestamps included, and so does its event.
    assert response.json() == order_output(order)
    assert order.created_at == order.updated_at == balance.updated_at
    event = UserEvent.objects.get(user=user)
    assert event.frame == frame_encode(
        {"id": event.event_id, "type": "order", "order": order_output(order)}
    )


def test_first_order_of_an_asset_without_a_balance_row_is_refused_with_what_is_missing(client):
    response = client.post(ORDERS, order_body(side="sell", coin="ethereum"), format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "insufficient_funds"
    assert response.json()["available"] == "0"


def test_unauthenticated_is_401(api_client):
    assert api_client.post(ORDERS, order_body(), format="json").status_code == 401
    assert api_client.get(ORDERS).status_code == 401
    assert api_client.get("/api/v1/portfolio").status_code == 401
    assert api_client.get("/api/v1/transactions").status_code == 401


def test_list_filters_and_paginates_newest_first(client, user):
    ids = []
    for i in range(5):
        body = order_body(type="limit", limit_price="1000", quantity="0.01", coin="ethereum")
        if i % 2:
            body = order_body(quantity="0.001")
        ids.append(client.post(ORDERS, body, format="json").json()["id"])
    services.order_queue_process(user_id=user.pk)

    page = client.get(ORDERS, {"page_size": 2}).json()
    assert [o["id"] for o in page["results"]] == ids[::-1][:2]
    assert page["previous"] is None and page["next"]
    rest = client.get(page["next"]).json()
    assert [o["id"] for o in rest["results"]] == ids[::-1][2:4]

    open_ = client.get(ORDERS, {"status": "open"}).json()["results"]
    assert [o["id"] for o in open_] == [ids[4], ids[2], ids[0]]
    filled = client.get(ORDERS, {"status": "filled", "coin": "bitcoin"}).json()["results"]
    assert [o["id"] for o in filled] == [ids[3], ids[1]]
    assert client.get(ORDERS, {"coin": "solana"}).json()["results"] == []
    assert client.get(ORDERS, {"status": "bogus"}).status_code == 400
    everything = client.get(f"{ORDERS}?status=&coin=").json()["results"]
    assert [o["id"] for o in everything] == ids[::-1]
    by_upper_case_id = client.get(ORDERS, {"coin": "Bitcoin"}).json()["results"]
    assert [o["id"] for o in by_upper_case_id] == [ids[3], ids[1]]


@pytest.mark.parametrize("path", [ORDERS, "/api/v1/transactions"])
def test_a_malformed_cursor_is_400(client, path):
    response = client.get(path, {"cursor": "garbage"})
    assert response.status_code == 400
    assert "cursor" in response.json()


def test_detail_and_cancel_of_others_orders_are_404(client, api_client):
    other = user_create(usd="10000")
    theirs = limit_order_place(other, quantity="0.01", limit_price="100")
    assert client.get(f"{ORDERS}/{theirs.pk}").status_code == 404
    assert client.post(f"{ORDERS}/{theirs.pk}/cancel").status_code == 404
    assert client.get(f"{ORDERS}/999999999").status_code == 404
    assert client.get(f"{ORDERS}/abc").status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == "pending"


def test_detail_and_cancel(client):
    created = client.post(
        ORDERS, order_body(type="limit", limit_price="50000"), format="json"
    ).json()
    detail = client.get(f"{ORDERS}/{created['id']}")
    assert detail.status_code == 200
    assert detail.json()["limit_price"] == "50000"
    cancelled = client.post(f"{ORDERS}/{created['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = client.post(f"{ORDERS}/{created['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["code"] == "order_not_cancellable"


def test_portfolio_values_balances_at_latest_prices(client, user):
    client.post(
        ORDERS, order_body(type="limit", limit_price="50000", quantity="0.1"), format="json"
    )
    body = client.get("/api/v1/portfolio").json()
    assert body == {
        "balances": [
            {
                "asset": "usd",
                "available": "4995",
                "locked": "5005",
                "price": "1",
                "value_usd": "10000",
            },
            {
                "asset": "bitcoin",
                "available": "1",
                "locked": "0",
                "price": "65000",
                "value_usd": "65000",
            },
        ],
        "total_value_usd": "75000",
    }


def test_portfolio_of_a_new_user_is_zero_usd(api_client):
    api_client.force_authenticate(user_create())
    assert api_client.get("/api/v1/portfolio").json() == {
        "balances": [
            {"asset": "usd", "available": "0", "locked": "0", "price": "1", "value_usd": "0"}
        ],
        "total_value_usd": "0",
    }


def test_transactions_are_signed_ledger_entries_newest_first(client, user):
    order_id = client.post(ORDERS, order_body(quantity="0.1"), format="json").json()["id"]
    services.order_queue_process(user_id=user.pk)
    body = client.get(reverse("v1:transactions")).json()
    rows = [
        (r["kind"], r["asset"], r["amount"], r["balance_after"], r["order"])
        for r in body["results"]
    ]
    assert rows == [
        ("trade_buy", "bitcoin", "0.1", "1.1", order_id),
        ("fee", "usd", "-6.5", "3493.5", order_id),
        ("trade_buy", "usd", "-6500", "3500", order_id),
        ("operator_credit", "bitcoin", "1", "1", None),
        ("operator_credit", "usd", "10000", "10000", None),
    ]
    assert set(body["results"][0]) == {
        "id",
        "kind",
        "asset",
        "amount",
        "balance_after",
        "order",
        "created_at",
    }


def test_order_create_is_rate_limited_per_user(client, settings):
    settings.RATELIMIT_ENABLE = True
    statuses = []
    # 20 a minute; a fixed window may roll over once while we send, hence up to 41.
    for _ in range(41):
        response = client.post(ORDERS, order_body(quantity="0.0001"), format="json")
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
    assert statuses[-1] == 429
    assert 20 <= statuses.index(429) <= 40 and set(statuses[:-1]) == {201}
    assert int(response["Retry-After"]) >= 1
    assert response.json()["code"] == "rate_limited"
    # Another user has a bucket of their own.
    client.force_authenticate(user_create(usd="100"))
    assert client.post(ORDERS, order_body(quantity="0.0001"), format="json").status_code == 201
