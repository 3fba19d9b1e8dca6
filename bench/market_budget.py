"""The market-data budget under anonymous load: detail and history requests from many IPs
must not spend the upstream calls the price poll needs.

    DATABASE_URL=postgres://postgres@localhost:5432/cv_budget \\
    REDIS_URL=redis://localhost:6379/14 .venv/bin/python bench/market_budget.py

Uses the given database (created if missing, migrated, seeded) and Redis db (flushed:
use your own), and starts the Procfile's processes (web, worker, beat, simulator) on
free ports, with ``TRUSTED_PROXIES=127.0.0.1`` so ``X-Forwarded-For`` picks the client
address. Once the poll has recorded fresh prices it fires ``--requests`` anonymous
``GET coins/<id>`` and ``GET coins/<id>/history?days=N`` (days walking 1..365) from
``--ips`` fake addresses, spread over ``--duration`` seconds, while it samples every
second: the price age, the budget windows in Redis and the simulator's call count.
It prints status codes, upstream calls by kind (our budget counter and the simulator's
own count), the busiest 60 s of each, and the goals next to them. Every process it
started is stopped on exit, Ctrl-C included.
"""

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg2
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import platform_command  # noqa: E402
from markets.catalogue import DEFAULT_TRACKED_COINS  # noqa: E402

# Keys written by markets.sources and markets.selectors (read here without Django).
BUDGET_KEY = "cv:markets:source:budget"
BUDGET_SHARED_KEY = "cv:markets:source:budget:shared"
BUDGET_CALLS_KEY = "cv:markets:source:calls"
PRICES_AS_OF_KEY = "cv:markets:prices:as_of"
COINS = DEFAULT_TRACKED_COINS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=90.0, help="seconds to spread them")
    parser.add_argument("--ips", type=int, default=500, help="fake client addresses")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--budget", type=int, default=30, help="MARKET_DATA_BUDGET_PER_MINUTE")
    parser.add_argument("--reserved", type=int, default=10)
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ensure_database(url: str) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = psycopg2.connect(
        host=parts.hostname, port=parts.port or 5432, user=parts.username or "postgres",
        password=parts.password, dbname="postgres",
    )  # fmt: skip
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()


class Platform:
    def __init__(self, args: argparse.Namespace) -> None:
        self.web_port, self.simulator_port = free_port(), free_port()
        self.logs = Path(tempfile.mkdtemp(prefix="cv-budget-"))
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            "DEBUG": "false",
            "SECRET_KEY": "budget-" + os.urandom(16).hex(),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "TRUSTED_PROXIES": "127.0.0.1",
            "MARKET_DATA_URL": f"http://127.0.0.1:{self.simulator_port}/api/v3",
            "MARKET_DATA_BUDGET_PER_MINUTE": str(args.budget),
            "MARKET_DATA_POLL_RESERVED_PER_MINUTE": str(args.reserved),
            "LOG_LEVEL": "WARNING",
        }
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.simulator_url = f"http://127.0.0.1:{self.simulator_port}"

    def command(self, name: str) -> list[str]:
        return platform_command(
            name,
            web_port=self.web_port,
            simulator_port=self.simulator_port,
            beat_schedule=self.logs / "beat-schedule",
        )

    def start(self) -> None:
        for arguments in (["migrate", "--no-input"], ["seed_demo"]):
            subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
                [sys.executable, "manage.py", *arguments], cwd=ROOT, env=self.env, check=True,
                timeout=300, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        for name in ("simulator", "web", "worker", "beat"):
            log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - kept by the child
            self.processes[name] = subprocess.Popen(  # noqa: S603 - fixed arguments
                self.command(name), cwd=ROOT, env=self.env, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)


def wait_until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, redis.RedisError):
            if check():
                return True
        time.sleep(0.5)
    return False


def window_count(store: redis.Redis, key: str) -> int:
    seconds, micros = store.time()
    return store.zcount(key, seconds + micros / 1e6 - 60, "+inf")


