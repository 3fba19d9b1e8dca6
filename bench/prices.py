"""GET /api/v1/prices throughput vs a bare ASGI app serving the same bytes from Redis.

    DATABASE_URL=postgres://postgres@localhost:5432/cv_markets \\
    REDIS_URL=redis://localhost:6379/11 .venv/bin/python bench/prices.py

Writes a 10-coin price snapshot into the given Redis db (use your own), starts two
uvicorn servers on this machine with the same options — the platform
(``cryptovault.asgi:application``, ``--web-port``) and ``bench/bare_prices.py``
(``--bare-port``) — checks that both answer the same bytes, then loads each in turn
with ``--connections`` keep-alive connections for ``--duration`` seconds and prints
req/s, p50 and p99 latency, and the platform/bare ratio (goal >= 0.6).

Load comes from ``wrk`` (``apt-get install wrk``) when installed; otherwise from a
Python asyncio client, which on a small machine is itself the bottleneck, so the
figures are lower and the ratio flatters the platform.
"""

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptovault.settings")

from bench.common import PRICES, production_env, stop_all, uvicorn_command  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--web-port", type=int, default=8641)
    parser.add_argument("--bare-port", type=int, default=8642)
    return parser.parse_args()


def seed_prices() -> None:
    import django

    django.setup()
    from markets.services import prices_record

    prices_record(
        prices={coin: Decimal(price) for coin, price in PRICES.items()},
        extra={coin: {"change_24h_pct": Decimal("1.234")} for coin in PRICES},
    )


def start_server(app: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
        uvicorn_command(port=port, app=app, fast=True),
        cwd=ROOT,
        env={
            **os.environ,
            "RATELIMIT_ENABLE": "false",
            **production_env(),
        },  # fmt: skip
    )


def fetch(url: str) -> bytes:
    import httpx

    deadline = time.monotonic() + 30
    while True:
        try:
            response = httpx.get(url, timeout=2)
            response.raise_for_status()
            return response.content
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * _UNITS[unit]


def load_wrk(url: str, args: argparse.Namespace) -> tuple[float, float, float]:
    output = subprocess.run(  # noqa: S603
        [
            shutil.which("wrk"),
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{args.duration}s",
            "--latency",
            url,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        print(output)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))
    return rps, p50, p99


def load_python(url: str, args: argparse.Namespace) -> tuple[float, float, float]:
    import httpx

    async def run() -> list[float]:
        latencies: list[float] = []
        limits = httpx.Limits(max_connections=args.connections)
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:
            stop = time.monotonic() + args.duration

            async def one_connection() -> None:
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    response = await client.get(url)
                    response.raise_for_status()
                    latencies.append((time.perf_counter() - started) * 1000)

            await asyncio.gather(*(one_connection() for _ in range(args.connections)))
        return latencies

    latencies = sorted(asyncio.run(run()))
    pick = lambda pct: latencies[min(len(latencies) - 1, int(len(latencies) * pct))]  # noqa: E731
    return len(latencies) / args.duration, pick(0.50), pick(0.99)


def main() -> None:
    args = parse_args()
    seed_prices()
    web_url = f"http://127.0.0.1:{args.web_port}/api/v1/prices"
    bare_url = f"http://127.0.0.1:{args.bare_port}/"
    servers = [
        start_server("cryptovault.asgi:application", args.web_port),
        start_server("bench.bare_prices:app", args.bare_port),
    ]
    try:
        web_body, bare_body = fetch(web_url), fetch(bare_url)
        assert web_body == bare_body, "the two servers must answer the same bytes"
        load = load_wrk if shutil.which("wrk") else load_python
        generator = "wrk" if load is load_wrk else "python asyncio (client-bound)"
        print(
            f"load generator: {generator}; {args.connections} connections, "
            f"{args.duration}s each, {len(web_body)} bytes"
        )
        results = {}
        for name, url in (
            ("platform GET /api/v1/prices", web_url),
            ("bare ASGI + Redis", bare_url),
        ):
            load(url, argparse.Namespace(**{**vars(args), "duration": 2}))  # warm-up
            results[name] = load(url, args)
            rps, p50, p99 = results[name]
            print(f"{name:30} {rps:10.0f} req/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
        (web_rps, *_), (bare_rps, *_) = results.values()
        print(f"ratio platform/bare: {web_rps / bare_rps:.2f}x (goal >= 0.60x)")
    finally:
        stop_all(servers)


if __name__ == "__main__":
    main()
