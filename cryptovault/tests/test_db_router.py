"""The read-replica router, against a real ``replica`` connection.

The replica alias points at the test database, as ``DATABASE_REPLICA_URL`` with its
``TEST: MIRROR`` setting does in a test run: a second, independent connection that
sees what the primary committed. Tests that read through it use the transactional
database so that the primary's rows are committed and visible to it.
"""

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.apps import apps
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.http import HttpResponse
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import session_start
from cryptovault.db_router import (
    PIN_SECONDS,
    REPLICA_DB_ALIAS,
    ReplicaPinningMiddleware,
    ReplicaRouter,
)
from markets.models import Coin
from notifications.models import Notification, PriceAlert
from orders.models import Order

ROOT = Path(__file__).resolve().parents[2]
BOTH = [DEFAULT_DB_ALIAS, REPLICA_DB_ALIAS]


@pytest.fixture(scope="module", autouse=True)
def replica_alias(django_db_setup):
    """Add the ``replica`` alias for this module only, mirroring the test database
    (unless DATABASE_REPLICA_URL already configured one, which is then a mirror too)."""
    if REPLICA_DB_ALIAS in connections.settings:
        yield
        return
    replica = copy.deepcopy(connections.settings[DEFAULT_DB_ALIAS])
    replica["TEST"]["MIRROR"] = DEFAULT_DB_ALIAS
    connections.settings[REPLICA_DB_ALIAS] = replica
    yield
    connections[REPLICA_DB_ALIAS].close()
    del connections[REPLICA_DB_ALIAS]
    del connections.settings[REPLICA_DB_ALIAS]


