"""The market data source: a CoinGecko v3 client (or anything speaking its API, such as
the built-in simulator), and the in-process simulated fallback.

Every payload is validated strictly before anything is returned: a field of the wrong
type, a non-finite or non-positive price, or invalid JSON raises ``SourceError`` so
callers keep their last good data instead of caching garbage.

Rate limits: CoinGecko counts every call (errors too). Every attempt first takes a slot
of the shared per-minute budget (``budget_spend``, a sliding 60 s window in Redis,
``MARKET_DATA_BUDGET_PER_MINUTE``): the price poll may use all of it, every other kind
of call (details, history, tickers) only what is left after
``MARKET_DATA_POLL_RESERVED_PER_MINUTE``, so anonymous traffic can never starve the
poll. A 429 puts the whole platform in a shared back-off (a Redis key) until the reset
its ``x-ratelimit-*`` / ``Retry-After`` headers announce, and other callers one poll
period longer, so the poll is first out when it ends; calls made meanwhile fail fast
with ``SourceRateLimited`` without spending budget. Server errors and timeouts are
retried with exponential back-off while a retry can still finish within
``MARKET_DATA_DEADLINE`` seconds of the first attempt.
"""

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Literal, overload
from urllib.parse import quote

import httpx
from django.conf import settings
from django_redis import get_redis_connection

from markets.simulator.model import MarketModel

logger = logging.getLogger(__name__)

BACKOFF_UNTIL_KEY = "cv:markets:source:backoff_until"
BUDGET_KEY = "cv:markets:source:budget"  # sorted set: one member per call, scored by time
BUDGET_SHARED_KEY = "cv:markets:source:budget:shared"  # the same, non-poll calls only
BUDGET_CALLS_KEY = "cv:markets:source:calls"  # hash: kind -> calls, refused:kind -> refusals
BUDGET_WINDOW_SECONDS = 60
# Kinds of upstream call. Only POLL may spend the reserved share of the budget.
POLL, DETAILS, HISTORY, TICKERS, PING = "poll", "details", "history", "tickers", "ping"
DEFAULT_RATE_LIMIT_WAIT = 60.0  # CoinGecko's window is one minute
MAX_RATE_LIMIT_WAIT = 300.0
_STABLE_TARGETS = ("USD", "USDT", "USDC")


class SourceError(Exception):
    """The source failed or answered something we cannot trust."""


class SourceRateLimited(SourceError):
    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SourceBudgetExhausted(SourceRateLimited):
    """Our own budget refused the call: it never left, and costs nothing upstream."""


class SourceNotFound(SourceError):
    """The source does not know this coin (its 404)."""


@dataclass(frozen=True, slots=True)
class MarketQuote:
    id: str
    symbol: str
    name: str
    price: Decimal
    change_24h_pct: Decimal | None
    market_cap: Decimal | None
    volume_24h: Decimal | None
    last_updated: datetime | None


@dataclass(frozen=True, slots=True)
class VenueQuote:
    exchange: str
    name: str
    price: Decimal


# --- strict decoding ------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def decode_json(content: bytes) -> Any:
    """JSON with every number as a ``Decimal`` (exact prices) and NaN/Infinity refused."""
    try:
        return json.loads(
            content, parse_float=Decimal, parse_int=Decimal, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:
        raise SourceError(f"invalid JSON from source: {exc}") from exc


def _number(value: Any, what: str, *, required: bool = False, positive: bool = False):
    if value is None:
        if required:
            raise SourceError(f"{what} is missing")
        return None
    if not isinstance(value, Decimal) or not value.is_finite():
        raise SourceError(f"{what} is not a number: {value!r}")
    if positive and value <= 0:
        raise SourceError(f"{what} is not positive: {value}")
    return value


@overload
def _text(
    value: Any, what: str, *, required: Literal[True] = ..., max_length: int = ...
) -> str: ...
@overload
def _text(value: Any, what: str, *, required: bool, max_length: int = ...) -> str | None: ...
def _text(value: Any, what: str, *, required: bool = True, max_length: int = 200) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value) or len(value) > max_length:
        raise SourceError(f"{what} is not a valid string: {value!r:.80}")
    return value


def _object(value: Any, what: str, *, required: bool = True) -> dict:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise SourceError(f"{what} is not an object")
    return value


