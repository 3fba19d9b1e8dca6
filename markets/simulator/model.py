"""The simulator's market: seeded random-walk prices around realistic levels, per-venue
quotes, and synthetic history.

Pure Python with no I/O, so the same model answers HTTP in the ``simulator`` process and
serves prices in-process when ``MARKET_DATA_FALLBACK=simulated`` and the source is down.
Thread-safe (a Celery worker may use it from several threads).
"""

import math
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from markets.catalogue import COINS, DEFAULT_VENUE_FEE, VENUES

# The coins (markets.catalogue) and venues it quotes; stablecoins hover around their peg.
STABLECOINS = frozenset(coin.id for coin in COINS.values() if coin.stablecoin)

DAILY_VOLATILITY = 0.03
VENUE_DISPERSION = 0.0015  # std-dev of a venue's price around the mid
MAX_STEP_SECONDS = 3600.0  # an idle model does not jump by days at once


def significant(value: float, digits: int = 8) -> float:
    """Round to ``digits`` significant figures, as exchanges quote."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


@dataclass
class CoinState:
    id: str
    symbol: str
    name: str
    mid: float
    open_24h: float
    circulating_supply: float
    max_supply: float | None
    genesis_date: str | None
    frozen: bool = False
    venue_offsets: dict[str, float] = field(default_factory=dict)
    venue_overrides: dict[str, float] = field(default_factory=dict)


class MarketModel:
    def __init__(self, *, seed: int = 42, now: float | None = None) -> None:
        self.seed = seed
        self._rng = random.Random(seed)  # noqa: S311 - simulated prices, not secrets
        self._lock = threading.Lock()
        self.walk_enabled = True
        self.updated_at = now if now is not None else time.time()
        # Venue id (CoinGecko exchange identifier) -> (display name, taker fee rate).
        self.venues: dict[str, tuple[str, float]] = {
            venue.id: (venue.name, float(venue.taker_fee)) for venue in VENUES.values()
        }
        self.coins: dict[str, CoinState] = {}
        for coin in COINS.values():
            self._add(coin.id, coin.symbol, coin.name, coin.usd, coin.circulating_supply,
                      coin.max_supply, coin.genesis_date)  # fmt: skip

    def _add(self, coin_id, symbol, name, price, supply, max_supply, genesis) -> CoinState:
        change = 0.0 if coin_id in STABLECOINS else self._rng.uniform(-0.05, 0.05)
        state = CoinState(
            id=coin_id,
            symbol=symbol,
            name=name,
            mid=price,
            open_24h=price / (1 + change),
            circulating_supply=supply,
            max_supply=max_supply,
            genesis_date=genesis,
        )
        state.venue_offsets = self._draw_offsets(coin_id)
        self.coins[coin_id] = state
        return state

    def _draw_offsets(self, coin_id: str) -> dict[str, float]:
        scale = VENUE_DISPERSION / 10 if coin_id in STABLECOINS else VENUE_DISPERSION
        return {venue: self._rng.gauss(0.0, scale) for venue in self.venues}

    # --- time ---------------------------------------------------------------------
    def advance(self, now: float | None = None) -> None:
        """Walk every unfrozen coin forward to ``now`` (a geometric random walk whose
        variance grows with elapsed time, so polling frequency does not change volatility)."""
        now = now if now is not None else time.time()
        with self._lock:
            elapsed = min(now - self.updated_at, MAX_STEP_SECONDS)
            if elapsed < 0.5:
                return
            self.updated_at = now
            if not self.walk_enabled:
                return
            sigma = DAILY_VOLATILITY * math.sqrt(elapsed / 86400)
            for coin in self.coins.values():
                if coin.frozen:
                    continue
                if coin.id in STABLECOINS:
                    # Stablecoins hover around their peg instead of wandering off.
                    coin.mid = 1.0 + self._rng.gauss(0.0, 0.0005)
                else:
                    coin.mid *= math.exp(self._rng.gauss(0.0, sigma) - sigma * sigma / 2)
                coin.venue_offsets = self._draw_offsets(coin.id)

    # --- control --------------------------------------------------------------------
    def set_price(
        self, coin_id: str, usd: float | None, venues: dict[str, float] | None = None
    ) -> None:
        """Pin a coin's mid (and optionally venue prices) and freeze its walk. Venues not
        given then quote the mid exactly, so tests can predict the best venues."""
        with self._lock:
            coin = self.coins.get(coin_id)
            if coin is None:
                base = usd if usd is not None else 1.0
                coin = self._add(coin_id, coin_id[:6], coin_id.replace("-", " ").title(), base,
                                 1_000_000_000, None, None)  # fmt: skip
            if usd is not None:
                coin.mid = usd
            coin.frozen = True
            coin.venue_offsets = dict.fromkeys(self.venues, 0.0)
            coin.venue_overrides = {}
            for venue, price in (venues or {}).items():
                if venue not in self.venues:
                    self.venues[venue] = (venue.replace("-", " ").title(), float(DEFAULT_VENUE_FEE))
                coin.venue_overrides[venue] = price

    def set_walk(self, enabled: bool) -> None:
        with self._lock:
            self.walk_enabled = enabled
            if enabled:
                for coin in self.coins.values():
                    coin.frozen = False
                    coin.venue_overrides = {}

    def anchor(self, coin_id: str, price: float, change_24h_pct: float | None = None) -> None:
        """Continue walking from this price (and 24h change): the fallback carries on from
        the last recorded prices rather than jumping to the catalog levels."""
        with self._lock:
            coin = self.coins.get(coin_id)
            if coin is None:
                coin = self._add(coin_id, coin_id[:6], coin_id.title(), price,
                                 1_000_000_000, None, None)  # fmt: skip
            if change_24h_pct is not None and change_24h_pct > -100:
                coin.open_24h = price / (1 + change_24h_pct / 100)
            else:
                coin.open_24h *= price / coin.mid
            coin.mid = price

    # --- quotes --------------------------------------------------------------------------
    def price(self, coin_id: str) -> float:
        return significant(self.coins[coin_id].mid)

    def change_24h_pct(self, coin_id: str) -> float:
        coin = self.coins[coin_id]
        return round((coin.mid / coin.open_24h - 1) * 100, 5)

    def venue_quotes(self, coin_id: str) -> list[tuple[str, str, float, float]]:
        """``[(venue id, venue name, price, fee rate)]`` for one coin."""
        coin = self.coins[coin_id]
        quotes = []
        for venue, (name, fee) in self.venues.items():
            if venue in coin.venue_overrides:
                price = coin.venue_overrides[venue]
            else:
                price = coin.mid * (1 + coin.venue_offsets.get(venue, 0.0))
            quotes.append((venue, name, significant(price), fee))
        return quotes

    def chart(self, coin_id: str, days: int, now: float | None = None) -> list[list[float]]:
        """``[[epoch ms, price]]`` over ``days`` ending at the current mid, with CoinGecko's
        granularity (5-minutely for 1 day, hourly up to 90 days, daily beyond).
        Deterministic for a given seed, coin and range."""
        now = now if now is not None else time.time()
        step = 300 if days <= 1 else 3600 if days <= 90 else 86400
        count = int(days * 86400 // step)
        rng = random.Random(f"{self.seed}:{coin_id}:{days}")  # noqa: S311
        sigma = DAILY_VOLATILITY * math.sqrt(step / 86400)
        price = self.coins[coin_id].mid
        points = []
        for index in range(count + 1):
            points.append([int((now - index * step) * 1000), significant(price)])
            if coin_id not in STABLECOINS:
                price /= math.exp(rng.gauss(0.0, sigma))
        points.reverse()
        return points

    def last_updated_iso(self) -> str:
        moment = datetime.fromtimestamp(self.updated_at, tz=UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
