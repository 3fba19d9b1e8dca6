"""The OpenAPI document is good enough to build an SDK from: a client generated from it
with openapi-python-client (no warnings) drives signup → verify → login → order →
portfolio against a real uvicorn, with the real worker filling the order."""

import importlib
import os
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from accounts.tests.helpers import code_and_token, mails_to
from cryptovault.asgi import application
from cryptovault.testing import uvicorn_in_thread
from orders.tests.factories import coins_and_prices

OPERATION_ID = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)+$")
PACKAGE = "cryptovault_client"


@pytest.fixture(scope="session")
def schema_yaml(django_db_setup, django_db_blocker) -> bytes:
    from django.test import Client

    with django_db_blocker.unblock():
        response = Client().get("/api/schema/")
    assert response.status_code == 200
    return response.content


@pytest.fixture(scope="session")
def sdk(schema_yaml, tmp_path_factory):
    """The client package generated from the served schema, importable as ``PACKAGE``
    (generated once per test session)."""
    workdir = tmp_path_factory.mktemp("sdk")
    (workdir / "schema.yaml").write_bytes(schema_yaml)
    bin_dir = Path(sys.executable).parent
    # The generator formats its output with ruff, found on PATH (the virtualenv's).
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(  # noqa: S603 - fixed argv, our own tool
        [
            bin_dir / "openapi-python-client",
            "generate",
            "--path",
            "schema.yaml",
            "--output-path",
            PACKAGE,
            "--meta",
            "none",
            "--fail-on-warning",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(workdir))
    yield importlib.import_module(PACKAGE)
    sys.path.remove(str(workdir))
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def test_operation_ids_are_unique_resource_action_names(schema_yaml):
    import yaml

    operations = [
        (operation["operationId"], f"{method.upper()} {path}")
        for path, methods in yaml.safe_load(schema_yaml)["paths"].items()
        for method, operation in methods.items()
    ]
    names = [name for name, _ in operations]
    assert len(set(names)) == len(names), "duplicate operationIds"
    assert [name for name in names if not OPERATION_ID.match(name)] == []
    assert {
        "auth_signup": "POST /api/v1/auth/signup",
        "auth_verify_email": "POST /api/v1/auth/verify-email",
        "auth_login": "POST /api/v1/auth/login",
        "auth_token_refresh": "POST /api/v1/auth/token/refresh",
        "auth_me_retrieve": "GET /api/v1/auth/me",
        "auth_me_update": "PATCH /api/v1/auth/me",
        "orders_create": "POST /api/v1/orders",
        "orders_list": "GET /api/v1/orders",
        "orders_retrieve": "GET /api/v1/orders/{order_id}",
        "orders_cancel": "POST /api/v1/orders/{order_id}/cancel",
        "coins_list": "GET /api/v1/coins",
        "coins_retrieve": "GET /api/v1/coins/{coin_id}",
        "coins_history": "GET /api/v1/coins/{coin_id}/history",
        "prices_retrieve": "GET /api/v1/prices",
        "portfolio_retrieve": "GET /api/v1/portfolio",
        "transactions_list": "GET /api/v1/transactions",
        "notifications_list": "GET /api/v1/notifications",
        "alerts_create": "POST /api/v1/alerts",
        "alerts_delete": "DELETE /api/v1/alerts/{alert_id}",
    }.items() <= dict(operations).items()


def _wait_for(probe, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.mark.django_db(transaction=True)
def test_generated_client_signs_up_logs_in_trades_and_reads_the_portfolio(sdk, celery_worker):
    from cryptovault_client import AuthenticatedClient, Client
    from cryptovault_client.api.auth import auth_login, auth_signup, auth_verify_email
    from cryptovault_client.api.orders import orders_create, orders_retrieve
    from cryptovault_client.api.portfolio import portfolio_retrieve
    from cryptovault_client.models import (
        LoginInputRequest,
        OrderPlaceRequest,
        OrderSideEnum,
        OrderStatusEnum,
        OrderTypeEnum,
        SignupInputRequest,
        VerifyEmailInputRequest,
    )

    coins_and_prices({"bitcoin": "65000"})
    email, password = "sdk@example.com", "correct horse battery staple"
    with uvicorn_in_thread(application) as address:
        public = Client(base_url=f"http://{address}", raise_on_unexpected_status=True)
        user = auth_signup.sync(
            client=public, body=SignupInputRequest(email=email, password=password)
        )
        assert (user.email, user.email_verified) == (email, False)

        # The worker drains the email outbox into Django's locmem outbox.
        message = _wait_for(lambda: mails_to(email, "verification code"))[0]
        code, _ = code_and_token(message)
        auth_verify_email.sync(client=public, body=VerifyEmailInputRequest(email=email, code=code))

        tokens = auth_login.sync(
            client=public, body=LoginInputRequest(email=email, password=password)
        )
        client = AuthenticatedClient(
            base_url=f"http://{address}", token=tokens.access, raise_on_unexpected_status=True
        )
        order = orders_create.sync(
            client=client,
            body=OrderPlaceRequest(
                coin="bitcoin", side=OrderSideEnum.BUY, type_=OrderTypeEnum.MARKET, quantity="0.1"
            ),
        )
        assert order.status == OrderStatusEnum.PENDING
        filled = _wait_for(
            lambda: (
                (o := orders_retrieve.sync(client=client, order_id=order.id)).status
                == OrderStatusEnum.FILLED
                and o
            )
        )
        assert (filled.filled_price, filled.fee) == ("65000", "6.5")

        portfolio = portfolio_retrieve.sync(client=client)
    balances = {b.asset: b for b in portfolio.balances}
    # The signup bonus (10000 usd) minus 0.1 btc at 65000 and the 0.1 % fee.
    assert Decimal(balances["usd"].available) == Decimal("3493.5")
    assert Decimal(balances["bitcoin"].available) == Decimal("0.1")
    assert Decimal(portfolio.total_value_usd) == Decimal("9993.5")
