"""Reads backed by the upstream source (CoinGecko): coin details and price history,
fetched single-flight and cached in Redis (``upstream_read``), with our own records
first where they suffice. Apart from selectors because a read here may call the source
and write the cache."""

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import connections, router
from django.utils import timezone
from django_redis import get_redis_connection
from redis.exceptions import LockError
from rest_framework import status

from cryptovault.exceptions import ApplicationError
from markets.models import Coin, PricePoint
from markets.selectors import price_quotes
from markets.sources import (
    SourceError,
    SourceNotFound,
    SourceRateLimited,
    fetch_seconds_max,
    source_client,
)

logger = logging.getLogger(__name__)

# Upstream-backed reads: ``{"at": epoch fetched, "data": ...}``, kept past freshness.
DETAILS_KEY_PREFIX = "cv:markets:upstream:details:"
CHART_KEY_PREFIX = "cv:markets:upstream:chart:"


# --- upstream-backed reads -------------------------------------------------------------------
def _copy_get(redis, key: str) -> dict | None:
    raw = redis.get(key)
    return orjson.loads(raw) if raw is not None else None


def upstream_read(*, key: str, fresh_seconds: int, fetch: Callable[[], Any]) -> Any:
    """``fetch()``'s result, cached under ``key`` for ``fresh_seconds``, single-flight.

    One request at a time fetches a key (a Redis lock); the others wait up to
    ``MARKET_DATA_SINGLE_FLIGHT_WAIT`` for its result and never fetch themselves, so a
    burst on one key costs one upstream call. The copy outlives its freshness by
    ``MARKET_DATA_LAST_COPY_SECONDS`` and serves whenever a fresh one cannot be had (the
    source failed, the budget said no, a fetch is taking long). Raises ``SourceError``
    only when there is no copy at all.
    """
    redis = get_redis_connection("default")
    copy = _copy_get(redis, key)
    if copy is not None and time.time() - copy["at"] < fresh_seconds:
        return copy["data"]
    lock = redis.lock(f"{key}:lock", timeout=fetch_seconds_max())
    if lock.acquire(blocking=False):
        try:
            data = fetch()
            redis.set(
                key,
                orjson.dumps({"at": time.time(), "data": data}),
                ex=fresh_seconds + settings.MARKET_DATA_LAST_COPY_SECONDS,
            )
            return data
        except SourceError:
            if copy is None:
                raise
            logger.warning("upstream read failed, last copy served", extra={"key": key})
            return copy["data"]
        finally:
            try:
                lock.release()
            except LockError:  # expired meanwhile; nothing of ours to release
                logger.warning("upstream read outlived its lock", extra={"key": key})
    # Someone else is fetching: its release is our signal that the copy is as new as it gets.
    if lock.acquire(blocking=True, blocking_timeout=settings.MARKET_DATA_SINGLE_FLIGHT_WAIT):
        lock.release()
        copy = _copy_get(redis, key) or copy
    if copy is None:
        raise SourceError(f"{key}: another request's fetch did not answer in time")
    return copy["data"]


def coin_details(*, coin: Coin) -> dict:
    """Description, links, supply, ATH/ATL from the source (fresh for
    ``COIN_DETAILS_CACHE_SECONDS``, fetched single-flight), with our own latest quote on
    top. When the source cannot answer, the last copy serves; with none, the coin is still
    served, with empty details."""

    def fetch() -> dict:
        try:
            with source_client() as client:
                return client.coin_details(coin_id=coin.id)
        except SourceNotFound:
            return {}

    try:
        details = upstream_read(
            key=DETAILS_KEY_PREFIX + coin.id,
            fresh_seconds=settings.COIN_DETAILS_CACHE_SECONDS,
            fetch=fetch,
        )
    except SourceError as exc:
        logger.warning("coin details unavailable", extra={"coin": coin.id, "error": str(exc)})
        details = None
    details = details or {}
    market = details.get("market_data") or {}
    quote = price_quotes().get(coin.id, {})
    empty_extreme = {"price": None, "change_pct": None, "date": None}
    return {
        "id": coin.id,
        "symbol": coin.symbol,
        "name": coin.name,
        "tracked": coin.tracked,
        "price": quote.get("usd") or market.get("price"),
        "change_24h_pct": quote.get("change_24h_pct") or market.get("change_24h_pct"),
        "market_cap": quote.get("market_cap") or market.get("market_cap"),
        "volume_24h": quote.get("volume_24h") or market.get("volume_24h"),
        "high_24h": market.get("high_24h"),
        "low_24h": market.get("low_24h"),
        "last_updated": quote.get("last_updated") or market.get("last_updated"),
        "market_cap_rank": details.get("market_cap_rank"),
        "description": details.get("description", ""),
        "categories": details.get("categories", []),
        "genesis_date": details.get("genesis_date"),
        "image": details.get("image"),
        "links": details.get("links", {}),
        "supply": details.get("supply", {"circulating": None, "total": None, "max": None}),
        "ath": details.get("ath", empty_extreme),
        "atl": details.get("atl", empty_extreme),
    }


