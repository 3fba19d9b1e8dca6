"""The pages behind the links in our emails, and the landing page, over Django's test
client with CSRF checks on (as a browser meets them)."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from accounts.models import EmailVerification, PasswordResetToken, User
from accounts.tests.factories import PASSWORD, user_create
from accounts.tests.helpers import code_and_token, mails_to
from markets.services import prices_record
from orders.models import LedgerEntry

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "Fresh-Lantern-2041"


@pytest.fixture
def browser() -> Client:
    return Client(enforce_csrf_checks=True, REMOTE_ADDR="203.0.113.20")


def _csrf(response) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.text).group(1)


def _reset_form(
    token: str, *, csrf: str | None, password: str = NEW_PASSWORD, again: str | None = None
) -> dict[str, str]:
    """The reset-password form as a browser posts it (``again`` defaults to ``password``;
    no CSRF field when ``csrf`` is None)."""
    data = {"token": token, "new_password": password, "new_password_again": again or password}
    if csrf is not None:
        data["csrfmiddlewaretoken"] = csrf
    return data


def _assert_link_refused(response) -> None:
    """The reset page's answer to an unusable link: 400, the error and no password form."""
    assert response.status_code == 400
    assert "This link is invalid or has expired." in response.text
    assert 'type="password"' not in response.text


def _signup_token(api, email="page@example.com") -> str:
    assert api.post("signup", {"email": email, "password": PASSWORD}).status_code == 201
    return code_and_token(mails_to(email, "verification code")[-1])[1]


def _reset_token(api, email: str) -> str:
    mail.outbox.clear()
    assert api.post("forgot-password", {"email": email}).status_code == 202
    text = mails_to(email, "Reset")[-1].body
    return re.search(r"/reset-password\?token=([A-Za-z0-9_-]+)", text).group(1)


def _bonus_count(user) -> int:
    return LedgerEntry.objects.filter(user=user, kind=LedgerEntry.Kind.SIGNUP_BONUS).count()


def test_verify_email_get_shows_a_styled_form_and_changes_nothing(api, browser):
    token = _signup_token(api)
    for _ in range(3):  # a mail scanner, a link preview, then the person
        response = browser.get(f"/verify-email?token={token}")
        assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert "no-store" in response["Cache-Control"]
    assert f'value="{token}"' in response.text
    # Plain or hashed (pages.<hash>.css once collectstatic has run).
    assert re.search(
        r'<link rel="stylesheet" href="/static/cryptovault/pages\.[^"]*css"', response.text
    )
    assert "style=" not in response.text and "<script" not in response.text
    user = User.objects.get(email="page@example.com")
    assert not user.is_email_verified
    assert EmailVerification.objects.get(user=user).used_at is None
    assert _bonus_count(user) == 0


def test_verify_email_post_needs_the_csrf_token(api, browser):
    token = _signup_token(api)
    response = browser.post("/verify-email", {"token": token})
    assert response.status_code == 403
    assert not User.objects.get(email="page@example.com").is_email_verified


def test_verify_email_post_verifies_through_the_service(
    api, browser, django_capture_on_commit_callbacks
):
    token = _signup_token(api)
    form = browser.get(f"/verify-email?token={token}")
    with django_capture_on_commit_callbacks(execute=True):
        response = browser.post(
            "/verify-email", {"token": token, "csrfmiddlewaretoken": _csrf(form)}
        )
    assert response.status_code == 200
    assert "Your email address is verified." in response.text
    user = User.objects.get(email="page@example.com")
    assert user.is_email_verified
    assert _bonus_count(user) == 1
    assert len(mails_to(user.email, "Welcome")) == 1  # as through the API
    api.login(user.email)


def test_verify_email_by_code_without_a_token(api, browser):
    assert (
        api.post("signup", {"email": "code@example.com", "password": PASSWORD}).status_code == 201
    )
    code, _ = code_and_token(mails_to("code@example.com", "verification code")[-1])
    form = browser.get("/verify-email")
    assert 'name="email"' in form.text and 'name="code"' in form.text
    csrf = _csrf(form)
    missing = browser.post("/verify-email", {"csrfmiddlewaretoken": csrf})
    assert missing.status_code == 400
    assert missing.text.count("This field is required.") == 2
    response = browser.post(
        "/verify-email", {"email": "code@example.com", "code": code, "csrfmiddlewaretoken": csrf}
    )
    assert response.status_code == 200, response.text
    assert User.objects.get(email="code@example.com").is_email_verified


@pytest.mark.parametrize("token", ["forged-token", "x" * 500])
def test_verify_email_invalid_token_shows_an_error(api, browser, token):
    form = browser.get(f"/verify-email?token={token}")
    response = browser.post("/verify-email", {"token": token, "csrfmiddlewaretoken": _csrf(form)})
    assert response.status_code == 400
    assert 'class="message error"' in response.text
    assert re.search(r"Invalid verification link|invalid or has expired", response.text)


