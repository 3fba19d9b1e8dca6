import base64
import json
from datetime import timedelta

import jwt
import pytest
from django.conf import settings as django_settings
from django.contrib.auth.hashers import make_password
from django.utils import timezone
from django_redis import get_redis_connection

from accounts import session_store
from accounts.models import AuditEvent, Session
from accounts.services import session_revoke, user_from_access_token, user_sessions_revoke_all
from accounts.tests.factories import PASSWORD, user_create
from accounts.tests.helpers import session_idle_out
from notifications.models import Notification

pytestmark = pytest.mark.django_db


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def test_login_returns_tokens_with_session_and_user(api, user):
    body = api.login(user.email.upper())
    assert set(body) == {"access", "refresh", "user"}
    assert body["user"]["email"] == user.email
    access, refresh = _claims(body["access"]), _claims(body["refresh"])
    assert access["sid"] == refresh["sid"]
    assert access["exp"] - access["iat"] == 300
    session = Session.objects.get(pk=access["sid"])
    assert session.user == user
    assert session.ip == "203.0.113.10"
    assert session.user_agent == "pytest-agent/1.0"
    ttl = get_redis_connection("default").ttl(session_store.SESSION_KEY.format(session.pk))
    assert 0 < ttl <= django_settings.SESSION_IDLE_SECONDS
    assert Notification.objects.filter(user=user, kind="new_login").count() == 1
    assert AuditEvent.objects.filter(action="login", actor=user, ip="203.0.113.10").exists()


def test_login_by_username(api):
    user = user_create(username="Trader.One")
    body = api.post("login", {"username": "trader.one", "password": PASSWORD}).json()
    assert body["user"]["id"] == user.pk


def test_login_unverified_is_403_and_bad_credentials_401(api):
    unverified = user_create(verified=False)
    response = api.post("login", {"email": unverified.email, "password": PASSWORD})
    assert (response.status_code, response.json()["code"]) == (403, "email_not_verified")

    wrong = api.post("login", {"email": unverified.email, "password": "Wrong-pass-123"})
    unknown = api.post("login", {"email": "nobody@example.com", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert not Session.objects.exists()
    assert AuditEvent.objects.filter(action="login_failed").count() == 2


def test_inactive_user_cannot_log_in(api):
    user = user_create(is_active=False)
    assert api.post("login", {"email": user.email, "password": PASSWORD}).status_code == 401


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"email": "a@example.com"},
        {"password": PASSWORD},
        {"email": {"$ne": ""}, "password": PASSWORD},
        {"email": "a@example.com", "password": ["x"]},
    ],
)
def test_login_bad_input_is_400(api, payload):
    assert api.post("login", payload).status_code == 400


def test_me_requires_a_live_session(api, user):
    body = api.login(user.email)
    response = api.get("me", token=body["access"])
    assert response.status_code == 200
    assert response.json()["email"] == user.email
    assert api.get("me").status_code == 401


def _forge(claims: dict, *, alg: str = "HS256", key: str | None = None) -> str:
    return jwt.encode(claims, key or django_settings.SIMPLE_JWT["SIGNING_KEY"], algorithm=alg)


def test_forged_tampered_none_and_expired_tokens_are_401(api, user):
    access = api.login(user.email)["access"]
    claims = _claims(access)

    header, payload, signature = access.split(".")
    evil = dict(claims, user_id=str(int(claims["user_id"]) + 1000))
    tampered_payload = base64.urlsafe_b64encode(json.dumps(evil).encode()).rstrip(b"=").decode()
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    expired = dict(claims, exp=int((timezone.now() - timedelta(seconds=1)).timestamp()))

    for bad in (
        f"{header}.{tampered_payload}.{signature}",
        f"{none_header}.{payload}.",
        _forge(claims, key="not-the-signing-key-but-long-enough-to-be-quiet"),
        _forge(expired),
        _forge({k: v for k, v in claims.items() if k != "sid"}),
        "garbage",
    ):
        response = api.get("me", token=bad)
        assert response.status_code == 401, bad
    # The refresh token is not an access token.
    refresh = api.login(user.email)["refresh"]
    assert api.get("me", token=refresh).status_code == 401


