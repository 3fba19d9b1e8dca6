"""Fixtures for market tests: the real simulator served over real HTTP (uvicorn in a
thread, on a free port), and settings that point the platform at it with short timeouts."""

import pytest

from cryptovault.testing import uvicorn_in_thread
from markets.models import Coin
from markets.services import coins_seed
from markets.simulator.app import Simulator, create_app


class _Swappable:
    """One server for the session; each test gets a fresh simulator behind it."""

    def __init__(self) -> None:
        self.target: Simulator = create_app(seed=7, hang_seconds=2)

    async def __call__(self, scope, receive, send):
        await self.target(scope, receive, send)


@pytest.fixture(scope="session")
def _simulator_server():
    app = _Swappable()
    with uvicorn_in_thread(app, timeout_graceful_shutdown=1) as address:
        yield app, f"http://{address}"


@pytest.fixture
def simulator(_simulator_server, settings) -> Simulator:
    """A fresh simulator (seeded, walk frozen for predictable prices) that the platform
    talks to over HTTP, with timeouts and back-offs short enough for tests."""
    app, url = _simulator_server
    app.target = create_app(seed=7, hang_seconds=2)
    app.target.model.set_walk(False)
    app.target.url = url
    settings.MARKET_DATA_URL = f"{url}/api/v3"
    settings.MARKET_DATA_READ_TIMEOUT = 0.3
    settings.MARKET_DATA_CONNECT_TIMEOUT = 0.3
    settings.MARKET_DATA_RETRIES = 1
    settings.MARKET_DATA_RETRY_BACKOFF = 0.01
    settings.COINGECKO_API_KEY = ""
    return app.target


@pytest.fixture
def tracked(db) -> list[Coin]:
    return coins_seed(coin_ids=["bitcoin", "ethereum", "dogecoin"])
