import time

import pytest
from django.test import override_settings
from django_redis import get_redis_connection

from markets.price_store import PRICES_AS_OF_KEY

pytestmark = pytest.mark.django_db

UNREACHABLE_REDIS = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
    }
}


def test_health_ok_reports_each_dependency(client):
    response = client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["prices"] == {"age_seconds": None}


def test_health_reports_price_age_from_redis(client):
    get_redis_connection("default").set(PRICES_AS_OF_KEY, time.time() - 42)

    age = client.get("/health").json()["checks"]["prices"]["age_seconds"]

    assert 41 <= age <= 45


def test_health_is_503_when_redis_is_unreachable(client):
    with override_settings(CACHES=UNREACHABLE_REDIS):
        response = client.get("/health")

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["redis"] == "error"
    assert body["checks"]["database"] == "ok"


def test_health_answers_head_and_refuses_other_methods_with_405():
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    assert client.head("/health").status_code == 200
    response = client.post("/health")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert response.json()["code"] == "method_not_allowed"
