"""The exchange simulator: an ASGI app speaking the CoinGecko v3 subset we use."""

import orjson


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/api/v3/ping":
        status, body = 200, {"gecko_says": "(V3) To the Moon!"}
    else:
        status, body = 404, {"error": "Not found"}
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": orjson.dumps(body)})
