"""The exchange simulator: an ASGI app speaking the CoinGecko v3 subset we use.

``/api/v3/ping``, ``simple/price``, ``coins/markets``, ``coins/<id>``,
``coins/<id>/market_chart`` and ``coins/<id>/tickers`` answer in CoinGecko's shapes
(see ``shared/coingecko``), from a seeded random walk (``model.MarketModel``).
The control API steers it for tests and demos::

    POST /_control/prices {"bitcoin": "65000"}                 pin a mid, freeze its walk
    POST /_control/prices {"bitcoin": {"usd": "65000", "venues": {"kraken": "66000"}}}
    POST /_control/walk   {"enabled": false}                   freeze / resume every walk
    POST /_control/fault  {"mode": "none|error|rate_limit|timeout|garbage"}
    GET  /_control/state

Faults apply to every ``/api/v3/`` call until set back to ``none``; the control API is
never affected. Dependency-free apart from orjson, so it starts fast and runs anywhere.
"""

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qs

import orjson

from markets.simulator.model import MarketModel

FAULT_MODES = ("none", "error", "rate_limit", "timeout", "garbage")
RATE_LIMIT_PER_MINUTE = 30
RATE_LIMIT_BODY = {
    "status": {
        "error_code": 429,
        "error_message": "You've exceeded the Rate Limit. Please visit "
        "https://www.coingecko.com/en/api/pricing to subscribe to our API plans for "
        "higher rate limits.",
    }
}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _flag(params: dict[str, str], name: str, default: bool = False) -> bool:
    value = params.get(name)
    return default if value is None else value.lower() == "true"


def _vs_currency(params: dict[str, str], name: str) -> None:
    value = params.get(name)
    if not value:
        raise HttpError(400, f"Missing parameter {name}")
    # Only usd is modelled; that is all the platform quotes in.
    if any(currency.strip().lower() != "usd" for currency in value.split(",")):
        raise HttpError(400, f"invalid {name}")


# Far above any real price, and far inside what a float (the walk's arithmetic) holds.
MAX_PRICE = Decimal("1e15")
# The /coins/{id} market_data fields CoinGecko answers per currency ({"usd": value}).
_PER_CURRENCY_FIELDS = (
    "current_price", "ath", "ath_change_percentage", "ath_date", "atl",
    "atl_change_percentage", "atl_date", "market_cap", "fully_diluted_valuation",
    "total_volume", "high_24h", "low_24h",
)  # fmt: skip


def _positive_price(value) -> float:
    try:
        price = Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise HttpError(400, f"invalid price: {value!r}") from exc
    if not price.is_finite() or not 0 < price <= MAX_PRICE:
        raise HttpError(400, f"invalid price: {value!r} (0 < price <= {MAX_PRICE:f})")
    return float(price)


def _endpoint(path: str) -> str:
    """``/api/v3/coins/bitcoin/market_chart`` -> ``coins/<id>/market_chart``."""
    parts = path.removeprefix("/api/v3/").split("/")
    if parts[0] == "coins" and len(parts) in (2, 3) and parts[1] not in ("markets", "list"):
        parts[1] = "<id>"
    return "/".join(parts)


