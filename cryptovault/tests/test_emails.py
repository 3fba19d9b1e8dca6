"""Email providers by configuration: a fresh interpreter configured only through the
environment (as a deploy is) sends a rendered email through django-anymail's SendGrid
backend, to a stand-in for SendGrid's HTTP API on a free local port."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cryptovault.tests.test_settings import run_python

SEND = """
import django; django.setup()
from django.conf import settings
from accounts.emails import verification_message
from accounts.models import User
print(settings.EMAIL_BACKEND)
message = verification_message(user=User(email="ada@example.com"), code="123456", token="tok")
print(message.send())
"""


@pytest.fixture
def fake_sendgrid():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(
                {"path": self.path, "auth": self.headers["Authorization"], "json": json.loads(body)}
            )
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v3/", received
    server.shutdown()
    server.server_close()


def test_an_esp_is_chosen_by_name_and_configured_from_anymail_variables(fake_sendgrid):
    api_url, received = fake_sendgrid
    result = run_python(
        ["-c", SEND],
        DEBUG="true",
        APP_URL="https://vault.example",
        EMAIL_BACKEND="sendgrid",
        ANYMAIL_SENDGRID_API_KEY="SG.test-key",
        ANYMAIL_SENDGRID_API_URL=api_url,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["anymail.backends.sendgrid.EmailBackend", "1"]
    [request] = received
    assert request["path"] == "/v3/mail/send"
    assert request["auth"] == "Bearer SG.test-key"
    parts = {part["type"]: part["value"] for part in request["json"]["content"]}
    assert set(parts) == {"text/plain", "text/html"}
    for part in parts.values():
        assert "123456" in part
        assert "https://vault.example/verify-email?token=tok" in part
