"""The pages people open, in a real headless Chromium against a real uvicorn: the admin
(login, index), the operations dashboard and the API docs. Every stylesheet and script
comes from this origin and answers 200, the docs list the operations, and nothing
violates the Content-Security-Policy. Screenshots land in var/screenshots/."""

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from accounts.tests.factories import PASSWORD, user_create
from cryptovault.asgi import application
from cryptovault.testing import chromium_page, chromium_path, uvicorn_in_thread

CHROMIUM = chromium_path()
SCREENSHOTS = Path(settings.BASE_DIR) / "var/screenshots"

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium on this machine: scripts/browser.sh (run by `make test`) "
        "installs Debian's, or set CHROMIUM to a Chromium binary",
    ),
    pytest.mark.django_db(transaction=True),
]


# ReDoc's bundle always shows Redocly's logo from their CDN (no option turns it off). The
# policy blocks it, as it blocks any third-party origin; that one refusal is expected.
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def _check_page(page, origin: str, name: str, *, blocked: tuple[str, ...] = ()) -> None:
    page.pump(0.3)  # what the page's scripts fetch right after the load event
    page.screenshot(SCREENSHOTS / f"{name}.png")
    assets = [r for r in page.requests.values() if r["type"] in ("Stylesheet", "Script")]
    assert assets, f"{name}: no stylesheet or script loaded"
    for asset in assets:
        # A blob: URL (ReDoc's search worker) belongs to the origin that created it and
        # has no HTTP status; it only must not have failed.
        is_blob = asset["url"].startswith("blob:")
        parts = urlsplit(asset["url"].removeprefix("blob:"))
        assert f"{parts.scheme}://{parts.netloc}" == origin, f"{name}: {asset['url']}"
        expected = None if is_blob else 200
        assert asset["status"] == expected, f"{name}: {asset['url']} -> {asset['status']}"
    violations = [
        line
        for line in page.console
        if "Content Security Policy" in line and not any(url in line for url in blocked)
    ]
    assert violations == [], f"{name}: {violations}"


def test_admin_dashboard_and_docs_render_same_origin_without_csp_violations():
    staff = user_create(email="ops@example.com", is_staff=True, is_superuser=True)
    with uvicorn_in_thread(application) as address, chromium_page(CHROMIUM) as page:
        origin = f"http://{address}"

        page.goto(f"{origin}/admin/login/")
        assert page.evaluate("document.querySelector('#login-form') !== null")
        # Django's admin stylesheet applied: the header bar has its colour, not none.
        assert page.evaluate("getComputedStyle(document.querySelector('#header')).display")
        assert page.evaluate(
            "getComputedStyle(document.body).fontFamily.toLowerCase().includes('segoe')"
            " || getComputedStyle(document.body).fontFamily.includes('system-ui')"
        )
        _check_page(page, origin, "admin-login")

        page.submit_form("#login-form", {"username": staff.email, "password": PASSWORD})
        assert page.evaluate("location.pathname") == "/admin/"
        assert page.evaluate("document.querySelector('#user-tools') !== null")
        _check_page(page, origin, "admin-index")

        page.goto(f"{origin}/admin/dashboard/")
        assert page.evaluate("document.querySelector('#price-source') !== null")
        assert (
            page.evaluate("getComputedStyle(document.querySelector('table.cv-wide')).width")
            != "auto"
        )
        _check_page(page, origin, "admin-dashboard")

        page.goto(f"{origin}/api/docs/")
        operations = page.wait_for("document.querySelectorAll('.opblock').length")
        assert operations > 20
        assert page.evaluate("document.querySelector('.btn.authorize') !== null")
        _check_page(page, origin, "api-docs")

        page.goto(f"{origin}/api/redoc/")
        page.wait_for("document.querySelectorAll('[data-section-id^=\"operation/\"]').length")
        _check_page(page, origin, "api-redoc", blocked=(REDOCLY_LOGO,))


def test_emails_render_in_the_browser(tmp_path):
    """The HTML part of each account email as a browser shows it (screenshots for a person
    to look at): it loads nothing from anywhere and shows the code and the button."""
    from accounts.emails import password_reset_message, verification_message, welcome_message

    user = user_create(email="ada@example.com", name="Ada")
    messages = {  # name: (message, the link its button must carry)
        "email-verification": (
            verification_message(user=user, code="482913", token="t0ken"),
            "/verify-email?token=t0ken",
        ),
        "email-welcome": (welcome_message(user=user), settings.APP_URL),
        "email-password-reset": (
            password_reset_message(user=user, token="t0ken"),
            "/reset-password?token=t0ken",
        ),
    }
    with chromium_page(CHROMIUM) as page:
        for name, (message, link) in messages.items():
            [(html, _)] = message.alternatives
            file = tmp_path / f"{name}.html"
            file.write_text(html)
            page.goto(file.as_uri())
            page.screenshot(SCREENSHOTS / f"{name}.png")
            assert page.evaluate(f"document.querySelector('a[href*=\"{link}\"]') !== null"), name
            assert [r["url"] for r in page.requests.values() if r["type"] != "Document"] == []
    assert "482913" in messages["email-verification"][0].body
