"""Reads of market data: the latest prices live in Redis, coins and history in PostgreSQL.

Redis layout of the price store (written only by ``markets.services.prices_record``):

- ``PRICES_AS_OF_KEY``: epoch seconds of the latest write (``/health`` reports its age).
- ``PRICES_BODY_KEY``: the exact bytes of ``GET /api/v1/prices`` with ``"stale":false``;
  the read path flips that one flag when the prices are old, nothing else is encoded
  per request.
- ``PRICES_QUOTES_KEY``: a hash ``coin id -> JSON quote`` (price, 24h change, market cap,
  volume, per-coin ``as_of`` and ``source``) for callers that need one coin or typed values.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import orjson
from django.conf import settings
from django_redis import get_redis_connection
from rest_framework import status

from cryptovault.exceptions import ApplicationError

PRICES_AS_OF_KEY = "cv:markets:prices:as_of"
PRICES_BODY_KEY = "cv:markets:prices:body"
PRICES_QUOTES_KEY = "cv:markets:prices:quotes"

# The stale flag sits before "prices" in the stored body, so the first match is the flag.
STALE_FALSE = b'"stale":false'
STALE_TRUE = b'"stale":true'
EMPTY_PRICES_BODY = b'{"as_of":null,"source":null,"stale":true,"prices":{}}'


class PriceUnavailable(ApplicationError):
    """No usable price for a coin: none recorded (``price_unavailable``) or too old
    (``price_stale``). A dependency problem, hence 503 rather than a client error."""

    def __init__(self, message: str, *, code: str = "price_unavailable") -> None:
        super().__init__(message, code=code, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class PriceQuote:
    price: Decimal
    as_of: datetime
    source: str


def prices_age_seconds() -> float | None:
    raw = get_redis_connection("default").get(PRICES_AS_OF_KEY)
    if raw is None:
        return None
    return round(max(0.0, time.time() - float(raw)), 3)


def prices_are_stale(*, as_of_epoch: float | None, now: float | None = None) -> bool:
    if as_of_epoch is None:
        return True
    return (now if now is not None else time.time()) - as_of_epoch > settings.PRICE_STALE_SECONDS


def prices_body_render(*, body: bytes | None, as_of_raw: bytes | None) -> bytes:
    """The ``GET /prices`` bytes from what Redis holds, with the stale flag of this moment."""
    if body is None:
        return EMPTY_PRICES_BODY
    as_of_epoch = float(as_of_raw) if as_of_raw is not None else None
    if prices_are_stale(as_of_epoch=as_of_epoch):
        return body.replace(STALE_FALSE, STALE_TRUE, 1)
    return body


def prices_snapshot_bytes() -> bytes:
    body, as_of_raw = get_redis_connection("default").mget(PRICES_BODY_KEY, PRICES_AS_OF_KEY)
    return prices_body_render(body=body, as_of_raw=as_of_raw)


def prices_snapshot() -> dict:
    """``{"as_of","source","stale","prices":{coin:{"usd","change_24h_pct"}}}`` exactly as
    ``GET /api/v1/prices`` answers it (decimal strings, ISO ``as_of``)."""
    return orjson.loads(prices_snapshot_bytes())


def price_quotes() -> dict[str, dict]:
    """Every stored quote, decoded: ``{coin: {"usd", "change_24h_pct", "market_cap",
    "volume_24h", "last_updated", "as_of", "source"}}`` (numbers as strings)."""
    raw = get_redis_connection("default").hgetall(PRICES_QUOTES_KEY)
    return {key.decode(): orjson.loads(value) for key, value in raw.items()}


def price_get_fresh(*, coin_id: str) -> PriceQuote:
    """The latest price of ``coin_id`` in usd, or ``PriceUnavailable`` when there is none
    or it is older than ``PRICE_STALE_SECONDS`` (orders never fill on such a price)."""
    raw = get_redis_connection("default").hget(PRICES_QUOTES_KEY, coin_id)
    if raw is None:
        raise PriceUnavailable(f"No price available for {coin_id}.", code="price_unavailable")
    quote = orjson.loads(raw)
    if prices_are_stale(as_of_epoch=quote["as_of"]):
        raise PriceUnavailable(f"The latest price of {coin_id} is stale.", code="price_stale")
    return PriceQuote(
        price=Decimal(quote["usd"]),
        as_of=datetime.fromtimestamp(quote["as_of"], tz=UTC),
        source=quote["source"],
    )
