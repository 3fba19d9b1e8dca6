"""The baseline for bench/reads.py: the least an ASGI app can do to serve a public market
read from Redis, no framework. ``/api/v1/prices`` as bench/bare_prices.py serves it (one
MGET, the stale flag); any other path and query in one GET of the bytes bench/reads.py
stored under ``BODY_PREFIX`` (the platform's own answer). Run by bench/reads.py.

It sends one header, Content-Type. With ``BENCH_SAME_HEADERS=1`` (``bench/reads.py
--same-headers``) it also sends the headers the platform answered with, as bench/reads.py
stored them under ``HEADERS_PREFIX`` (read once per path): the same header bytes on the
wire, and no work per request for them beyond sending them."""

import os

import orjson
import redis.asyncio as aioredis

from bench import bare_prices

BODY_PREFIX = "cv:bench:reads:"
HEADERS_PREFIX = "cv:bench:reads-headers:"
SAME_HEADERS = os.environ.get("BENCH_SAME_HEADERS") == "1"
CONTENT_TYPE = (b"content-type", b"application/json")
_redis = None
_headers: dict[str, list[tuple[bytes, bytes]]] = {}


async def _same_headers(key: str) -> list[tuple[bytes, bytes]]:
    headers = _headers.get(key)
    if headers is None:
        stored = orjson.loads(await _redis.get(HEADERS_PREFIX + key) or b"[]")
        headers = _headers[key] = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored]
    return headers


async def app(scope, receive, send):
    global _redis
    if scope["type"] != "http":
        return
    if scope["path"] == "/api/v1/prices" and not SAME_HEADERS:
        return await bare_prices.app(scope, receive, send)
    if _redis is None:
        _redis = aioredis.Redis.from_url(
            os.environ["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2
        )
    query = scope["query_string"].decode("latin-1")
    key = f"{scope['path']}?{query}"
    extra = await _same_headers(key) if SAME_HEADERS else []
    if scope["path"] == "/api/v1/prices":

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], *extra]
            await send(message)

        return await bare_prices.app(scope, receive, send_with_headers)
    body = await _redis.get(BODY_PREFIX + key)
    await send(
        {
            "type": "http.response.start",
            "status": 200 if body is not None else 404,
            "headers": [CONTENT_TYPE, *extra],
        }
    )
    await send({"type": "http.response.body", "body": body or b""})
