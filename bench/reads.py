"""Every public market read against a bare ASGI app serving the same bytes from Redis.

    DEBUG=true DATABASE_URL=postgres://postgres@localhost:5432/cv_reads \\
    REDIS_URL=redis://localhost:6379/6 .venv/bin/python bench/reads.py

Uses the given database (it must exist; migrated here; coins and a day of price history
added) and Redis db (prices, venue tickers and details copies written, bench keys under
``cv:bench:``): use your own, and run no tests on it meanwhile (they flush it). Starts
two uvicorn servers on this machine with the same options, as bench/prices.py does: the
platform (``cryptovault.asgi:application`` from ``--platform-src``, default this
checkout: point it at another checkout to measure a before/after) and
``bench/bare_reads.py``. For each read in turn it checks both answer the same bytes, then
loads each with ``--connections`` keep-alive connections in ``--rounds`` interleaved
slices of ``--duration`` seconds (``wrk`` when installed), and prints req/s, p50 and p99,
each server's CPU per read, and the platform/bare ratio (goal >= 0.5, ``/prices`` >=
0.6). Rate limits are off; the source (``MARKET_DATA_URL``) points at a closed port.

The bare app answers with one header (Content-Type), the platform with those the
contract asks for (security headers, ETag, Cache-Control, request id ...). The goals are
measured against that bare app. ``--same-headers`` has the bare app send the platform's
headers too (as the platform answered the check request; Content-Length aside, so both
frame the body as before): what is left between the two is then the lane's own work.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptovault.settings")

from bench.common import PRICES, CpuMeter, production_env, stop_all, uvicorn_command  # noqa: E402
from bench.prices import fetch, load_python, load_wrk  # noqa: E402

READS = {
    "/api/v1/prices": 0.6,
    "/api/v1/coins": 0.5,
    "/api/v1/coins/bitcoin": 0.5,
    "/api/v1/coins/bitcoin/history?days=1": 0.5,
    "/api/v1/coins/bitcoin/ohlc?interval=1h&limit=24": 0.5,
    "/api/v1/arbitrage": 0.5,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=5, help="seconds per slice")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved slices per server")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--web-port", type=int, default=8651)
    parser.add_argument("--bare-port", type=int, default=8652)
    parser.add_argument("--platform-src", type=Path, default=ROOT)
    parser.add_argument("--only", help="one path of the reads (with its query)")
    parser.add_argument(
        "--same-headers", action="store_true", help="the bare app sends the platform's headers"
    )
    return parser.parse_args()


def seed() -> None:
    """Coins, a day of 5-minute history, prices, two venues per coin and a fresh copy of
    each coin's details (as the source's answer would be cached)."""
    import django

    django.setup()
    import orjson
    from django.core.management import call_command
    from django_redis import get_redis_connection

    from markets.models import PricePoint
    from markets.services import coins_seed, prices_record, tickers_record
    from markets.upstream import DETAILS_KEY_PREFIX

    call_command("migrate", verbosity=0)
    coins_seed(coin_ids=list(PRICES))
    now = datetime.now(tz=UTC).replace(second=0, microsecond=0)
    PricePoint.objects.bulk_create(
        [
            PricePoint(coin_id=coin_id, ts=now - timedelta(minutes=m), price=Decimal(price) + m % 7)
            for coin_id, price in PRICES.items()
            for m in range(0, 24 * 60 + 60, 5)
        ],
        ignore_conflicts=True,
    )
    prices_record(
        prices={coin: Decimal(price) for coin, price in PRICES.items()},
        extra={coin: {"change_24h_pct": Decimal("1.234")} for coin in PRICES},
    )
    details = {"description": "A coin.", "categories": ["Cryptocurrency"], "links": {}}
    for coin_id, price in PRICES.items():
        get_redis_connection("default").set(
            DETAILS_KEY_PREFIX + coin_id, orjson.dumps({"at": time.time(), "data": details})
        )
        tickers_record(
            coin_id=coin_id,
            venues=[
                ("binance", "Binance", Decimal(price)),
                ("kraken", "Kraken", Decimal(price) * Decimal("1.01")),
            ],
        )


def platform_headers(url: str) -> list[tuple[str, str]]:
    """The headers the platform answers ``url`` with, but those uvicorn adds itself (Date,
    Server), Content-Type (the bare app's own) and Content-Length."""
    import httpx

    skip = {b"date", b"server", b"content-type", b"content-length"}
    raw = httpx.get(url, timeout=5).headers.raw
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw if k.lower() not in skip]


