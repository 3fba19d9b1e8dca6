from decimal import Decimal

import pytest
from django.urls import reverse

from accounts.models import AuditEvent, User
from orders import services
from orders.models import USD, Balance, Order
from orders.tests.factories import coins_and_prices, user_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    admin = User.objects.create_superuser("ops@example.com", "correct horse battery staple")
    client.force_login(admin)
    return client


def test_operator_credits_and_debits_a_wallet_through_the_ledger(admin_client):
    user = user_create()
    url = reverse("admin:orders_balance_adjust")
    assert admin_client.get(url).status_code == 200
    body = {"email": user.email, "asset": "usd", "amount": "250.5", "reason": "goodwill"}
    response = admin_client.post(url, body)
    assert response.status_code == 302
    assert Balance.objects.get(user=user, asset=USD).available == Decimal("250.5")
    assert AuditEvent.objects.filter(action="wallet_adjusted", target_id=str(user.pk)).exists()

    too_much = admin_client.post(url, {**body, "amount": "-300"})
    assert too_much.status_code == 200
    assert b"Insufficient funds" in too_much.content
    for amount in ("NaN", "1e3", "Infinity", "0", "1,5", "1000000000000.1", "1.000000001"):
        bad = admin_client.post(url, {**body, "amount": amount})
        assert bad.status_code == 200, amount  # the form again, with its error
    assert Balance.objects.get(user=user, asset=USD).available == Decimal("250.5")
    assert admin_client.get(reverse("admin:orders_balance_changelist")).status_code == 200
    assert admin_client.get(reverse("admin:orders_ledgerentry_changelist")).status_code == 200


def test_operator_cancels_orders(admin_client):
    coins_and_prices({"bitcoin": "65000"})
    user = user_create(usd="10000")
    order, _ = services.order_place(
        user=user, coin_id="bitcoin", side="buy", type="limit",
        quantity=Decimal("0.1"), limit_price=Decimal("60000"),
    )  # fmt: skip
    response = admin_client.post(
        reverse("admin:orders_order_changelist"),
        {"action": "cancel_orders", "_selected_action": [order.pk]},
    )
    assert response.status_code == 302
    order.refresh_from_db()
    assert order.status == "cancelled"
    assert Balance.objects.get(user=user, asset=USD).locked == 0
    assert AuditEvent.objects.filter(action="order_cancelled_by_operator").count() == 1
    assert (
        admin_client.get(reverse("admin:orders_order_change", args=[order.pk])).status_code == 200
    )
    assert Order.objects.get(pk=order.pk).status == "cancelled"
