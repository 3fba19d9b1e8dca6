"""The baseline for bench/prices.py: the least an ASGI app can do to serve GET /prices —
one Redis MGET (same client and timeouts as the platform) and the same stale-flag flip,
no framework. Run by bench/prices.py."""

import os
import time

import redis.asyncio as aioredis

BODY_KEY = b"cv:markets:prices:body"
AS_OF_KEY = b"cv:markets:prices:as_of"
STALE_SECONDS = float(os.environ.get("PRICE_STALE_SECONDS", "60"))
_redis = None


async def app(scope, receive, send):
    global _redis
    if scope["type"] != "http":
        return
    if _redis is None:
        _redis = aioredis.Redis.from_url(
            os.environ["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2
        )
    body, as_of = await _redis.mget(BODY_KEY, AS_OF_KEY)
    if as_of is None or time.time() - float(as_of) > STALE_SECONDS:
        body = body.replace(b'"stale":false', b'"stale":true', 1)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
