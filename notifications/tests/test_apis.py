from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from markets.services import coins_seed, prices_record
from notifications import services
from notifications.models import Notification
from notifications.tests.factories import user_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def user():
    return user_create()


@pytest.fixture
def client(api_client, user):
    api_client.force_authenticate(user)
    return api_client


def _notify(user, kind="order_filled", title="Filled"):
    return services.notification_create(user=user, kind=kind, title=title, data={"order": 1})


def test_list_is_paginated_newest_first_with_contract_fields(client, user):
    first = _notify(user, title="first")
    second = _notify(user, title="second")
    response = client.get("/api/v1/notifications")
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"next", "previous", "results"}
    assert [n["id"] for n in body["results"]] == [second.pk, first.pk]
    item = body["results"][0]
    assert set(item) == {"id", "kind", "title", "body", "data", "read", "created_at"}
    assert item["kind"] == "order_filled"
    assert item["read"] is False
    assert item["data"] == {"order": 1}
    assert item["created_at"].endswith("Z")


def test_list_pages(client, user):
    for i in range(3):
        _notify(user, title=str(i))
    page = client.get("/api/v1/notifications?page_size=2").json()
    assert len(page["results"]) == 2 and page["next"]
    rest = client.get(page["next"]).json()
    assert [n["title"] for n in rest["results"]] == ["0"]


def test_unread_filter_count_read_and_read_all(client, user):
    a, b, c = _notify(user), _notify(user), _notify(user)
    assert client.get("/api/v1/notifications/unread-count").json() == {"count": 3}

    response = client.post(f"/api/v1/notifications/{a.pk}/read")
    assert response.status_code == 200
    assert response.json()["read"] is True
    assert client.get("/api/v1/notifications/unread-count").json() == {"count": 2}
    unread = client.get("/api/v1/notifications?unread=true").json()["results"]
    assert {n["id"] for n in unread} == {b.pk, c.pk}
    read = client.get("/api/v1/notifications?unread=false").json()["results"]
    assert [n["id"] for n in read] == [a.pk]

    assert client.post("/api/v1/notifications/read-all").json() == {"updated": 2}
    assert client.get("/api/v1/notifications/unread-count").json() == {"count": 0}
    assert client.get("/api/v1/notifications?unread=true").json()["results"] == []


def test_bad_unread_value_is_400(client):
    response = client.get("/api/v1/notifications?unread=maybe")
    assert response.status_code == 400
    assert "unread" in response.json()


def test_delete(client, user):
    notification = _notify(user)
    assert client.delete(f"/api/v1/notifications/{notification.pk}").status_code == 204
    assert not Notification.objects.filter(pk=notification.pk).exists()
    assert client.delete(f"/api/v1/notifications/{notification.pk}").status_code == 404


def test_other_users_notifications_are_404(client, user):
    other = _notify(user_create())
    assert client.post(f"/api/v1/notifications/{other.pk}/read").status_code == 404
    assert client.delete(f"/api/v1/notifications/{other.pk}").status_code == 404
    assert client.get("/api/v1/notifications").json()["results"] == []
    assert client.post("/api/v1/notifications/read-all").json() == {"updated": 0}
    assert Notification.objects.get(pk=other.pk).read is False


def test_requires_authentication(api_client):
    assert api_client.get("/api/v1/notifications").status_code == 401
    assert api_client.get("/api/v1/alerts").status_code == 401


def test_preferences(client, user):
    prefs = client.get("/api/v1/notifications/preferences").json()["email"]
    assert prefs["price_alert"] is True and prefs["order_cancelled"] is False
    response = client.patch(
        "/api/v1/notifications/preferences",
        {"email": {"price_alert": False, "order_cancelled": True}},
        format="json",
    )
    assert response.status_code == 200
    prefs = response.json()["email"]
    assert prefs["price_alert"] is False and prefs["order_cancelled"] is True
    bad = client.patch(
        "/api/v1/notifications/preferences", {"email": {"nope": True}}, format="json"
    )
    assert bad.status_code == 400
    assert bad.json()["code"] == "unknown_kind"


