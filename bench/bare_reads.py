"""The baseline for bench/reads.py: the least an ASGI app can do to serve a public market
read from Redis, no framework. ``/api/v1/prices`` as bench/bare_prices.py serves it (one
MGET, the stale flag); any other path and query in one GET of the bytes bench/reads.py
stored under ``BODY_PREFIX`` (the platform's own answer). Run by bench/reads.py."""

import os

import redis.asyncio as aioredis

from bench import bare_prices

BODY_PREFIX = "cv:bench:reads:"
_redis = None


async def app(scope, receive, send):
    global _redis
    if scope["type"] != "http":
        return
    if scope["path"] == "/api/v1/prices":
        return await bare_prices.app(scope, receive, send)
    if _redis is None:
        _redis = aioredis.Redis.from_url(
            os.environ["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2
        )
    query = scope["query_string"].decode("latin-1")
    body = await _redis.get(f"{BODY_PREFIX}{scope['path']}?{query}")
    await send(
        {
            "type": "http.response.start",
            "status": 200 if body is not None else 404,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body or b""})
