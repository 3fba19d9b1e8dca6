"""Operators' logins: the admin login shares the API login's per-account lockout and
audit; admin sessions idle out, end at an absolute limit and with "revoke all sessions".
Everything goes through the real admin login view and Django's session framework."""

import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session as DjangoSession
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_redis import get_redis_connection

from accounts import services
from accounts.admin_sessions import ACTIVITY_RESOLUTION_SECONDS, LOGIN_AT, SEEN_AT
from accounts.models import AuditEvent, User
from accounts.services import LOCKOUT_THRESHOLD
from accounts.tests.factories import PASSWORD, user_create
from accounts.tests.helpers import mails_to

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
INDEX = "/admin/"
NEW_PASSWORD = "Another-Sparrow-88"


@pytest.fixture
def operator():
    return services.user_role_set(user=user_create(), role=User.Role.OPERATOR)


def admin_post_login(client, identifier, password, n=0):
    # Each attempt from its own address: the per-account lock is what stops an
    # attacker who spreads guesses past the per-IP limit.
    return client.post(
        LOGIN,
        {"username": identifier, "password": password},
        REMOTE_ADDR=f"198.51.100.{n % 250 + 1}",
        HTTP_USER_AGENT="pytest-browser/1.0",
    )


def form_errors(response) -> list[str]:
    return response.context["form"].non_field_errors()


def logged_in(client) -> bool:
    response = client.get(INDEX)
    if response.status_code == 302:
        assert response["Location"].startswith(LOGIN)
        return False
    assert response.status_code == 200
    return True


def operator_login(operator) -> Client:
    client = Client()
    assert admin_post_login(client, operator.email, PASSWORD).status_code == 302
    return client


def stored_session(client) -> DjangoSession:
    return DjangoSession.objects.get(session_key=client.cookies[settings.SESSION_COOKIE_NAME].value)


# --- Lockout and audit --------------------------------------------------------------


def test_admin_failures_lock_the_account_for_the_admin_and_the_api(client, api, operator):
    for n in range(LOCKOUT_THRESHOLD):
        response = admin_post_login(client, operator.email, "wrong", n)
        assert response.status_code == 200
        assert "correct email and password" in form_errors(response)[0]

    failed = AuditEvent.objects.filter(action="admin_login_failed").order_by("id")
    assert [e.data["failures"] for e in failed] == list(range(1, LOCKOUT_THRESHOLD + 1))
    assert {(e.target_id, e.data["identifier"]) for e in failed} == {
        (str(operator.pk), operator.email)
    }
    assert failed[0].ip == "198.51.100.1"
    assert failed[0].user_agent == "pytest-browser/1.0"
    lockout = AuditEvent.objects.get(action=AuditEvent.Action.LOCKOUT)
    assert lockout.target_id == str(operator.pk)

    # The right password no longer opens the console, nor the API.
    refused = admin_post_login(client, operator.email, PASSWORD, 99)
    assert refused.status_code == 200
    assert re.fullmatch(
        r"Too many failed logins for this account\. Try again in 1[45] minute\(s\)\.",
        form_errors(refused)[0],
    )
    assert not logged_in(client)
    locked = AuditEvent.objects.filter(action="admin_login_failed").latest("id")
    assert locked.data == {"identifier": operator.email, "reason": "locked"}
    response = api.post("login", {"email": operator.email, "password": PASSWORD})
    assert (response.status_code, response.json()["code"]) == (429, "account_locked")

    # Unlocking (the operator action) opens the console again.
    services.user_unlock(user=operator)
    assert admin_post_login(client, operator.email, PASSWORD).status_code == 302
    assert logged_in(client)


def test_api_failures_lock_the_admin_login(client, api, operator):
    for n in range(LOCKOUT_THRESHOLD):
        ip = f"203.0.113.{n + 1}"
        response = api.post("login", {"email": operator.email, "password": "wrong"}, ip=ip)
        assert response.status_code == 401
    response = admin_post_login(client, operator.email, PASSWORD)
    assert "Too many failed logins" in form_errors(response)[0]
    assert not logged_in(client)


def test_failures_add_up_across_the_admin_and_the_api_and_a_success_resets_them(
    client, api, operator
):
    api.post("login", {"email": operator.email, "password": "wrong"})
    admin_post_login(client, operator.email, "wrong")
    assert AuditEvent.objects.get(action="admin_login_failed").data["failures"] == 2

    assert admin_post_login(client, operator.email, PASSWORD).status_code == 302
    success = AuditEvent.objects.get(action="admin_login")
    assert (success.actor, success.target_id) == (operator, str(operator.pk))
    assert success.ip == "198.51.100.1"
    client.logout()
    api.post("login", {"email": operator.email, "password": "wrong"})
    assert AuditEvent.objects.filter(action="login_failed").latest("id").data["failures"] == 1


def test_a_lockout_reveals_nothing_about_which_accounts_exist(operator):
    real, ghost = Client(), Client()
    for n in range(LOCKOUT_THRESHOLD):
        admin_post_login(real, operator.email, "wrong", n)
        admin_post_login(ghost, "nobody@example.com", "wrong", n)
    real_error = form_errors(admin_post_login(real, operator.email, PASSWORD))
    ghost_error = form_errors(admin_post_login(ghost, "nobody@example.com", PASSWORD))
    assert real_error == ghost_error
    assert "Too many failed logins" in real_error[0]