@pytest.fixture
def unreachable_replica():
    """Point the replica alias at a closed local port for one test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    connection = connections[REPLICA_DB_ALIAS]
    connection.close()
    saved = (connection.settings_dict["HOST"], connection.settings_dict["PORT"])
    connection.settings_dict["HOST"], connection.settings_dict["PORT"] = "127.0.0.1", closed_port
    yield
    connection.close()
    connection.settings_dict["HOST"], connection.settings_dict["PORT"] = saved


def routed_to(queryset) -> str:
    """Run the queryset and tell which connection executed it."""
    with (
        CaptureQueriesContext(connections[DEFAULT_DB_ALIAS]) as on_default,
        CaptureQueriesContext(connections[REPLICA_DB_ALIAS]) as on_replica,
    ):
        list(queryset)
    assert len(on_default) + len(on_replica) == 1
    return REPLICA_DB_ALIAS if on_replica else DEFAULT_DB_ALIAS


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_market_data_and_notification_lists_are_read_from_the_replica(django_user_model):
    user = django_user_model.objects.create_user("reader@example.com", "pw-Long-enough-1")
    Coin.objects.create(id="bitcoin", symbol="btc", name="Bitcoin")
    Notification.objects.create(user=user, kind="price_alert", title="BTC above 70k")

    assert routed_to(Coin.objects.filter(tracked=True)) == REPLICA_DB_ALIAS
    assert routed_to(Notification.objects.filter(user=user)) == REPLICA_DB_ALIAS
    # ...and the replica connection sees what the primary committed.
    assert [c.id for c in Coin.objects.all()] == ["bitcoin"]
    assert Coin.objects.get(id="bitcoin")._state.db == REPLICA_DB_ALIAS


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_data_that_reads_its_own_writes_stays_on_the_primary(django_user_model):
    user = django_user_model.objects.create_user("owner@example.com", "pw-Long-enough-1")

    assert routed_to(django_user_model.objects.filter(pk=user.pk)) == DEFAULT_DB_ALIAS
    assert routed_to(Order.objects.filter(user=user)) == DEFAULT_DB_ALIAS

    lag_tolerant = {"markets", "notifications.notification"}
    for model in apps.get_models():
        label = model._meta.label_lower
        expected = (
            REPLICA_DB_ALIAS
            if label in lag_tolerant or model._meta.app_label in lag_tolerant
            else DEFAULT_DB_ALIAS
        )
        assert router.db_for_read(model) == expected, label
    for label in ("orders.order", "orders.balance", "orders.ledgerentry", "accounts.user"):
        assert router.db_for_read(apps.get_model(label)) == DEFAULT_DB_ALIAS


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_writes_and_locking_reads_go_to_the_primary():
    with CaptureQueriesContext(connections[REPLICA_DB_ALIAS]) as on_replica:
        coin = Coin.objects.create(id="ethereum", symbol="eth", name="Ethereum")
        Coin.objects.filter(id="ethereum").update(name="Ether")
        Coin.objects.get_or_create(id="solana", defaults={"symbol": "sol", "name": "Solana"})
        with transaction.atomic():
            Coin.objects.select_for_update().get(id="ethereum")
        coin.refresh_from_db()
        assert coin._state.db == REPLICA_DB_ALIAS and coin.name == "Ether"
        coin.save(update_fields=["name"])

    assert len(on_replica) == 1  # only refresh_from_db, a plain read
    assert coin._state.db == DEFAULT_DB_ALIAS


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_reads_inside_a_transaction_on_the_primary_stay_there():
    with transaction.atomic():
        Coin.objects.create(id="cardano", symbol="ada", name="Cardano")
        assert routed_to(Coin.objects.filter(id="cardano")) == DEFAULT_DB_ALIAS
        assert Coin.objects.filter(id="cardano").exists()


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_objects_read_from_the_replica_relate_to_objects_on_the_primary(django_user_model):
    Coin.objects.create(id="dogecoin", symbol="doge", name="Dogecoin")
    user = django_user_model.objects.create_user("relate@example.com", "pw-Long-enough-1")
    coin = Coin.objects.get(id="dogecoin")
    assert coin._state.db == REPLICA_DB_ALIAS

    alert = PriceAlert.objects.create(user=user, coin=coin, condition="above", price="1")
    order = Order(user=user, coin=coin)

    assert alert._state.db == order._state.db == DEFAULT_DB_ALIAS
    assert PriceAlert.objects.get(pk=alert.pk).coin_id == "dogecoin"


@pytest.mark.django_db
def test_tests_on_the_rolled_back_database_never_touch_the_replica():
    """In a test transaction every read stays on the primary, which holds its rows."""
    Coin.objects.create(id="tron", symbol="trx", name="TRON")

    assert [c.id for c in Coin.objects.all()] == ["tron"]


@pytest.mark.django_db(transaction=True, databases=BOTH)
@pytest.mark.usefixtures("unreachable_replica")
def test_an_unreachable_replica_falls_back_to_the_primary_and_is_not_hammered():
    replica_router = ReplicaRouter()
    replica_router.retry_seconds = 3600

    assert replica_router.db_for_read(Coin) == DEFAULT_DB_ALIAS
    connections[REPLICA_DB_ALIAS].settings_dict["PORT"] = connections[
        DEFAULT_DB_ALIAS
    ].settings_dict["PORT"]
    # Back up, but not retried before the window ends.
    assert replica_router.db_for_read(Coin) == DEFAULT_DB_ALIAS


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_a_replica_that_comes_back_is_used_again(unreachable_replica):
    replica_router = ReplicaRouter()
    replica_router.retry_seconds = 0

    assert replica_router.db_for_read(Coin) == DEFAULT_DB_ALIAS
    connection = connections[REPLICA_DB_ALIAS]
    connection.settings_dict["HOST"] = connections[DEFAULT_DB_ALIAS].settings_dict["HOST"]
    connection.settings_dict["PORT"] = connections[DEFAULT_DB_ALIAS].settings_dict["PORT"]

    assert replica_router.db_for_read(Coin) == REPLICA_DB_ALIAS


def client_of(user) -> APIClient:
    with transaction.atomic():
        _, tokens = session_start(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    return client


def replica_queries(call) -> tuple[object, int]:
    with CaptureQueriesContext(connections[REPLICA_DB_ALIAS]) as on_replica:
        result = call()
    return result, len(on_replica)


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_a_client_reads_its_own_writes_from_the_primary(django_user_model):
    user = django_user_model.objects.create_user(
        "pinned@example.com", "pw-Long-enough-1", email_verified_at=timezone.now()
    )
    Notification.objects.create(user=user, kind="price_alert", title="BTC above 70k")
    writer, bystander = client_of(user), client_of(user)

    response, on_replica = replica_queries(lambda: writer.get("/api/v1/notifications/unread-count"))
    assert response.json()["count"] == 1 and on_replica > 0

    response, on_replica = replica_queries(lambda: writer.post("/api/v1/notifications/read-all"))
    assert response.status_code == 200 and on_replica == 0

    # Right after its write, this client's reads skip the possibly lagging replica...
    response, on_replica = replica_queries(lambda: writer.get("/api/v1/notifications/unread-count"))
    assert response.json()["count"] == 0 and on_replica == 0
    # ...for a while, while other credentials keep reading from the replica.
    response, on_replica = replica_queries(
        lambda: bystander.get("/api/v1/notifications/unread-count")
    )
    assert response.status_code == 200 and on_replica > 0
    pins = cache.keys("db:pin:*")
    assert len(pins) == 1 and 0 < cache.ttl(pins[0]) <= PIN_SECONDS


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_a_refused_write_does_not_pin_the_client(django_user_model):
    user = django_user_model.objects.create_user(
        "refused@example.com", "pw-Long-enough-1", email_verified_at=timezone.now()
    )
    client = client_of(user)

    response = client.post("/api/v1/notifications/999999/read")

    assert response.status_code == 404
    assert cache.keys("db:pin:*") == []


def test_without_a_replica_everything_uses_the_primary_and_nothing_is_pinned():
    middleware = ReplicaPinningMiddleware(lambda request: HttpResponse(status=201))
    replica = connections.settings.pop(REPLICA_DB_ALIAS)
    try:
        assert ReplicaRouter().db_for_read(Coin) == DEFAULT_DB_ALIAS
        middleware(RequestFactory().post("/api/v1/orders", HTTP_AUTHORIZATION="Bearer x"))
    finally:
        connections.settings[REPLICA_DB_ALIAS] = replica
    assert cache.keys("db:pin:*") == []


def test_migrations_run_on_the_primary_only():
    assert router.allow_migrate(DEFAULT_DB_ALIAS, "markets")
    assert not router.allow_migrate(REPLICA_DB_ALIAS, "markets")
    assert not router.allow_migrate(REPLICA_DB_ALIAS, "orders")


def test_settings_add_a_mirrored_replica_alias_from_the_environment():
    script = (
        "import json; from django.conf import settings as s; "
        "r = s.DATABASES.get('replica'); "
        "print(json.dumps(r and {k: r[k] for k in ('HOST', 'PORT', 'NAME', 'TEST')}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_REPLICA_URL"}

    def replica_settings(**extra: str):
        result = subprocess.run(  # noqa: S603 - fixed interpreter and arguments
            [sys.executable, "manage.py", "shell", "-c", script],
            cwd=ROOT,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(result.stdout.strip().splitlines()[-1])

    assert replica_settings() is None
    configured = replica_settings(
        DATABASE_REPLICA_URL="postgres://postgres@127.0.0.1:5433/cryptovault"
    )
    assert configured["HOST"] == "127.0.0.1" and configured["PORT"] == 5433
    assert configured["NAME"] == "cryptovault"
    assert configured["TEST"]["MIRROR"] == "default"