def start_server(app: str, port: int, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
        uvicorn_command(port=port, app=app, fast=True),
        cwd=cwd,
        env={
            **os.environ,
            "RATELIMIT_ENABLE": "false",
            # Refused at once: details answer without the source's part.
            "MARKET_DATA_URL": "http://127.0.0.1:9/api/v3",
            "MARKET_DATA_FALLBACK": "none",
            **production_env(),
            **env,
        },  # fmt: skip
    )


def main() -> None:
    args = parse_args()
    seed()
    import orjson
    from django_redis import get_redis_connection

    from bench.bare_reads import BODY_PREFIX, HEADERS_PREFIX

    redis = get_redis_connection("default")
    web = start_server("cryptovault.asgi:application", args.web_port, args.platform_src, {})
    bare_env = {"BENCH_SAME_HEADERS": "1"} if args.same_headers else {}
    bare = start_server("bench.bare_reads:app", args.bare_port, ROOT, bare_env)
    load = load_wrk if shutil.which("wrk") else load_python
    generator = "wrk" if load is load_wrk else "python asyncio (client-bound)"
    print(
        f"load generator: {generator}; {args.connections} connections, "
        f"{args.rounds} x {args.duration}s per server"
    )
    print(f"platform: {args.platform_src}")
    print("bare: " + ("the platform's headers" if args.same_headers else "Content-Type only"))
    try:
        for path, goal in READS.items():
            if args.only and path != args.only:
                continue
            web_url = f"http://127.0.0.1:{args.web_port}{path}"
            bare_url = f"http://127.0.0.1:{args.bare_port}{path}"
            body = fetch(web_url)
            key = path if "?" in path else path + "?"
            redis.set(BODY_PREFIX + key, body)
            redis.set(HEADERS_PREFIX + key, orjson.dumps(platform_headers(web_url)))
            assert fetch(bare_url) == body, f"{path}: the two servers must answer the same bytes"
            servers = {"platform": (web_url, web.pid), "bare": (bare_url, bare.pid)}
            for url, _pid in servers.values():
                load(url, argparse.Namespace(**{**vars(args), "duration": 2}))  # warm-up
            # Interleaved slices, so both see the same machine (other load comes and goes).
            runs: dict[str, list] = {name: [] for name in servers}
            cpu = dict.fromkeys(servers, 0.0)
            for _ in range(args.rounds):
                for name, (url, pid) in servers.items():
                    meter = CpuMeter({name: pid})
                    meter.start()
                    runs[name].append(load(url, args))
                    cpu[name] += meter.stop()[name]
            rps = {name: statistics.mean(run[0] for run in runs[name]) for name in servers}
            p50 = statistics.median(run[1] for run in runs["platform"])
            p99 = max(run[2] for run in runs["platform"])
            reads = {name: rps[name] * args.duration * args.rounds for name in servers}
            cpu_us = {name: cpu[name] / max(1.0, reads[name]) * 1e6 for name in servers}
            print(
                f"{path:50} {len(body):5} B  platform {rps['platform']:6.0f} req/s "
                f"p50 {p50:6.2f} ms p99 {p99:7.2f} ms {cpu_us['platform']:5.0f} us CPU/read  "
                f"bare {rps['bare']:6.0f} req/s {cpu_us['bare']:4.0f} us CPU/read  "
                f"ratio {rps['platform'] / rps['bare']:.2f}x (goal >= {goal})"
            )
            time.sleep(0.5)
    finally:
        stop_all([web, bare])


if __name__ == "__main__":
    main()
