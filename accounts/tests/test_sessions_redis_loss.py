"""PostgreSQL is the truth of login sessions; Redis (flushed here) only caches them."""

import threading

import jwt
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_redis import get_redis_connection
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from accounts.models import Session
from accounts.services import session_revoke, session_user_get
from accounts.tests.factories import PASSWORD
from accounts.tests.helpers import session_idle_out

pytestmark = pytest.mark.django_db


def _sid(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["sid"]


def _redis_lost() -> None:
    get_redis_connection("default").flushdb()


def test_a_live_session_survives_a_redis_flush_with_the_same_tokens(api, user):
    body = api.login(user.email)
    _redis_lost()
    assert api.get("me", token=body["access"]).status_code == 200
    _redis_lost()
    rotated = api.post("token/refresh", {"refresh": body["refresh"]})
    assert rotated.status_code == 200
    assert api.get("me", token=rotated.json()["access"]).status_code == 200
    assert Session.objects.get(pk=_sid(body["access"])).revoked_at is None


def test_a_revoked_session_stays_revoked_after_a_flush(api, user):
    body = api.login(user.email)
    assert session_revoke(session_id=_sid(body["access"])) is True
    _redis_lost()
    assert api.get("me", token=body["access"]).status_code == 401
    assert api.post("token/refresh", {"refresh": body["refresh"]}).status_code == 401


def test_an_idled_out_session_stays_dead_after_a_flush(api, user):
    body = api.login(user.email)
    session_idle_out(_sid(body["access"]))
    _redis_lost()
    assert api.get("me", token=body["access"]).status_code == 401
    assert api.post("token/refresh", {"refresh": body["refresh"]}).status_code == 401


def test_refresh_reuse_after_a_flush_is_detected_and_kills_the_session(api, user):
    first = api.login(user.email)
    second = api.post("token/refresh", {"refresh": first["refresh"]}).json()
    _redis_lost()
    reuse = api.post("token/refresh", {"refresh": first["refresh"]})
    assert (reuse.status_code, reuse.json()["code"]) == (401, "token_reused")
    _redis_lost()
    assert api.get("me", token=second["access"]).status_code == 401
    assert Session.objects.get(pk=_sid(first["access"])).revoked_reason == "refresh_reused"


def test_a_cache_hit_costs_only_the_user_row(api, user):
    token = AccessToken(api.login(user.email)["access"])
    assert session_user_get(token=token) == user  # persists the idle deadline once
    with CaptureQueriesContext(connection) as queries:
        assert session_user_get(token=token) == user
    assert len(queries) == 1, [q["sql"] for q in queries]
    assert "accounts_session" not in queries[0]["sql"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_refreshes_with_one_token_exactly_one_wins(user):
    client = APIClient()
    login = client.post(
        "/api/v1/auth/login", {"email": user.email, "password": PASSWORD}, format="json"
    )
    assert login.status_code == 200, login.content
    refresh = login.json()["refresh"]
    _redis_lost()
    n = 6
    barrier = threading.Barrier(n)
    statuses = []

    def run():
        barrier.wait()
        try:
            response = APIClient().post(
                "/api/v1/auth/token/refresh", {"refresh": refresh}, format="json"
            )
            statuses.append(response.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [401] * (n - 1)