async def sample(platform: Platform, store: redis.Redis, samples: list, stop: asyncio.Event):
    async with httpx.AsyncClient(timeout=5) as http:
        while not stop.is_set():
            as_of = store.get(PRICES_AS_OF_KEY)
            state = (await http.get(f"{platform.simulator_url}/_control/state")).json()
            samples.append(
                {
                    "t": time.monotonic(),
                    "price_age": time.time() - float(as_of) if as_of else None,
                    "window": window_count(store, BUDGET_KEY),
                    "shared": window_count(store, BUDGET_SHARED_KEY),
                    "upstream": state["calls"],
                }
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def fire(platform: Platform, args: argparse.Namespace) -> tuple[Counter, list[float]]:
    rng = random.Random(13)  # noqa: S311 - load shape, not security
    ips = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(args.ips)]
    statuses: Counter = Counter()
    latencies: list[float] = []
    gate = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()

    async def one(i: int, http: httpx.AsyncClient) -> None:
        due = started + i * args.duration / args.requests
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        coin = COINS[i % len(COINS)]
        if i % 4 == 0:
            path, kind = f"/api/v1/coins/{coin}", "detail"
        else:
            path, kind = f"/api/v1/coins/{coin}/history?days={1 + i % 365}", "history"
        async with gate:
            begin = time.monotonic()
            try:
                response = await http.get(path, headers={"X-Forwarded-For": rng.choice(ips)})
                statuses[(kind, response.status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[(kind, type(exc).__name__)] += 1
            latencies.append(time.monotonic() - begin)

    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=platform.url, timeout=30, limits=limits) as http:
        await asyncio.gather(*(one(i, http) for i in range(args.requests)))
    return statuses, latencies


def busiest_minute(samples: list[dict], field: str) -> int:
    """Most ``field`` increments within any 60 s of the samples (a cumulative count)."""
    best = 0
    for i, first in enumerate(samples):
        for later in samples[i:]:
            if later["t"] - first["t"] > 60:
                break
            best = max(best, later[field] - first[field])
    return best


def calls(store: redis.Redis) -> Counter:
    raw = store.hgetall(BUDGET_CALLS_KEY)
    return Counter({k.decode(): int(v) for k, v in raw.items() if k != b"seq"})


async def run(args: argparse.Namespace, platform: Platform, store: redis.Redis) -> None:
    print(f"logs in {platform.logs}", flush=True)
    if not wait_until(lambda: httpx.get(f"{platform.url}/health").status_code == 200, 90):
        sys.exit("the platform did not come up")
    if not wait_until(lambda: store.get(PRICES_AS_OF_KEY) is not None, 90):
        sys.exit("no price poll recorded prices")
    before_calls = calls(store)
    before_sim = httpx.get(f"{platform.simulator_url}/_control/state").json()
    samples: list[dict] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(platform, store, samples, stop))
    began = time.monotonic()
    statuses, latencies = await fire(platform, args)
    elapsed = time.monotonic() - began
    await asyncio.sleep(5)  # the next polls land too
    stop.set()
    await sampler
    after_sim = httpx.get(f"{platform.simulator_url}/_control/state").json()
    spent = calls(store) - before_calls
    by_endpoint = Counter(after_sim["calls_by_endpoint"]) - Counter(before_sim["calls_by_endpoint"])

    print(f"\n{args.requests} requests from {args.ips} IPs in {elapsed:.1f} s")
    print("status codes:", ", ".join(f"{k} {s}: {n}" for (k, s), n in sorted(statuses.items())))
    latencies.sort()
    print(
        f"latency p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms"
    )
    fives = sum(n for (_k, s), n in statuses.items() if isinstance(s, int) and s >= 500)
    print(f"5xx: {fives} (goal 0)")
    print("\nupstream calls by kind (budget counter):", dict(sorted(spent.items())))
    print("upstream calls by endpoint (simulator):", dict(sorted(by_endpoint.items())))
    shared_cap = args.budget - args.reserved
    ages = [s["price_age"] for s in samples if s["price_age"] is not None]
    print(
        f"\nbusiest 60 s at the simulator: {busiest_minute(samples, 'upstream')} calls "
        f"(budget {args.budget})"
    )
    print(
        f"max calls in the budget window: {max(s['window'] for s in samples)} "
        f"(<= {args.budget}); non-reserved share: {max(s['shared'] for s in samples)} "
        f"(<= cap {shared_cap})"
    )
    print(f"price age max during the run: {max(ages):.1f} s (poll every 10 s, stale at 60 s)")


def main() -> None:
    args = parse_args()
    for name in ("DATABASE_URL", "REDIS_URL"):
        if name not in os.environ:
            sys.exit(f"set {name} to your own database / Redis db")
    ensure_database(os.environ["DATABASE_URL"])
    store = redis.Redis.from_url(os.environ["REDIS_URL"])
    store.flushdb()  # our own db: budget windows and counters start empty
    platform = Platform(args)
    try:
        platform.start()
        asyncio.run(run(args, platform, store))
    finally:
        platform.stop()


if __name__ == "__main__":
    main()