def test_logout_revokes_the_session_at_once(api, user):
    body = api.login(user.email)
    assert api.post("logout", {"refresh": body["refresh"]}).status_code == 204
    assert api.get("me", token=body["access"]).status_code == 401
    assert api.post("token/refresh", {"refresh": body["refresh"]}).status_code == 401
    assert Session.objects.get().revoked_reason == "logout"
    assert AuditEvent.objects.filter(action="logout", actor=user).exists()
    assert api.post("logout", {"refresh": "junk"}).status_code == 401
    assert api.post("logout", {}).status_code == 400


def test_refresh_rotates_and_reuse_revokes_the_whole_session(api, user):
    first = api.login(user.email)
    response = api.post("token/refresh", {"refresh": first["refresh"]})
    assert response.status_code == 200
    second = response.json()
    assert set(second) == {"access", "refresh"}
    assert second["refresh"] != first["refresh"]
    assert _claims(second["access"])["sid"] == _claims(first["access"])["sid"]
    assert api.get("me", token=second["access"]).status_code == 200

    # The rotated-away refresh token comes back: treat as stolen, kill the session.
    reuse = api.post("token/refresh", {"refresh": first["refresh"]})
    assert (reuse.status_code, reuse.json()["code"]) == (401, "token_reused")
    assert api.get("me", token=second["access"]).status_code == 401
    assert api.post("token/refresh", {"refresh": second["refresh"]}).status_code == 401
    assert AuditEvent.objects.filter(action="refresh_reused").exists()


def test_refresh_rejects_access_tokens_and_junk(api, user):
    body = api.login(user.email)
    assert api.post("token/refresh", {"refresh": body["access"]}).status_code == 401
    assert api.post("token/refresh", {"refresh": "a.b.c"}).status_code == 401
    assert api.post("token/refresh", {"refresh": 5}).status_code in (400, 401)


def test_oldest_session_is_evicted_beyond_the_limit(api, user, settings):
    settings.MAX_SESSIONS_PER_USER = 2
    first, second, third = (api.login(user.email) for _ in range(3))
    assert api.get("me", token=first["access"]).status_code == 401
    assert api.get("me", token=second["access"]).status_code == 200
    assert api.get("me", token=third["access"]).status_code == 200
    sessions = api.get("sessions", token=third["access"]).json()["results"]
    assert len(sessions) == 2
    assert Session.objects.get(pk=_claims(first["access"])["sid"]).revoked_reason == "evicted"


def test_idle_session_expires_and_use_slides_it(api, user):
    body = api.login(user.email)
    sid = _claims(body["access"])["sid"]
    redis = get_redis_connection("default")
    key = session_store.SESSION_KEY.format(sid)
    redis.expire(key, 5)
    assert api.get("me", token=body["access"]).status_code == 200
    assert redis.ttl(key) > 5  # slid back to SESSION_IDLE_SECONDS

    session_idle_out(sid)
    assert api.get("me", token=body["access"]).status_code == 401
    assert api.post("token/refresh", {"refresh": body["refresh"]}).status_code == 401


def test_last_seen_and_idle_deadline_are_written_at_most_once_a_minute(api, user):
    body = api.login(user.email)
    sid = _claims(body["access"])["sid"]
    long_ago = timezone.now() - timedelta(hours=1)
    Session.objects.filter(pk=sid).update(last_seen_at=long_ago)
    api.get("me", token=body["access"])  # the login just wrote them
    assert Session.objects.get(pk=sid).last_seen_at == long_ago

    get_redis_connection("default").delete(session_store.SEEN_KEY.format(sid))  # a minute on
    api.get("me", token=body["access"])
    session = Session.objects.get(pk=sid)
    assert session.last_seen_at > long_ago
    lead = session.idle_expires_at - session.last_seen_at
    assert lead == timedelta(seconds=django_settings.SESSION_IDLE_SECONDS + 60)


