import time
from datetime import timedelta

import jwt
import pytest
from django.contrib.sessions.models import Session as DjangoSession
from django.core import mail
from django.utils import timezone
from rest_framework.test import APIRequestFactory

from accounts.audit import audit_record
from accounts.models import AuditEvent, EmailVerification, PasswordResetToken, Session, User
from accounts.permissions import IsAdmin, IsOperator
from accounts.services import (
    accounts_prune,
    user_ensure_demo,
    user_lock,
    user_role_set,
    user_unlock,
)
from accounts.tests.factories import PASSWORD, user_create
from accounts.tests.helpers import code_and_token, mails_to, session_idle_out
from orders.models import LedgerEntry


@pytest.mark.django_db
def test_audit_record_keeps_ip_user_agent_and_request_id(api, user):
    api.login(user.email, HTTP_X_REQUEST_ID="req-abc-123", HTTP_USER_AGENT="agent/9")
    event = AuditEvent.objects.get(action="login")
    assert (event.ip, event.user_agent, event.request_id) == (
        "203.0.113.10",
        "agent/9",
        "req-abc-123",
    )
    assert event.actor == user
    assert event.target_type == "accounts.session"

    request = APIRequestFactory().post("/", REMOTE_ADDR="not-an-ip")
    event = audit_record(
        action="wallet_adjusted",
        actor=user,
        target="free text",
        request=request,
        data={"amount": "5"},
    )
    assert event.ip is None
    assert event.target_repr == "free text"
    assert event.data == {"amount": "5"}


@pytest.mark.django_db
def test_roles_drive_permissions(user):
    operator = user_create()
    user_role_set(user=operator, role=User.Role.OPERATOR)
    admin = user_create()
    user_role_set(user=admin, role=User.Role.ADMIN)
    assert operator.is_staff and admin.is_staff and not user.is_staff

    def allowed(permission, who):
        request = APIRequestFactory().get("/")
        request.user = who
        return permission().has_permission(request, None)

    assert [allowed(IsOperator, u) for u in (user, operator, admin)] == [False, True, True]
    assert [allowed(IsAdmin, u) for u in (user, operator, admin)] == [False, False, True]
    superuser = User.objects.create_superuser(email="root@example.com", password=PASSWORD)
    assert allowed(IsAdmin, superuser)


@pytest.mark.django_db
def test_demo_user_is_verified_and_gets_the_bonus_once():
    user, created = user_ensure_demo(email="demo@example.com", password=PASSWORD)
    again, created_again = user_ensure_demo(email="DEMO@example.com", password="other")
    assert (created, created_again) == (True, False)
    assert again == user and user.is_email_verified
    assert user.check_password(PASSWORD)
    assert LedgerEntry.objects.filter(user=user, kind="signup_bonus").count() == 1


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


@pytest.mark.timeout(90)
def test_emails_go_through_a_real_worker(celery_worker, api_client):
    """Signup and verification over HTTP with a real Celery worker consuming Redis."""
    response = api_client.post(
        "/api/v1/auth/signup", {"email": "worker@example.com", "password": PASSWORD}, format="json"
    )
    assert response.status_code == 201
    assert _wait_for(lambda: mails_to("worker@example.com", "verification code"))
    code, _ = code_and_token(mails_to("worker@example.com", "verification code")[0])
    response = api_client.post(
        "/api/v1/auth/verify-email", {"email": "worker@example.com", "code": code}, format="json"
    )
    assert response.status_code == 200
    assert _wait_for(lambda: mails_to("worker@example.com", "Welcome"))
    assert len(mails_to("worker@example.com", "Welcome")) == 1
    mail.outbox.clear()


@pytest.mark.django_db
def test_prune_closes_idle_sessions_and_drops_dead_rows(api, user):
    live = api.login(user.email)
    idle = api.login(user.email)
    idle_sid = jwt.decode(idle["access"], options={"verify_signature": False})["sid"]
    session_idle_out(idle_sid)
    old = timezone.now() - timedelta(days=40)
    Session.objects.create(
        id="0" * 32, user=user, revoked_at=old, revoked_reason="logout", idle_expires_at=old
    )
    EmailVerification.objects.create(user=user, code_hash="x", token_hash="y", expires_at=old)
    PasswordResetToken.objects.create(user=user, token_hash="z", expires_at=old)
    DjangoSession.objects.create(session_key="e" * 32, session_data="", expire_date=old)
    soon = timezone.now() + timedelta(minutes=5)
    DjangoSession.objects.create(session_key="l" * 32, session_data="", expire_date=soon)

    assert accounts_prune() == {
        "sessions_closed": 1,
        "sessions_deleted": 1,
        "admin_sessions_deleted": 1,
        "verifications_deleted": 1,
        "resets_deleted": 1,
    }
    assert list(DjangoSession.objects.values_list("session_key", flat=True)) == ["l" * 32]
    assert Session.objects.get(pk=idle_sid).revoked_reason == "expired"
    assert api.get("me", token=live["access"]).status_code == 200
    assert api.get("me", token=idle["access"]).status_code == 401


@pytest.mark.django_db
def test_operator_lock_ends_sessions_and_unlock_restores_login(api, user):
    operator = user_create()
    token = api.login(user.email)["access"]
    user_lock(user=user, actor=operator)
    assert api.get("me", token=token).status_code == 401
    assert api.post("login", {"email": user.email, "password": PASSWORD}).status_code == 401
    user_unlock(user=user, actor=operator)
    api.login(user.email)
    actions = set(AuditEvent.objects.filter(actor=operator).values_list("action", flat=True))
    assert {"user_locked", "session_revoked", "user_unlocked"} <= actions
