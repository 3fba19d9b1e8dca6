"""GET /metrics: who may read it, and that its series follow what really happens (a real
worker filling an order, a message really queued in Redis, a row really pending)."""

import os
import subprocess
import sys

import pytest
from django.db import connection
from django.test import Client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from cryptovault.celery import app as celery_app
from notifications.models import OutboxEmail
from notifications.tests.ws import ws_connect, ws_receive
from orders.tests.factories import coins_and_prices, user_create
from orders.tests.helpers import market_order_settled

TOKEN = "test-metrics-token"  # noqa: S105 - a test value


@pytest.fixture(autouse=True)
def _token(settings):
    settings.METRICS_TOKEN = TOKEN


def scrape() -> dict[tuple[str, frozenset], float]:
    response = Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", f"bearer  {TOKEN}"]
)
def test_metrics_need_the_bearer_token(authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = Client().get("/metrics", headers=headers)

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"cryptovault_" not in response.content


@pytest.mark.django_db
def test_metrics_do_not_exist_without_a_configured_token(settings):
    settings.METRICS_TOKEN = ""

    response = Client().get("/metrics", headers={"Authorization": "Bearer "})

    assert response.status_code == 404


@pytest.mark.django_db
def test_a_request_is_counted_under_its_url_pattern_not_its_path():
    coins_and_prices({"bitcoin": "65000"})
    labels = {"method": "GET", "route": "api/v1/coins/<str:coin_id>", "status": "200"}
    before = scrape()

    assert Client().get("/api/v1/coins/bitcoin").status_code == 200
    assert Client().get("/nowhere/42").status_code == 404

    after = scrape()
    name = "cryptovault_http_requests_total"
    assert value(after, name, **labels) == value(before, name, **labels) + 1
    assert value(after, "cryptovault_http_request_duration_seconds_count", **labels) == (
        value(before, "cryptovault_http_request_duration_seconds_count", **labels) + 1
    )
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, name, **unmatched) == value(before, name, **unmatched) + 1
    assert not any("bitcoin" in dict(labels).get("route", "") for _, labels in after)


@pytest.mark.django_db(transaction=True)
def test_an_order_filled_by_the_real_worker_moves_the_order_counters(celery_worker, api_client):
    coins_and_prices({"bitcoin": "65000"})
    user = user_create(usd="10000")
    api_client.force_authenticate(user)
    kinds = {"side": "buy", "type": "market"}
    before = scrape()
    market_order_settled(api_client, side="buy", quantity="0.1", ends="filled")
    after = scrape()
    for name in ("cryptovault_orders_placed_total", "cryptovault_orders_filled_total"):
        assert value(after, name, **kinds) == value(before, name, **kinds) + 1, name
    route = {"method": "POST", "route": "api/v1/orders", "status": "201"}
    requests = "cryptovault_http_requests_total"
    assert value(after, requests, **route) == value(before, requests, **route) + 1


@pytest.mark.django_db(transaction=True)
def test_an_order_rejected_by_the_real_worker_is_counted_by_reason(celery_worker, api_client):
    coins_and_prices({"bitcoin": "65000"})
    user = user_create(bitcoin="1")
    api_client.force_authenticate(user)
    # Stale by the time the worker looks: a market sell is then rejected (stale_price).
    coins_and_prices({"bitcoin": "65000"}, age_seconds=3600)
    before = scrape()
    market_order_settled(api_client, side="sell", quantity="0.5", ends="rejected")
    after = scrape()
    name = "cryptovault_orders_rejected_total"
    assert value(after, name, reason="stale_price") == value(before, name, reason="stale_price") + 1


@pytest.mark.django_db
def test_queue_length_is_the_real_redis_list():
    assert value(scrape(), "cryptovault_celery_queue_length", queue="orders") == 0

    celery_app.send_task("orders.queue_sweep", queue="orders")
    celery_app.send_task("orders.queue_sweep", queue="orders")
    celery_app.send_task("markets.poll_prices_never_consumed", queue="celery")

    samples = scrape()
    assert value(samples, "cryptovault_celery_queue_length", queue="orders") == 2
    assert value(samples, "cryptovault_celery_queue_length", queue="celery") == 1


@pytest.mark.django_db
def test_outbox_size_counts_pending_emails_only():
    assert value(scrape(), "cryptovault_email_outbox_pending") == 0

    OutboxEmail.objects.create(kind=OutboxEmail.Kind.WELCOME, address="a@example.com")
    OutboxEmail.objects.create(
        kind=OutboxEmail.Kind.WELCOME, address="b@example.com", status=OutboxEmail.Status.SENT
    )

    assert value(scrape(), "cryptovault_email_outbox_pending") == 1


@pytest.mark.django_db
def test_price_age_is_per_source():
    coins_and_prices({"bitcoin": "65000"}, age_seconds=120)
    coins_and_prices({"ethereum": "3000"}, age_seconds=5, source="simulated")

    samples = scrape()

    assert 120 <= value(samples, "cryptovault_price_age_seconds", source="coingecko") < 180
    assert 5 <= value(samples, "cryptovault_price_age_seconds", source="simulated") < 60


@pytest.fixture
def bitcoin_price(transactional_db):
    coins_and_prices({"bitcoin": "65000"})


@pytest.mark.asyncio
async def test_open_websockets_are_counted_by_stream(bitcoin_price):
    # This process's own value (the scrape's other series read the database, which an
    # async test would reach from a thread whose connection outlives the test).
    def open_sockets() -> float:
        labels = {"stream": "/ws/prices"}
        return REGISTRY.get_sample_value("cryptovault_websocket_connections", labels) or 0.0

    before = open_sockets()
    communicator, connected, _ = await ws_connect("/ws/prices")
    assert connected
    await ws_receive(communicator)  # the snapshot: the socket is open
    during = open_sockets()
    await communicator.disconnect()

    assert during == before + 1
    assert open_sockets() == before


# Two processes count, a third scrapes: what uvicorn's workers and Celery's children do.
_CHILD = """
import django, os, sys
django.setup()
from cryptovault import metrics
if sys.argv[1] == "count":
    metrics.ORDERS_FILLED.labels(side="buy", type="market").inc()
    metrics.WEBSOCKET_CONNECTIONS.labels(stream="/ws/user").inc()
else:
    from prometheus_client import generate_latest
    sys.stdout.write(generate_latest(metrics.metrics_registry()).decode())
"""


@pytest.mark.django_db
def test_multiprocess_mode_sums_every_process_and_forgets_dead_sockets(tmp_path):
    database = connection.settings_dict  # the test database, for the outbox count
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}"
        f"/{database['NAME']}",
    }

    def run(mode: str) -> str:
        return subprocess.run(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", _CHILD, mode],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    run("count")
    run("count")
    exposition = run("scrape")

    assert 'cryptovault_orders_filled_total{side="buy",type="market"} 2.0' in exposition
    # Both counting processes exited: their open sockets are not counted any more.
    assert 'cryptovault_websocket_connections{stream="/ws/user"}' not in exposition
    assert "cryptovault_email_outbox_pending" in exposition