def test_a_regular_users_right_password_is_refused_but_not_counted(client, user):
    for n in range(LOCKOUT_THRESHOLD + 1):
        response = admin_post_login(client, user.email, PASSWORD, n)
        assert "correct email and password" in form_errors(response)[0]
    refusals = AuditEvent.objects.filter(action="admin_login_failed")
    expected = {"identifier": user.email, "reason": "not_staff"}
    assert [e.data for e in refusals] == [expected] * (LOCKOUT_THRESHOLD + 1)
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.LOCKOUT).exists()


# --- Idle timeout and absolute limit ------------------------------------------------


def test_an_idle_admin_session_ends_and_activity_slides_it(operator):
    client = operator_login(operator)
    row = stored_session(client)
    idle = settings.ADMIN_SESSION_IDLE_SECONDS
    assert idle == 1800
    remaining = (row.expire_date - timezone.now()).total_seconds()
    assert idle - 60 < remaining <= idle

    # Activity within the resolution writes nothing: no session write per request.
    with CaptureQueriesContext(connection) as queries:
        assert logged_in(client)
    writes = [
        q["sql"] for q in queries if q["sql"].startswith("UPDATE") and "django_session" in q["sql"]
    ]
    assert writes == []

    # Activity after it slides the expiry back to the full idle timeout.
    session = client.session
    session[SEEN_AT] -= ACTIVITY_RESOLUTION_SECONDS
    session.save()
    DjangoSession.objects.filter(pk=row.pk).update(
        expire_date=timezone.now() + timedelta(seconds=90)
    )
    assert logged_in(client)
    remaining = (stored_session(client).expire_date - timezone.now()).total_seconds()
    assert idle - 60 < remaining <= idle

    # ADMIN_SESSION_IDLE_SECONDS without a request: the expiry passes.
    DjangoSession.objects.filter(pk=row.pk).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    assert not logged_in(client)


def test_an_admin_session_ends_at_the_absolute_limit_however_active(operator):
    client = operator_login(operator)
    limit = settings.ADMIN_SESSION_MAX_SECONDS
    assert limit == 12 * 3600

    session = client.session
    session[LOGIN_AT] -= limit - 60  # 11 h 59 min ago, and active throughout
    session.save()
    assert logged_in(client)

    session = client.session
    session[LOGIN_AT] -= 60
    session.save()
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert not logged_in(client)
    assert not DjangoSession.objects.filter(session_key=key).exists()  # flushed, not kept


def test_a_session_without_a_login_time_is_ended(operator):
    client = operator_login(operator)
    session = client.session
    del session[LOGIN_AT]
    session.save()
    assert not logged_in(client)


def test_api_requests_without_a_session_cookie_never_touch_the_session_table(api, user):
    tokens = api.login(user.email)
    with CaptureQueriesContext(connection) as queries:
        assert api.get("me", token=tokens["access"]).status_code == 200
    assert not [q for q in queries if "django_session" in q["sql"]]


# --- Revoke all sessions ------------------------------------------------------------


def revoke_by_admin_action(operator, api):
    admin = Client()
    admin.force_login(services.user_role_set(user=user_create(), role=User.Role.ADMIN))
    response = admin.post(
        reverse("admin:accounts_user_changelist"),
        {"action": "revoke_sessions", "_selected_action": [operator.pk]},
    )
    assert response.status_code == 302
    assert logged_in(admin)  # only the target's sessions end


def revoke_by_password_change(operator, api):
    tokens = api.login(operator.email)
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    response = api.post("me/password", body, token=tokens["access"])
    assert response.status_code == 200


def revoke_by_password_reset(operator, api):
    assert api.post("forgot-password", {"email": operator.email}).status_code == 202
    token = re.search(r"reset-password\?token=([\w-]+)", mails_to(operator.email)[-1].body)[1]
    response = api.post("reset-password", {"token": token, "new_password": NEW_PASSWORD})
    assert response.status_code == 200


def revoke_by_lock(operator, api):
    services.user_lock(user=operator)


@pytest.mark.parametrize(
    "revoke",
    [revoke_by_admin_action, revoke_by_password_change, revoke_by_password_reset, revoke_by_lock],
)
def test_revoke_all_ends_a_live_admin_session_on_its_next_request(operator, api, revoke):
    client = operator_login(operator)
    assert logged_in(client)
    revoke(operator, api)
    assert not logged_in(client)


def test_after_revoke_all_a_new_admin_login_works(operator, api):
    old = operator_login(operator)
    services.user_sessions_revoke_all(user=operator)
    assert not logged_in(old)
    assert logged_in(operator_login(operator))


def test_admin_sessions_survive_losing_redis_and_revoked_ones_stay_dead(operator):
    live, revoked = operator_login(operator), operator_login(operator)
    other = services.user_role_set(user=user_create(), role=User.Role.OPERATOR)
    survivor = operator_login(other)
    services.user_sessions_revoke_all(user=operator)
    get_redis_connection("default").flushdb()  # this test's own Redis database

    assert logged_in(survivor)
    assert not logged_in(live)
    assert not logged_in(revoked)
