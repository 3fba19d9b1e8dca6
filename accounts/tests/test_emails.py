"""Every email the platform sends, produced through the real flows (API → outbox →
drain) and read as a mail client would: an HTML part and a plain-text part, both with
the code or link. Each HTML part is also written to var/screenshots/emails/<name>.html
for a person (and the browser test) to look at."""

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings
from django.core import mail

from accounts.tests.factories import PASSWORD, user_create
from accounts.tests.helpers import code_and_token, mails_to

pytestmark = pytest.mark.django_db

SCREENSHOTS = Path(settings.BASE_DIR) / "var/screenshots/emails"


class _Resources(HTMLParser):
    """What an HTML part would make a mail client fetch or drop."""

    def __init__(self):
        super().__init__()
        self.fetched: list[str] = []
        self.style_blocks = 0
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "style":
            self.style_blocks += 1
        if tag in ("img", "script", "link", "iframe") or attrs.get("background"):
            self.fetched.append(f"<{tag}>")
        if tag == "a":
            self.links.append(attrs.get("href", ""))


def _parts(message, name: str) -> tuple[str, str]:
    """(text, html) of ``message``, checked to be a proper multipart/alternative email."""
    [(html, mimetype)] = message.alternatives
    assert mimetype == "text/html"
    text = message.body
    assert "<table" not in text and "&amp;" not in text  # text, not markup
    assert html.lstrip().startswith("<!DOCTYPE html>")
    resources = _Resources()
    resources.feed(html)
    assert resources.fetched == []  # no remote images, scripts or sheets
    assert resources.style_blocks == 0  # inline CSS only
    assert 'style="' in html
    assert all(href.startswith(settings.APP_URL) for href in resources.links), resources.links
    raw = message.message().as_string()
    assert "multipart/alternative" in raw
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / f"{name}.html").write_text(html)
    return text, html


@pytest.fixture(autouse=True)
def _app_url(settings):
    settings.APP_URL = "https://vault.example"


def test_verification_and_welcome_emails(api):
    response = api.post("signup", {"email": "ada@example.com", "password": PASSWORD, "name": "Ada"})
    assert response.status_code == 201, response.content
    [verification] = mails_to("ada@example.com", "verification code")
    code, token = code_and_token(verification)
    link = f"https://vault.example/verify-email?token={token}"
    text, html = _parts(verification, "verification")
    assert code in verification.subject
    for part in (text, html):
        assert code in part
        assert link in part
    assert f'href="{link}"' in html

    assert api.post("verify-email", {"token": token}).status_code == 200
    [welcome] = mails_to("ada@example.com", "Welcome")
    text, html = _parts(welcome, "welcome")
    for part in (text, html):
        assert "Ada" in part
        assert f"{settings.SIGNUP_BONUS_USD} USD" in part


def test_password_reset_email(api):
    user = user_create(email="grace@example.com")
    mail.outbox.clear()
    assert api.post("forgot-password", {"email": user.email}).status_code == 202
    [message] = mails_to(user.email, "Reset")
    text, html = _parts(message, "password_reset")
    token = re.search(r"/reset-password\?token=([A-Za-z0-9_-]+)", text).group(1)
    link = f"https://vault.example/reset-password?token={token}"
    assert link in text
    assert f'href="{link}"' in html
    assert api.get(f"validate-reset-token/{token}").json() == {"valid": True}


def test_notification_email_escapes_what_it_quotes(api):
    user = user_create(email="linus@example.com")
    mail.outbox.clear()
    # The new-login notification is emailed by default; its body quotes the client's
    # User-Agent, which the HTML part must escape.
    api.login(user.email, HTTP_USER_AGENT="<b>evil</b> browser")
    [message] = mails_to(user.email, "CryptoVault: New login")
    text, html = _parts(message, "notification")
    assert "<b>evil</b> browser" in text
    assert "&lt;b&gt;evil&lt;/b&gt; browser" in html
    assert "<b>evil</b>" not in html
    for part in (text, html):
        assert "https://vault.example/notifications" in part


def test_notification_digest_email():
    """Several notification emails of one user due together go out as one digest."""
    from notifications import outbox
    from notifications.models import Notification, OutboxEmail

    user = user_create(email="bot@example.com")
    mail.outbox.clear()
    for i in range(3):
        notification = Notification.objects.create(
            user=user, kind="order_filled", title="Order filled", body=f"<i>Order {i}</i> filled."
        )
        OutboxEmail.objects.create(kind="notification", user=user, notification=notification)
    outbox.outbox_emails_drain()
    [message] = mails_to(user.email, "CryptoVault: 3 notifications")
    text, html = _parts(message, "notification_digest")
    for i in range(3):
        assert f"<i>Order {i}</i> filled." in text
        assert f"&lt;i&gt;Order {i}&lt;/i&gt; filled." in html
    for part in (text, html):
        assert "https://vault.example/notifications" in part