def test_sessions_list_and_revoke(api, user):
    other = api.login(user.email, HTTP_USER_AGENT="phone/2")
    mine = api.login(user.email, ip="198.51.100.20")
    response = api.get("sessions", token=mine["access"])
    assert response.status_code == 200
    results = response.json()["results"]
    assert {"next", "previous", "results"} <= set(response.json())
    assert len(results) == 2
    by_id = {s["id"]: s for s in results}
    current = by_id[_claims(mine["access"])["sid"]]
    assert current["current"] is True
    assert current["ip"] == "198.51.100.20"
    assert set(current) == {"id", "created", "last_seen", "ip", "user_agent", "current"}
    other_sid = _claims(other["access"])["sid"]
    assert by_id[other_sid]["current"] is False
    assert by_id[other_sid]["user_agent"] == "phone/2"

    assert api.delete(f"sessions/{other_sid}", token=mine["access"]).status_code == 204
    assert api.get("me", token=other["access"]).status_code == 401
    assert api.delete(f"sessions/{other_sid}", token=mine["access"]).status_code == 404
    assert len(api.get("sessions", token=mine["access"]).json()["results"]) == 1
    assert AuditEvent.objects.filter(action="session_revoked", target_id=other_sid).exists()


def test_cannot_see_or_revoke_another_users_session(api, user):
    stranger = user_create()
    theirs = api.login(stranger.email)
    mine = api.login(user.email)
    their_sid = _claims(theirs["access"])["sid"]
    assert api.delete(f"sessions/{their_sid}", token=mine["access"]).status_code == 404
    assert api.get("me", token=theirs["access"]).status_code == 200
    assert api.delete("sessions/nope", token=mine["access"]).status_code == 404


def test_admin_seams_revoke_sessions(api, user):
    one, two = api.login(user.email), api.login(user.email)
    assert session_revoke(session_id=_claims(one["access"])["sid"]) is True
    assert session_revoke(session_id=_claims(one["access"])["sid"]) is False
    assert api.get("me", token=one["access"]).status_code == 401
    assert api.get("me", token=two["access"]).status_code == 200
    assert user_sessions_revoke_all(user=user) == 1
    assert api.get("me", token=two["access"]).status_code == 401


def test_user_from_access_token_checks_the_session(api, user):
    body = api.login(user.email)
    assert user_from_access_token(token=body["access"]) == user
    assert user_from_access_token(token=body["refresh"]) is None
    assert user_from_access_token(token="junk") is None
    api.post("logout", {"refresh": body["refresh"]})
    assert user_from_access_token(token=body["access"]) is None


def test_deactivated_user_is_refused_at_once(api, user):
    body = api.login(user.email)
    user.is_active = False
    user.save()
    assert api.get("me", token=body["access"]).status_code == 401


def test_redis_down_is_503_not_500(api, user, settings):
    access = api.login(user.email)["access"]
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        }
    }
    # The session check (raw Redis client) and a rate limit (the cache) alike.
    for response in (api.get("me", token=access), api.post("forgot-password", {"email": "x"})):
        assert (response.status_code, response.json()["code"]) == (503, "service_unavailable")
        assert int(response.headers["Retry-After"]) >= 1


def test_bcrypt_hashes_are_accepted_and_upgraded_to_argon2(api):
    user = user_create()
    user.password = make_password(PASSWORD, hasher="bcrypt_sha256")
    user.save(update_fields=["password"])
    api.login(user.email)
    user.refresh_from_db()
    assert user.password.startswith("argon2$argon2id$")


@pytest.mark.parametrize("identifier", [{"email": "a\x00@example.com"}, {"username": "a\x00b"}])
def test_login_with_a_nul_in_the_identifier_is_400_not_500(api, identifier):
    response = api.post("login", {**identifier, "password": "x"})

    assert response.status_code == 400


def test_login_with_an_unpaired_surrogate_is_400_not_500(client):
    body = json.dumps({"email": "\ud800@example.com", "password": "x"})  # escaped: valid JSON
    response = client.post("/api/v1/auth/login", body, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"