class TestAlerts:
    @pytest.fixture(autouse=True)
    def _coins(self):
        coins_seed(coin_ids=["bitcoin", "ethereum"])

    def test_create_list_delete(self, client):
        response = client.post(
            "/api/v1/alerts",
            {"coin": "bitcoin", "condition": "above", "price": "70000.50"},
            format="json",
        )
        assert response.status_code == 201
        alert = response.json()
        assert alert["coin"] == "bitcoin"
        assert alert["condition"] == "above"
        assert alert["price"] == "70000.5"
        assert alert["active"] is True and alert["triggered_at"] is None

        listed = client.get("/api/v1/alerts").json()["results"]
        assert [a["id"] for a in listed] == [alert["id"]]
        assert client.get(reverse("v1:alert-detail", args=[alert["id"]])).status_code == 200

        assert client.delete(f"/api/v1/alerts/{alert['id']}").status_code == 204
        assert client.get("/api/v1/alerts").json()["results"] == []

    def test_coin_id_is_case_insensitive_as_in_orders(self, client):
        payload = {"coin": " Bitcoin ", "condition": "below", "price": "1"}
        response = client.post("/api/v1/alerts", payload, format="json")
        assert response.status_code == 201
        assert response.json()["coin"] == "bitcoin"

    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({"coin": "bitcoin", "condition": "sideways", "price": "1"}, "condition"),
            ({"coin": "bitcoin", "condition": "above", "price": "-1"}, "price"),
            ({"coin": "bitcoin", "condition": "above", "price": "0"}, "price"),
            ({"coin": "bitcoin", "condition": "above", "price": "abc"}, "price"),
            ({"coin": "bitcoin", "condition": "above", "price": "NaN"}, "price"),
            ({"coin": "bitcoin", "condition": "above"}, "price"),
            ({"coin": "bitcoin", "condition": "above", "price": "1000000000.1"}, "price"),
            ({"coin": "bitcoin", "condition": "above", "price": "9" * 400}, "price"),
            ({"coin": "bitcoin", "condition": "above", "price": "1e5"}, "price"),
            ({"coin": "bitcoin", "condition": "above", "price": "0.0000000000001"}, "price"),
            ({"coin": "dogecoin", "condition": "above", "price": "1"}, "coin"),
        ],
    )
    def test_bad_input_is_400(self, client, payload, field):
        response = client.post("/api/v1/alerts", payload, format="json")
        assert response.status_code == 400
        assert field in response.json()

    def test_active_filter(self, client, user):
        fired = services.price_alert_create(
            user=user, coin_id="bitcoin", condition="above", price=1
        )
        prices_record(prices={"bitcoin": Decimal(2)})
        services.price_alerts_evaluate()
        waiting = services.price_alert_create(
            user=user, coin_id="bitcoin", condition="above", price=10
        )
        active = client.get("/api/v1/alerts?active=true").json()["results"]
        assert [a["id"] for a in active] == [waiting.pk]
        done = client.get("/api/v1/alerts?active=false").json()["results"]
        assert [a["id"] for a in done] == [fired.pk]
        assert done[0]["triggered_price"] == "2" and done[0]["triggered_at"]

    def test_other_users_alerts_are_404(self, client):
        other = services.price_alert_create(
            user=user_create(), coin_id="bitcoin", condition="below", price=1
        )
        assert client.get(f"/api/v1/alerts/{other.pk}").status_code == 404
        assert client.delete(f"/api/v1/alerts/{other.pk}").status_code == 404
        assert client.get("/api/v1/alerts").json()["results"] == []

    def test_active_cap(self, client, user, monkeypatch):
        monkeypatch.setattr(services, "MAX_ACTIVE_ALERTS_PER_USER", 1)
        payload = {"coin": "bitcoin", "condition": "above", "price": "1"}
        assert client.post("/api/v1/alerts", payload, format="json").status_code == 201
        response = client.post("/api/v1/alerts", payload, format="json")
        assert response.status_code == 400
        assert response.json()["code"] == "too_many_alerts"


def test_admin_lists_notifications_and_alerts(client, user):
    coins_seed(coin_ids=["bitcoin"])
    _notify(user)
    services.price_alert_create(user=user, coin_id="bitcoin", condition="above", price=1)
    staff = user_create(is_staff=True, is_superuser=True)
    browser = Client()
    browser.force_login(staff)
    for url in (
        "/admin/notifications/notification/",
        "/admin/notifications/pricealert/",
        "/admin/notifications/notificationpreference/",
        f"/admin/notifications/notification/{Notification.objects.get().pk}/change/",
    ):
        assert browser.get(url).status_code == 200, url