def _timestamp(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SourceError(f"{what} is not a timestamp: {value!r:.80}")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SourceError(f"{what} is not a timestamp: {value!r:.80}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _plain(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


# --- rate limits --------------------------------------------------------------------------
def rate_limit_wait(headers: httpx.Headers, *, now: float | None = None) -> float:
    """Seconds to wait after a 429, from ``Retry-After`` or ``x-ratelimit-reset`` (epoch
    seconds, seconds from now, or a date), clamped to a sane range."""
    now = now if now is not None else time.time()
    wait = None
    retry_after = headers.get("retry-after")
    if retry_after:
        try:
            wait = float(retry_after)
        except ValueError:
            try:
                wait = parsedate_to_datetime(retry_after).timestamp() - now
            except (TypeError, ValueError):
                wait = None
    reset = headers.get("x-ratelimit-reset")
    if wait is None and reset:
        try:
            number = float(reset)
            wait = number - now if number > 1e9 else number
        except ValueError:
            try:
                wait = datetime.fromisoformat(reset.replace(" +0000", "+00:00")).timestamp() - now
            except ValueError:
                wait = None
    if wait is None or not math.isfinite(wait):
        wait = DEFAULT_RATE_LIMIT_WAIT
    return min(max(wait, 1.0), MAX_RATE_LIMIT_WAIT)


def _poll_priority_seconds(kind: str) -> float:
    # After a back-off the poll goes out first; everyone else waits one poll period more.
    return 0.0 if kind == POLL else float(settings.PRICE_POLL_SECONDS)


def rate_limited_for(kind: str = POLL) -> float:
    """Seconds left in the shared back-off for a call of ``kind`` (0 when it may go out)."""
    raw = get_redis_connection("default").get(BACKOFF_UNTIL_KEY)
    if not raw:
        return 0.0
    return max(0.0, float(raw) + _poll_priority_seconds(kind) - time.time())


def _rate_limit_start(wait: float) -> None:
    get_redis_connection("default").set(
        BACKOFF_UNTIL_KEY,
        repr(time.time() + wait),
        ex=math.ceil(wait + _poll_priority_seconds(DETAILS)),
    )


def fetch_seconds_max() -> int:
    """The longest one ``CoinGeckoClient.get`` can take: its deadline plus one attempt that
    started just before it (connect and read timeouts), with slack for Redis and
    PostgreSQL around it. Locks held across a fetch expire after this."""
    attempt = settings.MARKET_DATA_CONNECT_TIMEOUT + settings.MARKET_DATA_READ_TIMEOUT
    return int(settings.MARKET_DATA_DEADLINE + attempt) + 10


# Atomic check-and-spend over a sliding window, on Redis's clock (one clock for every
# host). KEYS: all calls, shared calls, counters. ARGV: limit, shared limit, window,
# kind, is_poll. Returns 0 when spent, else the seconds until a slot frees up.
_BUDGET_SCRIPT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', t - window)
local used = redis.call('ZCARD', KEYS[1])
local shared = redis.call('ZCARD', KEYS[2])
local poll = ARGV[5] == '1'
local full = KEYS[1]
if used < tonumber(ARGV[1]) and (poll or shared < tonumber(ARGV[2])) then
  local member = now[1] .. '.' .. now[2] .. '.' .. redis.call('HINCRBY', KEYS[3], 'seq', 1)
  redis.call('ZADD', KEYS[1], t, member)
  redis.call('EXPIRE', KEYS[1], window + 1)
  if not poll then
    redis.call('ZADD', KEYS[2], t, member)
    redis.call('EXPIRE', KEYS[2], window + 1)
  end
  redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
  return '0'
end
if used < tonumber(ARGV[1]) then full = KEYS[2] end
redis.call('HINCRBY', KEYS[3], 'refused:' .. ARGV[4], 1)
local oldest = redis.call('ZRANGE', full, 0, 0, 'WITHSCORES')
if oldest[2] == nil then return tostring(window) end
return tostring(tonumber(oldest[2]) + window - t)
"""


def budget_shared_cap() -> int:
    """Calls per minute that callers other than the price poll may make."""
    return max(
        0, settings.MARKET_DATA_BUDGET_PER_MINUTE - settings.MARKET_DATA_POLL_RESERVED_PER_MINUTE
    )


def budget_spend(kind: str) -> None:
    """Take one call of ``kind`` from the per-minute budget, or raise
    ``SourceBudgetExhausted`` with the seconds until a slot frees up."""
    redis = get_redis_connection("default")
    wait = float(
        redis.register_script(_BUDGET_SCRIPT)(
            keys=[BUDGET_KEY, BUDGET_SHARED_KEY, BUDGET_CALLS_KEY],
            args=[
                settings.MARKET_DATA_BUDGET_PER_MINUTE,
                budget_shared_cap(),
                BUDGET_WINDOW_SECONDS,
                kind,
                "1" if kind == POLL else "0",
            ],
        )
    )
    if wait > 0:
        raise SourceBudgetExhausted(
            f"{kind}: market data budget spent for {wait:.0f}s", retry_after=wait
        )


def budget_usage() -> dict[str, int]:
    """Calls made and refused by kind since Redis was last emptied, and the calls in the
    current window (``window``, ``window_shared``): for metrics and the bench."""
    redis = get_redis_connection("default")
    counts = {k.decode(): int(v) for k, v in redis.hgetall(BUDGET_CALLS_KEY).items()}
    counts.pop("seq", None)
    counts["window"] = redis.zcard(BUDGET_KEY)
    counts["window_shared"] = redis.zcard(BUDGET_SHARED_KEY)
    return counts


# --- the client ------------------------------------------------------------------------------
class CoinGeckoClient:
    """Configured from settings: ``MARKET_DATA_URL``, the key for ``COINGECKO_PLAN``,
    timeouts, retries and deadline."""

    def __init__(self) -> None:
        headers = {"accept": "application/json", "user-agent": "CryptoVault/1.0"}
        if settings.COINGECKO_API_KEY:
            pro = settings.COINGECKO_PLAN.lower() == "pro"
            headers["x-cg-pro-api-key" if pro else "x-cg-demo-api-key"] = settings.COINGECKO_API_KEY
        self.retries = settings.MARKET_DATA_RETRIES
        self.backoff = settings.MARKET_DATA_RETRY_BACKOFF
        self.read_timeout = settings.MARKET_DATA_READ_TIMEOUT
        self.deadline = settings.MARKET_DATA_DEADLINE
        self._http = httpx.Client(
            base_url=settings.MARKET_DATA_URL.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(
                settings.MARKET_DATA_READ_TIMEOUT,
                connect=settings.MARKET_DATA_CONNECT_TIMEOUT,
            ),
            follow_redirects=False,
        )

    def __enter__(self) -> "CoinGeckoClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, params: dict[str, str] | None = None, *, kind: str) -> Any:
        """GET ``path`` and decode it; retries 5xx and timeouts, honours rate limits. Each
        attempt spends one call of ``kind`` from the budget (CoinGecko counts retries)."""
        waiting = rate_limited_for(kind)
        if waiting:
            raise SourceRateLimited(f"rate limited for {waiting:.0f}s more", retry_after=waiting)
        started = time.monotonic()
        attempt = 0
        while True:
            budget_spend(kind)
            try:
                response = self._http.get(path, params=params)
            except httpx.TransportError as exc:  # timeouts, refused connections, resets
                error: SourceError = SourceError(f"{path}: {type(exc).__name__}: {exc}")
            else:
                if response.status_code == 429:
                    wait = rate_limit_wait(response.headers)
                    _rate_limit_start(wait)
                    logger.warning("market data rate limited", extra={"wait_seconds": wait})
                    raise SourceRateLimited(f"{path}: 429", retry_after=wait)
                if response.status_code == 404:
                    raise SourceNotFound(f"{path}: not found")
                if response.status_code < 400:
                    if response.headers.get("x-ratelimit-remaining") == "0":
                        # Budget spent: stop before the source has to answer 429.
                        _rate_limit_start(rate_limit_wait(response.headers))
                    return decode_json(response.content)
                error = SourceError(f"{path}: HTTP {response.status_code}")
                if response.status_code < 500:
                    raise error
            pause = self.backoff * 2**attempt
            # A retry that could not finish before the deadline would only hold a worker
            # slot (orders share the worker); the next scheduled run is the retry then.
            worst_next = time.monotonic() - started + pause + self.read_timeout
            if attempt >= self.retries or worst_next > self.deadline:
                raise error
            time.sleep(pause)
            attempt += 1

    # --- endpoints ------------------------------------------------------------------------
    def ping(self) -> bool:
        return isinstance(self.get("ping", kind=PING), dict)

    def coins_markets(self, *, ids: list[str]) -> list[MarketQuote]:
        """Latest market data for ``ids`` (one call per 250 coins, CoinGecko's page cap)."""
        quotes: list[MarketQuote] = []
        for start in range(0, len(ids), 250):
            chunk = ids[start : start + 250]
            payload = self.get(
                "coins/markets",
                {"vs_currency": "usd", "ids": ",".join(chunk), "per_page": str(len(chunk))},
                kind=POLL,
            )
            quotes.extend(parse_coins_markets(payload, wanted=set(chunk)))
        return quotes

    def coin_details(self, *, coin_id: str) -> dict:
        payload = self.get(
            f"coins/{quote(coin_id, safe='')}",
            {
                "localization": "false",
                "tickers": "false",
                "community_data": "false",
                "developer_data": "false",
            },
            kind=DETAILS,
        )
        return parse_coin_details(payload, coin_id=coin_id)

    def market_chart(self, *, coin_id: str, days: int) -> list[tuple[int, Decimal]]:
        payload = self.get(
            f"coins/{quote(coin_id, safe='')}/market_chart",
            {"vs_currency": "usd", "days": str(days)},
            kind=HISTORY,
        )
        return parse_market_chart(payload)

    def tickers(self, *, coin_id: str) -> list[VenueQuote]:
        return parse_tickers(self.get(f"coins/{quote(coin_id, safe='')}/tickers", kind=TICKERS))


# --- payload validation (CoinGecko field names) ---------------------------------------------
def parse_coins_markets(payload: Any, *, wanted: set[str]) -> list[MarketQuote]:
    if not isinstance(payload, list):
        raise SourceError("coins/markets: expected a JSON array")
    quotes = []
    for row in payload:
        row = _object(row, "coins/markets item")
        coin_id = _text(row.get("id"), "id")
        if coin_id not in wanted:
            continue
        price = _number(row.get("current_price"), f"{coin_id}.current_price", positive=True)
        if price is None:  # listed but not trading: no price to record
            continue
        quotes.append(
            MarketQuote(
                id=coin_id,
                symbol=_text(row.get("symbol"), f"{coin_id}.symbol", max_length=32),
                name=_text(row.get("name"), f"{coin_id}.name"),
                price=price,
                change_24h_pct=_number(
                    row.get("price_change_percentage_24h"), f"{coin_id}.price_change_24h"
                ),
                market_cap=_number(row.get("market_cap"), f"{coin_id}.market_cap"),
                volume_24h=_number(row.get("total_volume"), f"{coin_id}.total_volume"),
                last_updated=_timestamp(row.get("last_updated"), f"{coin_id}.last_updated"),
            )
        )
    return quotes


def _usd(block: dict, key: str) -> Decimal | None:
    value = _object(block.get(key), key, required=False).get("usd")
    return _number(value, f"market_data.{key}.usd")


def parse_coin_details(payload: Any, *, coin_id: str) -> dict:
    """The details we serve for ``GET coins/<id>``, as JSON-ready values (decimal strings)."""
    payload = _object(payload, f"coins/{coin_id}")
    if payload.get("id") != coin_id:
        raise SourceError(f"coins/{coin_id}: answered for {payload.get('id')!r:.40}")
    description = _object(payload.get("description"), "description", required=False)
    links = _object(payload.get("links"), "links", required=False)
    image = _object(payload.get("image"), "image", required=False)
    market = _object(payload.get("market_data"), "market_data", required=False)
    homepage = [u for u in links.get("homepage") or [] if isinstance(u, str) and u]
    explorers = [u for u in links.get("blockchain_site") or [] if isinstance(u, str) and u]
    repos = _object(links.get("repos_url"), "repos_url", required=False).get("github") or []
    ath_date = _object(market.get("ath_date"), "ath_date", required=False).get("usd")
    atl_date = _object(market.get("atl_date"), "atl_date", required=False).get("usd")
    categories = [c for c in payload.get("categories") or [] if isinstance(c, str) and c]
    return {
        "id": coin_id,
        "symbol": _text(payload.get("symbol"), "symbol", max_length=32),
        "name": _text(payload.get("name"), "name"),
        "description": _text(
            description.get("en"), "description", required=False, max_length=100_000
        )
        or "",
        "categories": categories,
        "genesis_date": _text(payload.get("genesis_date"), "genesis_date", required=False),
        "image": _text(image.get("large"), "image", required=False, max_length=2000),
        "links": {
            "homepage": homepage,
            "blockchain_site": explorers,
            "subreddit_url": _text(
                links.get("subreddit_url"), "subreddit", required=False, max_length=2000
            )
            or None,
            "repos": [u for u in repos if isinstance(u, str) and u],
        },
        "market_cap_rank": _plain(_number(payload.get("market_cap_rank"), "market_cap_rank")),
        "market_data": {
            "price": _plain(_usd(market, "current_price")),
            "market_cap": _plain(_usd(market, "market_cap")),
            "volume_24h": _plain(_usd(market, "total_volume")),
            "high_24h": _plain(_usd(market, "high_24h")),
            "low_24h": _plain(_usd(market, "low_24h")),
            "change_24h_pct": _plain(
                _number(market.get("price_change_percentage_24h"), "price_change_24h")
            ),
            "last_updated": _text(market.get("last_updated"), "last_updated", required=False),
        },
        "supply": {
            "circulating": _plain(_number(market.get("circulating_supply"), "circulating")),
            "total": _plain(_number(market.get("total_supply"), "total_supply")),
            "max": _plain(_number(market.get("max_supply"), "max_supply")),
        },
        "ath": {
            "price": _plain(_usd(market, "ath")),
            "change_pct": _plain(_usd(market, "ath_change_percentage")),
            "date": _text(ath_date, "ath_date", required=False),
        },
        "atl": {
            "price": _plain(_usd(market, "atl")),
            "change_pct": _plain(_usd(market, "atl_change_percentage")),
            "date": _text(atl_date, "atl_date", required=False),
        },
    }


def parse_market_chart(payload: Any) -> list[tuple[int, Decimal]]:
    payload = _object(payload, "market_chart")
    points = payload.get("prices")
    if not isinstance(points, list):
        raise SourceError("market_chart: prices is not an array")
    parsed = []
    for point in points:
        if not isinstance(point, list) or len(point) != 2:
            raise SourceError("market_chart: a point is not [ms, price]")
        epoch_ms = _number(point[0], "market_chart time", required=True, positive=True)
        price = _number(point[1], "market_chart price", required=True, positive=True)
        parsed.append((int(epoch_ms), price))
    return parsed


def parse_tickers(payload: Any) -> list[VenueQuote]:
    """One usd-converted quote per venue (its first stable-quoted, non-anomalous ticker)."""
    payload = _object(payload, "tickers")
    tickers = payload.get("tickers")
    if not isinstance(tickers, list):
        raise SourceError("tickers: tickers is not an array")
    venues: dict[str, VenueQuote] = {}
    for ticker in tickers:
        ticker = _object(ticker, "ticker")
        market = _object(ticker.get("market"), "ticker.market")
        exchange = _text(market.get("identifier"), "market.identifier", max_length=100)
        name = _text(market.get("name"), "market.name")
        converted = _object(ticker.get("converted_last"), "converted_last")
        price = _number(converted.get("usd"), f"{exchange}.converted_last.usd", positive=True)
        target = ticker.get("target")
        if (
            price is None
            or ticker.get("is_anomaly") is True
            or ticker.get("is_stale") is True
            or not isinstance(target, str)
            or target.upper() not in _STABLE_TARGETS
            or exchange in venues
        ):
            continue
        venues[exchange] = VenueQuote(exchange=exchange, name=name, price=price)
    return list(venues.values())


def source_client() -> CoinGeckoClient:
    return CoinGeckoClient()


# --- the simulated fallback ------------------------------------------------------------------
def simulated_quotes(
    *, coins: dict[str, tuple[str, str]], last: dict[str, dict], last_as_of: float | None
) -> list[MarketQuote]:
    """Quotes from the simulator's model, in-process, for ``MARKET_DATA_FALLBACK=simulated``.

    ``coins`` maps id -> (symbol, name); ``last`` holds the last recorded quotes (as in
    ``price_quotes()``) and ``last_as_of`` their epoch. Each call walks one step from
    those, over the time elapsed since: no state lives in the process, so every worker
    process continues the same series instead of each walking its own.
    """
    now = time.time()
    model = MarketModel(seed=time.time_ns(), now=last_as_of if last_as_of else now - 1)
    for coin_id, recorded in last.items():
        if coin_id in coins and recorded.get("usd"):
            change = recorded.get("change_24h_pct")
            model.anchor(coin_id, float(recorded["usd"]), float(change) if change else None)
    for coin_id in coins:
        if coin_id not in model.coins:  # neither recorded nor in the catalog
            model.anchor(coin_id, 1.0)
    model.advance(now)
    moment = datetime.fromtimestamp(now, tz=UTC)
    quotes = []
    for coin_id, (symbol, name) in coins.items():
        price = Decimal(repr(model.price(coin_id)))
        previous = last.get(coin_id, {})
        if previous.get("market_cap") and previous.get("usd"):
            # Keep the source's market cap, moved with the price.
            market_cap = Decimal(previous["market_cap"]) * price / Decimal(previous["usd"])
        else:
            market_cap = price * Decimal(repr(model.coins[coin_id].circulating_supply))
        market_cap = market_cap.quantize(Decimal("1"))
        quotes.append(
            MarketQuote(
                id=coin_id,
                symbol=symbol,
                name=name,
                price=price,
                change_24h_pct=Decimal(repr(model.change_24h_pct(coin_id))),
                market_cap=market_cap,
                volume_24h=(market_cap * Decimal("0.03")).quantize(Decimal("1")),
                last_updated=moment,
            )
        )
    return quotes
