"""No access token reaches a log line: real handshakes and requests on a real uvicorn,
with what our JSON console handler writes and what uvicorn's loggers emit captured."""

import asyncio
import io
import logging
import secrets

import httpx
import pytest
import uvicorn
import websockets

from accounts import services as account_services
from cryptovault.asgi import application
from cryptovault.logging import UVICORN_LOGGERS, configure, redact_tokens
from cryptovault.testing import uvicorn_in_thread
from notifications.tests.factories import user_create

pytestmark = pytest.mark.django_db(transaction=True)


class _Lines(logging.Handler):
    """Every record as a handler after the logger's filters sees it, extras included."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {vars(record)}")


@pytest.fixture
def console_output():
    """What the settings' JSON console handler writes (stdout in production)."""
    console = next(h for h in logging.getLogger().handlers if h.name == "console")
    buffer = io.StringIO()
    previous = console.setStream(buffer)
    yield buffer
    console.setStream(previous)


def _ws_handshake(address: str, token: str) -> int:
    async def handshake() -> int:
        try:
            async with websockets.connect(f"ws://{address}/ws/user?token={token}") as socket:
                await socket.send('{"type":"ping"}')
                await socket.recv()
                return 101
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else 1006

    return asyncio.run(handshake())


def test_tokens_in_query_strings_never_reach_a_log_line(console_output):
    _, tokens = account_services.session_start(user=user_create())
    good = tokens["access"]
    bad = "not-a-jwt-" + secrets.token_urlsafe(24)
    uvicorn_lines = _Lines()
    # uvicorn at INFO with its access log on: the most it ever logs.
    with uvicorn_in_thread(application, ws="auto", log_level="info", access_log=True) as address:
        for name in UVICORN_LOGGERS:
            logging.getLogger(name).addHandler(uvicorn_lines)
        try:
            assert _ws_handshake(address, bad) in (403, 4401)
            assert _ws_handshake(address, good) == 101
            with httpx.Client(base_url=f"http://{address}", timeout=10) as http:
                assert http.get(f"/api/v1/nope?token={good}").status_code == 404
                # The application decodes parameter names: %74oken is a token too.
                assert http.get(f"/api/v1/nope?days=1&%74oken={good}").status_code == 404
                assert http.get(f"/api/v1/stream/user?token={bad}").status_code in (401, 404)
        finally:
            for name in UVICORN_LOGGERS:
                logging.getLogger(name).removeHandler(uvicorn_lines)

    written = console_output.getvalue()
    emitted = "\n".join(uvicorn_lines.lines)
    # The lines that carried the tokens were logged, redacted.
    assert "/api/v1/nope?token=[redacted]" in written  # django.request's repr of the request
    assert "/api/v1/stream/user?token=[redacted]" in written
    assert '"WebSocket /ws/user?token=[redacted]" [accepted]' in emitted
    assert "/api/v1/nope?days=1&%74oken=[redacted]" in emitted  # the access log
    for token in (good, bad):
        assert token not in written
        assert token not in emitted


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /ws/user?token=abc.def HTTP/1.1", "GET /ws/user?token=[redacted] HTTP/1.1"),
        (
            "<ASGIRequest: GET '/x?a=1&access_token=s3'>",
            "<ASGIRequest: GET '/x?a=1&access_token=[redacted]'>",
        ),
        ("/reset-password?TOKEN=s3&next=/", "/reset-password?TOKEN=[redacted]&next=/"),
        ("/x?%74oken=s3", "/x?%74oken=[redacted]"),
        ("/coins?days=30&search=token", "/coins?days=30&search=token"),
        ("no query here: token=", "no query here: token="),
    ],
)
def test_redact_tokens(text, expected):
    assert redact_tokens(text) == expected


@pytest.mark.parametrize("access_log", [False, True])
def test_no_access_log_survives_djangos_logging_config(access_log, settings):
    """uvicorn configures its loggers, then loads the application (Django's LOGGING);
    it writes an access line whenever ``uvicorn.access`` has a handler, its ancestors'
    included, so ``--no-access-log`` must leave it with none."""
    access = logging.getLogger("uvicorn.access")
    try:
        uvicorn.Config(application, access_log=access_log, log_config=None)
        configure(settings.LOGGING)
        assert access.hasHandlers() is access_log
    finally:
        access.propagate = True
        configure(settings.LOGGING)
