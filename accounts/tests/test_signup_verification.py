from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from accounts.models import AuditEvent, EmailVerification, User
from accounts.tests.factories import PASSWORD, user_create
from accounts.tests.helpers import code_and_token, mails_to
from notifications.models import Notification
from orders.models import LedgerEntry

pytestmark = pytest.mark.django_db


def _signup(api, email="new@example.com", **extra):
    response = api.post("signup", {"email": email, "password": PASSWORD, **extra})
    assert response.status_code == 201, response.content
    return response.json()


def _bonus_count(user) -> int:
    return LedgerEntry.objects.filter(user=user, kind=LedgerEntry.Kind.SIGNUP_BONUS).count()


def test_signup_creates_unverified_user_and_emails_code_and_link(api, settings):
    settings.APP_URL = "https://vault.example"
    body = _signup(api, email="New@Example.com", username="new_trader", name="New")

    assert body["email"] == "new@example.com"
    assert body["email_verified"] is False
    assert body["username"] == "new_trader"
    assert "password" not in body
    [message] = mails_to("new@example.com", "verification code")
    code, token = code_and_token(message)
    assert f"https://vault.example/verify-email?token={token}" in message.body
    # Stored hashed: neither the code nor the token is in the database.
    verification = EmailVerification.objects.get(user__email="new@example.com")
    assert code not in (verification.code_hash, verification.token_hash)
    assert token != verification.token_hash
    assert verification.expires_at - timezone.now() > timedelta(hours=23, minutes=59)
    user = User.objects.get(email="new@example.com")
    assert user.password.startswith("argon2$argon2id$")
    assert AuditEvent.objects.filter(action="signup", actor=user).exists()


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"password": PASSWORD}, "email"),
        ({"email": "a@example.com"}, "password"),
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
        ({"email": ["a@example.com"], "password": PASSWORD}, "email"),
        ({"email": "a@example.com", "password": 12345678901}, "password"),
        ({"email": "a@example.com", "password": "short"}, "password"),
        ({"email": "a@example.com", "password": "password123"}, "password"),
        ({"email": "a@example.com", "password": "a@example.com"}, "password"),
        ({"email": "a@example.com", "password": PASSWORD, "username": "ab"}, "username"),
        ({"email": "a@example.com", "password": PASSWORD, "username": "bad name!"}, "username"),
        ({"email": "a@example.com", "password": PASSWORD, "username": "x" * 31}, "username"),
        ({"email": "a@exa\x00mple.com", "password": PASSWORD}, "email"),
        ({"email": "a@example.com", "password": PASSWORD, "name": "n" * 151}, "name"),
    ],
)
def test_signup_rejects_bad_input_with_field_errors(api, payload, field):
    response = api.post("signup", payload)
    assert response.status_code == 400
    assert field in response.json()
    assert not User.objects.exists()


def test_signup_rejects_non_object_bodies(api):
    assert api.post("signup", ["x"]).status_code == 400
    response = api.client.post("/api/v1/auth/signup", "{not json", content_type="application/json")
    assert response.status_code == 400


def test_signup_email_and_username_are_unique_case_insensitively(api):
    user_create(email="taken@example.com", username="Taken")
    response = api.post("signup", {"email": "TAKEN@example.com", "password": PASSWORD})
    assert response.status_code == 400
    assert "email" in response.json()
    response = api.post(
        "signup", {"email": "other@example.com", "password": PASSWORD, "username": "taken"}
    )
    assert response.status_code == 400
    assert "username" in response.json()


def test_verify_by_code_credits_bonus_notifies_and_welcomes_exactly_once(api):
    _signup(api)
    code, token = code_and_token(mails_to("new@example.com", "verification code")[0])

    response = api.post("verify-email", {"email": "NEW@example.com", "code": code})
    assert response.status_code == 200, response.content
    assert response.json()["user"]["email_verified"] is True

    # Again, by code and by link: still 200, but nothing happens twice.
    assert api.post("verify-email", {"email": "new@example.com", "code": code}).status_code == 200
    assert api.post("verify-email", {"token": token}).status_code == 200

    user = User.objects.get(email="new@example.com")
    assert user.is_email_verified
    assert _bonus_count(user) == 1
    assert Notification.objects.filter(user=user, kind="email_verified").count() == 1
    assert len(mails_to(user.email, "Welcome")) == 1
    assert AuditEvent.objects.filter(action="email_verified", actor=user).count() == 1


def test_verify_by_link_token(api):
    _signup(api)
    _, token = code_and_token(mails_to("new@example.com", "verification code")[0])
    response = api.post("verify-email", {"token": token})
    assert response.status_code == 200
    assert User.objects.get(email="new@example.com").is_email_verified


def test_verify_rejects_wrong_code_unknown_email_and_bad_token(api):
    _signup(api)
    code, _ = code_and_token(mails_to("new@example.com", "verification code")[0])
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    response = api.post("verify-email", {"email": "new@example.com", "code": wrong})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_code"
    response = api.post("verify-email", {"email": "nobody@example.com", "code": code})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_code"
    assert api.post("verify-email", {"token": "forged"}).json()["code"] == "invalid_token"
    assert "code" in api.post("verify-email", {"email": "new@example.com"}).json()
    assert "code" in api.post("verify-email", {"email": "new@example.com", "code": "12ab56"}).json()
    assert not User.objects.get(email="new@example.com").is_email_verified


def test_five_wrong_codes_require_a_resend(api):
    _signup(api)
    code, _ = code_and_token(mails_to("new@example.com", "verification code")[0])
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for _ in range(5):
        response = api.post("verify-email", {"email": "new@example.com", "code": wrong})
        assert response.json()["code"] == "invalid_code"
    response = api.post("verify-email", {"email": "new@example.com", "code": code})
    assert response.status_code == 400
    assert response.json()["code"] == "too_many_attempts"

    mail.outbox.clear()
    assert api.post("resend-verification", {"email": "new@example.com"}).status_code == 202
    new_code, _ = code_and_token(mails_to("new@example.com", "verification code")[0])
    response = api.post("verify-email", {"email": "new@example.com", "code": new_code})
    assert response.status_code == 200


def test_code_and_link_expire_after_24_hours(api):
    _signup(api)
    code, token = code_and_token(mails_to("new@example.com", "verification code")[0])
    EmailVerification.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = api.post("verify-email", {"email": "new@example.com", "code": code})
    assert (response.status_code, response.json()["code"]) == (400, "expired")
    assert api.post("verify-email", {"token": token}).json()["code"] == "expired"


def test_resend_answers_202_whatever_the_email(api):
    user_create(email="done@example.com")
    _signup(api, email="pending@example.com")
    mail.outbox.clear()
    for email in ("nobody@example.com", "done@example.com", "pending@example.com"):
        response = api.post("resend-verification", {"email": email})
        assert response.status_code == 202
    assert [m.to for m in mail.outbox] == [["pending@example.com"]]
    assert api.post("resend-verification", {"email": "bad"}, ip="198.51.100.7").status_code == 400


def test_resend_invalidates_the_previous_code(api):
    _signup(api)
    old_code, old_token = code_and_token(mails_to("new@example.com", "verification code")[0])
    mail.outbox.clear()
    api.post("resend-verification", {"email": "new@example.com"})
    new_code, _ = code_and_token(mails_to("new@example.com", "verification code")[0])
    if old_code != new_code:
        response = api.post("verify-email", {"email": "new@example.com", "code": old_code})
        assert response.status_code == 400
    assert api.post("verify-email", {"token": old_token}).status_code == 400
