import json

from channels.testing import WebsocketCommunicator

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
