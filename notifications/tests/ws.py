import json
import os
import socket
import subprocess
import sys
import time

from channels.testing import WebsocketCommunicator
from django.conf import settings

from cryptovault.asgi import application

# The coins the price-stream tests track (the ``tracked`` fixture in conftest.py).
COINS = ["bitcoin", "ethereum", "solana"]

# Long enough for a Redis round trip on a loaded CI box, short enough to fail fast.
RECEIVE_TIMEOUT = 5


async def ws_connect(path: str, *, headers=None, subprotocols=None):
    communicator = WebsocketCommunicator(
        application, path, headers=headers or [], subprotocols=subprotocols
    )
    connected, subprotocol = await communicator.connect(timeout=RECEIVE_TIMEOUT)
    return communicator, connected, subprotocol


async def ws_receive(communicator) -> dict:
    return json.loads(await communicator.receive_from(timeout=RECEIVE_TIMEOUT))


async def ws_receive_type(communicator, kind: str) -> dict:
    """The next frame of this type, skipping others (e.g. ticks from other pushes)."""
    while True:
        frame = await ws_receive(communicator)
        if frame["type"] == kind:
            return frame


async def ws_closed_with(communicator) -> int | None:
    output = await communicator.receive_output(timeout=RECEIVE_TIMEOUT)
    assert output["type"] == "websocket.close", output
    return output.get("code")


def uvicorn_process(port: int, *options: str, merge_stderr: bool = False) -> subprocess.Popen:
    """uvicorn as the Procfile runs it, in a process of its own (signals reach its main
    thread), on the test database, logging at INFO; returns once it listens."""
    database = settings.DATABASES["default"]
    process = subprocess.Popen(  # noqa: S603 - fixed interpreter and arguments
        [sys.executable, "-m", "uvicorn", "cryptovault.asgi:application", "--port", str(port),
         "--no-access-log", *options],
        env={
            **os.environ,
            "DEBUG": "true",
            "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:"
            f"{database['PORT']}/{database['NAME']}",
            "LOG_LEVEL": "INFO",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError("uvicorn did not start")
        time.sleep(0.1)
