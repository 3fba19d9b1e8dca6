import re
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from accounts.models import AuditEvent, PasswordResetToken, User
from accounts.tests.factories import PASSWORD, user_create
from accounts.tests.helpers import mails_to

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "Fresh-Lantern-2041"


def _reset_token(api, email: str) -> str:
    mail.outbox.clear()
    assert api.post("forgot-password", {"email": email}).status_code == 202
    [message] = mails_to(email, "Reset")
    return re.search(r"/reset-password\?token=([A-Za-z0-9_-]+)", message.body).group(1)


def test_forgot_password_answers_202_whatever_the_email(api, user):
    mail.outbox.clear()
    assert api.post("forgot-password", {"email": "nobody@example.com"}).status_code == 202
    assert mail.outbox == []
    assert api.post("forgot-password", {"email": user.email.upper()}).status_code == 202
    assert len(mails_to(user.email, "Reset")) == 1
    assert api.post("forgot-password", {"email": 7}).status_code == 400


def test_reset_password_flow_revokes_every_session_and_is_single_use(api, user):
    sessions = [api.login(user.email) for _ in range(2)]
    token = _reset_token(api, user.email)
    stored = PasswordResetToken.objects.get(user=user)
    assert stored.token_hash != token
    assert stored.expires_at - timezone.now() <= timedelta(hours=1)

    assert api.get(f"validate-reset-token/{token}").json() == {"valid": True}
    response = api.post("reset-password", {"token": token, "new_password": NEW_PASSWORD})
    assert response.status_code == 200, response.content
    for body in sessions:
        assert api.get("me", token=body["access"]).status_code == 401
    assert api.post("login", {"email": user.email, "password": PASSWORD}).status_code == 401
    api.login(user.email, NEW_PASSWORD)

    again = api.post("reset-password", {"token": token, "new_password": "Another-Pass-987"})
    assert (again.status_code, again.json()["code"]) == (400, "invalid_token")
    assert api.get(f"validate-reset-token/{token}").status_code == 400
    assert AuditEvent.objects.filter(action="password_reset", actor=user).exists()


def test_reset_token_expires_after_an_hour(api, user):
    token = _reset_token(api, user.email)
    PasswordResetToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert api.get(f"validate-reset-token/{token}").status_code == 400
    response = api.post("reset-password", {"token": token, "new_password": NEW_PASSWORD})
    assert response.status_code == 400


def test_reset_password_validates_the_new_password(api, user):
    token = _reset_token(api, user.email)
    response = api.post("reset-password", {"token": token, "new_password": "12345678"})
    assert response.status_code == 400
    assert "new_password" in response.json()
    assert api.post("reset-password", {"token": token}).status_code == 400
    assert api.get("validate-reset-token/forged").status_code == 400
    assert api.get(f"validate-reset-token/{'x' * 500}").status_code == 400


def test_password_change_keeps_this_session_and_ends_the_others(api, user):
    other = api.login(user.email)
    mine = api.login(user.email)
    response = api.post(
        "me/password",
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        token=mine["access"],
    )
    assert response.status_code == 200, response.content
    fresh = response.json()
    assert {"access", "refresh", "user"} <= set(fresh)
    assert api.get("me", token=fresh["access"]).status_code == 200
    assert api.get("me", token=other["access"]).status_code == 401
    assert api.post("token/refresh", {"refresh": fresh["refresh"]}).status_code == 200
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)
    assert AuditEvent.objects.filter(action="password_changed", actor=user).exists()


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"current_password": "Wrong-pass-321", "new_password": NEW_PASSWORD}, "current_password"),
        ({"current_password": PASSWORD, "new_password": PASSWORD}, "new_password"),
        ({"current_password": PASSWORD, "new_password": "abc"}, "new_password"),
        ({"current_password": PASSWORD}, "new_password"),
    ],
)
def test_password_change_rejects(api, user, payload, field):
    token = api.login(user.email)["access"]
    response = api.post("me/password", payload, token=token)
    assert response.status_code == 400
    assert field in response.json()
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


def test_password_change_needs_authentication(api):
    response = api.post("me/password", {"current_password": "a", "new_password": "b"})
    assert response.status_code == 401


def test_profile_update(api, user):
    token = api.login(user.email)["access"]
    response = api.patch("me", {"username": "Moon.Walker-1", "name": "Moon"}, token=token)
    assert response.status_code == 200
    assert response.json()["username"] == "Moon.Walker-1"
    assert response.json()["name"] == "Moon"
    # Email and role are not editable here.
    api.patch("me", {"email": "x@example.com", "role": "admin"}, token=token)
    user.refresh_from_db()
    assert (user.email, user.role) != ("x@example.com", "admin")


@pytest.mark.parametrize(
    "username", ["ab", "x" * 31, "has space", "émile", "semi;colon", "<script>", 42, ""]
)
def test_profile_rejects_bad_usernames(api, user, username):
    token = api.login(user.email)["access"]
    response = api.patch("me", {"username": username}, token=token)
    if username == "":
        # Blank means "no username" is not allowed to slip through as an empty name.
        assert response.status_code == 400
    else:
        assert response.status_code == 400
        assert "username" in response.json()


def test_username_is_unique_case_insensitively(api, user):
    user_create(username="Satoshi")
    token = api.login(user.email)["access"]
    response = api.patch("me", {"username": "satoshi"}, token=token)
    assert response.status_code == 400
    assert "username" in response.json()
    assert api.patch("me", {"username": "satoshi_2"}, token=token).status_code == 200
    # Keeping one's own name in another case is fine.
    assert api.patch("me", {"username": "SATOSHI_2"}, token=token).status_code == 200
    assert User.objects.get(pk=user.pk).username == "SATOSHI_2"