# --- history -----------------------------------------------------------------------------------
def history_step_seconds(days: int) -> int:
    """CoinGecko's market_chart granularity: 5-minutely for 1 day, hourly to 90, daily beyond."""
    return 300 if days <= 1 else 3600 if days <= 90 else 86400


def history_fetch_days(days: int) -> int:
    """The ``days`` fetched upstream for a request of ``days``: the longest span of the
    same granularity, sliced down after. Every request then maps to one of three cache
    keys per coin, so a client walking through ``days`` cannot spend the budget."""
    return 1 if days <= 1 else 90 if days <= 90 else 365


def _history_from_db(*, coin_id: str, since: datetime, step: int) -> list[list]:
    # The last price of each step-wide bucket, bucketed by PostgreSQL (a year of minutes
    # is half a million rows; only the buckets travel). Lag-tolerant: the router may
    # send it to the replica like any ORM read of PricePoint.
    with connections[router.db_for_read(PricePoint)].cursor() as cursor:
        cursor.execute(
            f"""
            SELECT DISTINCT ON (bucket) date_bin(%s::interval, ts, %s) AS bucket, ts, price
            FROM {PricePoint._meta.db_table}
            WHERE coin_id = %s AND ts >= %s
            ORDER BY bucket, ts DESC
            """,  # noqa: S608 - the table name is ours, every value is a parameter
            [f"{step} seconds", datetime(2000, 1, 1, tzinfo=UTC), coin_id, since],
        )
        return [
            [int(ts.timestamp() * 1000), format(price.normalize(), "f")]
            for _bucket, ts, price in cursor.fetchall()
        ]


def coin_history(*, coin_id: str, days: int) -> list[list]:
    """``[[epoch ms, "price"], ...]`` over the last ``days``: from our own history when it
    reaches back that far, else from the source's ``market_chart`` (cached)."""
    step = history_step_seconds(days)
    since = timezone.now() - timedelta(days=days)
    earliest = (
        PricePoint.objects.filter(coin_id=coin_id)
        .order_by("ts")
        .values_list("ts", flat=True)
        .first()
    )
    covered = earliest is not None and earliest <= since + timedelta(
        seconds=max(step, settings.PRICE_HISTORY_INTERVAL_SECONDS)
    )
    if covered:
        return _history_from_db(coin_id=coin_id, since=since, step=step)
    fetch_days = history_fetch_days(days)

    def fetch() -> list[list]:
        with source_client() as client:
            points = client.market_chart(coin_id=coin_id, days=fetch_days)
        return [[ms, format(price.normalize(), "f")] for ms, price in points]

    try:
        points = upstream_read(
            key=f"{CHART_KEY_PREFIX}{coin_id}:{fetch_days}",
            fresh_seconds=min(history_step_seconds(fetch_days), 3600),
            fetch=fetch,
        )
    except SourceError as exc:
        logger.warning("market chart unavailable", extra={"coin": coin_id, "error": str(exc)})
        if earliest is not None:  # a partial history beats none
            return _history_from_db(coin_id=coin_id, since=since, step=step)
        retry_after = exc.retry_after if isinstance(exc, SourceRateLimited) else None
        raise ApplicationError(
            "Price history is unavailable right now.",
            code="history_unavailable",
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(math.ceil(retry_after))} if retry_after else None,
        ) from exc
    if not points:
        return points
    # Relative to the series' own end (when it was fetched), as CoinGecko counts days.
    since_ms = points[-1][0] - days * 86_400_000
    return [point for point in points if point[0] >= since_ms]
