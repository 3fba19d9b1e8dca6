"""A real uvicorn process (as the Procfile runs it, plus uvloop and the sans-I/O
websockets protocol) exits promptly on SIGTERM after /ws/user sockets closed just
before, and logs no traceback.

Before cryptovault.channel_layer, a consumer whose socket had just closed could keep
its channel-layer receive for ever (its cancellation was missed inside channels-redis's
BZPOPMIN loop), and uvicorn's shutdown waited on it: about 3 runs in 4 hung.
"""

import signal
import socket
import time

import pytest
from websockets.sync.client import connect

from accounts import services as account_services
from notifications.tests.ws import uvicorn_process
from orders.tests.factories import user_create

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 3
EXIT_SECONDS = 5


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_sigterm_after_sockets_closed_exits_promptly_without_traceback(round_):
    _, tokens = account_services.session_start(user=user_create())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = uvicorn_process(
        port, "--loop", "uvloop", "--ws", "websockets-sansio", merge_stderr=True
    )
    try:
        url = f"ws://127.0.0.1:{port}/ws/user?token={tokens['access']}"
        sockets = [connect(url) for _ in range(6)]
        for client in sockets:  # each socket has joined its groups once it answers
            client.send('{"type":"ping"}')
            assert client.recv(timeout=5) == '{"type":"pong"}'
        for client in sockets[:3]:
            client.close()
        time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        output, _ = process.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert took < EXIT_SECONDS, f"shutdown took {took:.1f} s"
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in output and '"level": "ERROR"' not in output, output
    assert "Shutting down" in output
    for client in sockets[3:]:
        client.close()