def test_verify_email_expired_token_shows_an_error(api, browser):
    token = _signup_token(api)
    EmailVerification.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    form = browser.get(f"/verify-email?token={token}")
    response = browser.post("/verify-email", {"token": token, "csrfmiddlewaretoken": _csrf(form)})
    assert response.status_code == 400
    assert "This verification link has expired." in response.text
    assert not User.objects.get(email="page@example.com").is_email_verified


def test_verify_email_page_shares_the_api_rate_limit(api, browser):
    form = browser.get("/verify-email?token=nope")
    data = {"token": "nope", "csrfmiddlewaretoken": _csrf(form)}
    statuses = [browser.post("/verify-email", data).status_code for _ in range(11)]
    assert statuses == [400] * 10 + [429]
    limited = browser.post("/verify-email", data)
    assert int(limited["Retry-After"]) >= 1
    assert "Too many requests" in limited.text


def test_reset_password_get_shows_the_form_and_changes_nothing(api, browser):
    user = user_create(email="reset@example.com")
    token = _reset_token(api, user.email)
    for _ in range(3):
        response = browser.get(f"/reset-password?token={token}")
        assert response.status_code == 200
    assert 'type="password"' in response.text
    assert "no-store" in response["Cache-Control"]
    assert PasswordResetToken.objects.get(user=user).used_at is None
    assert api.get(f"validate-reset-token/{token}").json() == {"valid": True}


def test_reset_password_post_needs_the_csrf_token(api, browser):
    user = user_create(email="reset@example.com")
    token = _reset_token(api, user.email)
    data = _reset_form(token, csrf=None, password=NEW_PASSWORD)
    assert browser.post("/reset-password", data).status_code == 403
    api.login(user.email)  # the old password still works


def test_reset_password_post_resets_and_revokes_every_session(api, browser):
    user = user_create(email="reset@example.com")
    sessions = [api.login(user.email) for _ in range(2)]
    token = _reset_token(api, user.email)
    data = _reset_form(token, csrf=_csrf(browser.get(f"/reset-password?token={token}")))
    response = browser.post("/reset-password", data)
    assert response.status_code == 200, response.text
    assert "Your password has been changed." in response.text
    for body in sessions:
        assert api.get("me", token=body["access"]).status_code == 401
    assert api.post("login", {"email": user.email, "password": PASSWORD}).status_code == 401
    api.login(user.email, NEW_PASSWORD)
    # Single use: the same link now shows the error.
    _assert_link_refused(browser.post("/reset-password", data))


def test_reset_password_shows_the_validators_verdict(api, browser):
    user = user_create(email="reset@example.com")
    token = _reset_token(api, user.email)
    csrf = _csrf(browser.get(f"/reset-password?token={token}"))
    weak = browser.post("/reset-password", _reset_form(token, csrf=csrf, password="12345678"))
    assert weak.status_code == 400
    assert "This password is too common." in weak.text
    assert "This password is entirely numeric." in weak.text
    differ = browser.post("/reset-password", _reset_form(token, csrf=csrf, again="other"))
    assert differ.status_code == 400
    assert "The two passwords differ." in differ.text
    assert PasswordResetToken.objects.get(user=user).used_at is None
    api.login(user.email)


@pytest.mark.parametrize("token", ["", "forged", "x" * 500])
def test_reset_password_invalid_token_shows_an_error_without_a_form(browser, token):
    _assert_link_refused(browser.get(f"/reset-password?token={token}"))


def test_reset_password_expired_token_shows_an_error(api, browser):
    user = user_create(email="reset@example.com")
    token = _reset_token(api, user.email)
    csrf = _csrf(browser.get(f"/reset-password?token={token}"))
    PasswordResetToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    _assert_link_refused(browser.post("/reset-password", _reset_form(token, csrf=csrf)))
    api.login(user.email)


def test_landing_page_shows_the_price_source_and_its_age(browser):
    empty = browser.get("/")
    assert empty.status_code == 200
    assert "no price received yet" in empty.text
    prices_record(
        prices={"bitcoin": Decimal("65000"), "ethereum": Decimal("3000")},
        source="simulated",
        as_of=timezone.now() - timedelta(seconds=5),
    )
    response = browser.get("/")
    assert response.status_code == 200
    text = response.text
    assert "simulated" in text
    assert re.search(r"<dd>[56] s <span class=\"badge ok\">fresh</span>", text), text
    for href in ("/api/docs/", "/admin/", "/health"):
        assert f'href="{href}"' in text
    assert browser.get("/health").status_code == 200