class Simulator:
    def __init__(self, *, seed: int = 42, hang_seconds: float = 30.0) -> None:
        self.model = MarketModel(seed=seed)
        self.fault = "none"
        self.calls = 0  # /api/v3 calls answered, faults included (CoinGecko counts those too)
        self.calls_by_endpoint: Counter[str] = Counter()  # the same, per endpoint (for benches)
        self.rate_limit_reset_seconds = 5
        self.hang_seconds = hang_seconds
        self.routes: dict[tuple[str, str], Callable] = {
            ("GET", "ping"): self.ping,
            ("GET", "simple/price"): self.simple_price,
            ("GET", "coins/markets"): self.coins_markets,
        }

    # --- CoinGecko v3 -----------------------------------------------------------------
    def ping(self, params):
        return {"gecko_says": "(V3) To the Moon!"}

    def simple_price(self, params):
        _vs_currency(params, "vs_currencies")
        answer = {}
        for coin_id in filter(None, params.get("ids", "").split(",")):
            if coin_id not in self.model.coins:
                continue
            entry = {"usd": self.model.price(coin_id)}
            if _flag(params, "include_market_cap"):
                entry["usd_market_cap"] = self._market_cap(coin_id)
            if _flag(params, "include_24hr_vol"):
                entry["usd_24h_vol"] = self._volume(coin_id)
            if _flag(params, "include_24hr_change"):
                entry["usd_24h_change"] = self.model.change_24h_pct(coin_id)
            if _flag(params, "include_last_updated_at"):
                entry["last_updated_at"] = int(self.model.updated_at)
            answer[coin_id] = entry
        return answer

    def coins_markets(self, params):
        _vs_currency(params, "vs_currency")
        ids = [coin for coin in params.get("ids", "").split(",") if coin]
        coins = (
            [self.model.coins[c] for c in ids if c in self.model.coins]
            if ids
            else list(self.model.coins.values())
        )
        coins.sort(key=lambda c: -self._market_cap(c.id))
        try:
            per_page = max(1, min(250, int(params.get("per_page", "100"))))
            page = max(1, int(params.get("page", "1")))
        except ValueError as exc:
            raise HttpError(400, "invalid per_page or page") from exc
        rank = {coin.id: index for index, coin in enumerate(coins, start=1)}
        window = coins[(page - 1) * per_page : page * per_page]
        return [self._market_row(coin.id, rank[coin.id]) for coin in window]

    def _market_row(self, coin_id: str, rank: int) -> dict:
        coin = self.model.coins[coin_id]
        price = self.model.price(coin_id)
        change_pct = self.model.change_24h_pct(coin_id)
        ath = max(price, coin.open_24h) * 1.35
        atl = min(price, coin.open_24h) * 0.05
        return {
            "id": coin.id,
            "symbol": coin.symbol,
            "name": coin.name,
            "image": f"https://coin-images.coingecko.com/coins/images/1/large/{coin.id}.png",
            "current_price": price,
            "market_cap": self._market_cap(coin_id),
            "market_cap_rank": rank,
            "fully_diluted_valuation": self._round(price * (coin.max_supply or 0)) or None,
            "total_volume": self._volume(coin_id),
            "high_24h": max(price, self._round(coin.open_24h)) * 1.01,
            "low_24h": min(price, self._round(coin.open_24h)) * 0.99,
            "price_change_24h": self._round(price - coin.open_24h),
            "price_change_percentage_24h": change_pct,
            "market_cap_change_24h": self._round((price - coin.open_24h) * coin.circulating_supply),
            "market_cap_change_percentage_24h": change_pct,
            "circulating_supply": coin.circulating_supply,
            "total_supply": coin.max_supply or coin.circulating_supply,
            "max_supply": coin.max_supply,
            "ath": self._round(ath),
            "ath_change_percentage": round((price / ath - 1) * 100, 5),
            "ath_date": "2024-03-14T07:10:36.635Z",
            "atl": self._round(atl),
            "atl_change_percentage": round((price / atl - 1) * 100, 5),
            "atl_date": "2015-01-14T00:00:00.000Z",
            "roi": None,
            "last_updated": self.model.last_updated_iso(),
        }

    def coin(self, coin_id: str, params):
        row = self._market_row(coin_id, 0)
        coin = self.model.coins[coin_id]
        return {
            "id": coin.id,
            "symbol": coin.symbol,
            "name": coin.name,
            "web_slug": coin.id,
            "asset_platform_id": None,
            "categories": ["Cryptocurrency"],
            "description": {"en": f"{coin.name} ({coin.symbol.upper()}) is a cryptocurrency."},
            "links": {
                "homepage": [f"https://{coin.id}.example.org"],
                "whitepaper": "",
                "blockchain_site": [f"https://explorer.example.org/{coin.id}"],
                "subreddit_url": f"https://www.reddit.com/r/{coin.id}/",
                "repos_url": {"github": [f"https://github.com/{coin.id}/{coin.id}"]},
            },
            "image": {
                "thumb": row["image"].replace("large", "thumb"),
                "small": row["image"].replace("large", "small"),
                "large": row["image"],
            },
            "genesis_date": coin.genesis_date,
            "market_cap_rank": None,
            "market_data": {
                **{field: {"usd": row[field]} for field in _PER_CURRENCY_FIELDS},
                "price_change_24h": row["price_change_24h"],
                "price_change_percentage_24h": row["price_change_percentage_24h"],
                "total_supply": row["total_supply"],
                "max_supply": row["max_supply"],
                "circulating_supply": row["circulating_supply"],
                "last_updated": row["last_updated"],
            },
            "last_updated": row["last_updated"],
        }

    def market_chart(self, coin_id: str, params):
        _vs_currency(params, "vs_currency")
        try:
            days = int(params.get("days", ""))
        except ValueError as exc:
            raise HttpError(400, "invalid days") from exc
        if not 1 <= days <= 3650:
            raise HttpError(400, "invalid days")
        prices = self.model.chart(coin_id, days)
        supply = self.model.coins[coin_id].circulating_supply
        return {
            "prices": prices,
            "market_caps": [[ms, self._round(price * supply)] for ms, price in prices],
            "total_volumes": [[ms, self._round(price * supply * 0.03)] for ms, price in prices],
        }

    def tickers(self, coin_id: str, params):
        coin = self.model.coins[coin_id]
        now_iso = self.model.last_updated_iso()
        tickers = []
        for venue, name, price, _fee in self.model.venue_quotes(coin_id):
            target = "USDT" if venue in {"binance", "okex"} else "USD"
            tickers.append(
                {
                    "base": coin.symbol.upper(),
                    "target": target,
                    "market": {"name": name, "identifier": venue, "has_trading_incentive": False},
                    "last": price,
                    "volume": self._round(self._volume(coin_id) / 20 / price),
                    "converted_last": {"usd": price},
                    "converted_volume": {"usd": self._round(self._volume(coin_id) / 20)},
                    "trust_score": "green",
                    "bid_ask_spread_percentage": 0.010013,
                    "timestamp": now_iso,
                    "last_traded_at": now_iso,
                    "last_fetch_at": now_iso,
                    "is_anomaly": False,
                    "is_stale": False,
                    "trade_url": f"https://{venue}.example.org/trade/{coin.symbol}_{target}",
                    "token_info_url": None,
                    "coin_id": coin.id,
                    "target_coin_id": "tether" if target == "USDT" else None,
                }
            )
        return {"name": coin.name, "tickers": tickers}

    def _market_cap(self, coin_id: str) -> float:
        return self._round(self.model.price(coin_id) * self.model.coins[coin_id].circulating_supply)

    def _volume(self, coin_id: str) -> float:
        return self._round(self._market_cap(coin_id) * 0.03)

    @staticmethod
    def _round(value: float) -> float:
        return float(round(value)) if abs(value) >= 1000 else round(value, 8)

    # --- control ----------------------------------------------------------------------------
    def control(self, name: str, body) -> dict:
        if not isinstance(body, dict):
            raise HttpError(400, "expected a JSON object")
        if name == "prices":
            parsed = {}
            for coin_id, spec in body.items():
                if isinstance(spec, dict):
                    usd = _positive_price(spec["usd"]) if "usd" in spec else None
                    venues = spec.get("venues") or {}
                    if not isinstance(venues, dict):
                        raise HttpError(400, "venues must be an object")
                    venues = {venue: _positive_price(p) for venue, p in venues.items()}
                else:
                    usd, venues = _positive_price(spec), {}
                parsed[str(coin_id)] = (usd, venues)
            for coin_id, (usd, venues) in parsed.items():
                self.model.set_price(coin_id, usd, venues)
        elif name == "walk":
            if not isinstance(body.get("enabled"), bool):
                raise HttpError(400, "enabled must be true or false")
            self.model.set_walk(body["enabled"])
        elif name == "fault":
            if body.get("mode") not in FAULT_MODES:
                raise HttpError(400, f"mode must be one of {', '.join(FAULT_MODES)}")
            self.fault = body["mode"]
            reset = body.get("reset_seconds", self.rate_limit_reset_seconds)
            if isinstance(reset, int) and reset >= 0:
                self.rate_limit_reset_seconds = reset
        elif name != "state":
            raise HttpError(404, "Not found")
        return self.state()

    def state(self) -> dict:
        return {
            "fault": self.fault,
            "calls": self.calls,
            "calls_by_endpoint": dict(self.calls_by_endpoint),
            "walk": self.model.walk_enabled,
            "prices": {
                coin_id: {
                    "usd": self.model.price(coin_id),
                    "frozen": coin.frozen,
                    "venues": {v: p for v, _n, p, _f in self.model.venue_quotes(coin_id)},
                }
                for coin_id, coin in self.model.coins.items()
            },
        }

    # --- dispatch ---------------------------------------------------------------------------
    def route(self, method: str, path: str, params: dict[str, str]):
        handler = self.routes.get((method, path))
        if handler is not None:
            return handler(params)
        parts = path.split("/")
        if method == "GET" and parts[0] == "coins" and len(parts) in (2, 3):
            coin_id = parts[1]
            if coin_id not in self.model.coins:
                raise HttpError(404, "coin not found")
            if len(parts) == 2:
                return self.coin(coin_id, params)
            action = {"market_chart": self.market_chart, "tickers": self.tickers}.get(parts[2])
            if action is not None:
                return action(coin_id, params)
        raise HttpError(404, "Not found")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path.startswith("/_control/"):
            status, headers, body = await self._control_response(method, path, receive)
        elif path.startswith("/api/v3/"):
            status, headers, body = await self._api_response(method, path, scope)
        else:
            status, headers, body = 404, [], orjson.dumps({"error": "Not found"})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _control_response(self, method, path, receive):
        name = path.removeprefix("/_control/").strip("/")
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            if method == "GET" and name == "state":
                return 200, [], orjson.dumps(self.state())
            if method != "POST":
                raise HttpError(405, "Method not allowed")
            try:
                body = orjson.loads(raw or b"{}")
            except orjson.JSONDecodeError as exc:
                raise HttpError(400, "invalid JSON") from exc
            return 200, [], orjson.dumps(self.control(name, body))
        except HttpError as exc:
            return exc.status, [], orjson.dumps({"error": exc.message})

    async def _api_response(self, method, path, scope):
        self.calls += 1
        self.calls_by_endpoint[_endpoint(path)] += 1
        fault = self.fault
        if fault == "error":
            return 500, [], orjson.dumps({"error": "Internal Server Error"})
        if fault == "rate_limit":
            reset = int(time.time()) + self.rate_limit_reset_seconds
            headers = [
                (b"x-ratelimit-limit", str(RATE_LIMIT_PER_MINUTE).encode()),
                (b"x-ratelimit-remaining", b"0"),
                (b"x-ratelimit-reset", str(reset).encode()),
                (b"retry-after", str(self.rate_limit_reset_seconds).encode()),
            ]
            return 429, headers, orjson.dumps(RATE_LIMIT_BODY)
        if fault == "timeout":
            # Hang until the fault is cleared (or give up much later than any sane client).
            deadline = time.monotonic() + self.hang_seconds
            while self.fault == "timeout" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return 504, [], orjson.dumps({"error": "Gateway Timeout"})
        if fault == "garbage":
            return 200, [], b'{"bitcoin": {"usd": 650<html>oops'
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        params = {key: values[-1] for key, values in query.items()}
        self.model.advance()
        try:
            answer = self.route(method, path.removeprefix("/api/v3/").strip("/"), params)
        except HttpError as exc:
            return exc.status, [], orjson.dumps({"error": exc.message})
        return 200, [], orjson.dumps(answer)


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app(*, seed: int | None = None, hang_seconds: float = 30.0) -> Simulator:
    if seed is None:
        seed = int(os.environ.get("SIMULATOR_SEED", "42"))
    return Simulator(seed=seed, hang_seconds=hang_seconds)


app = create_app()
