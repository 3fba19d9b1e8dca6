"""/ws/prices fan-out: N WebSocket subscribers on real uvicorn web processes receive ticks.

    DATABASE_URL=postgres://postgres@localhost:5432/cv_realtime \\
    REDIS_URL=redis://localhost:6379/13 .venv/bin/python bench/fanout.py

Writes a 10-coin snapshot into the given Redis db (use your own), starts uvicorn
serving ``cryptovault.asgi:application`` with ``--web-processes`` workers, then for
each size in ``--subscribers``: opens that many ``/ws/prices`` sockets from
``--client-processes`` client processes (each socket waits for its snapshot), publishes
``--ticks`` ticks ``--interval`` seconds apart through
``markets.realtime.prices_tick_publish`` (the poller's own path: one Redis publish per
tick), each carrying its send time as ``as_of``, and prints:

- p50 / p99 / max tick->client latency (client receive time minus ``as_of``; client
  and server share this machine's clock and CPUs, so client-side queueing counts too),
- messages dropped (ticks published x sockets - ticks received; a socket re-synced
  with a snapshot counts its missed ticks as dropped),
- web process RSS growth per 1,000 connections.

Goal: 5,000 subscribers, p99 <= 100 ms, zero drops; 10,000 idle connections per
process within 1.5 GiB. Clients offer permessage-deflate like browsers do unless
``--no-compression``.
"""

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptovault.settings")

PRICES = {
    "bitcoin": "65000.12", "ethereum": "3200.5", "tether": "1.0001", "binancecoin": "580.3",
    "solana": "150.25", "ripple": "0.5512", "usd-coin": "0.9999", "cardano": "0.4501",
    "dogecoin": "0.15023", "tron": "0.1201",
}  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", default="1000,5000", help="comma-separated sizes")
    parser.add_argument("--ticks", type=int, default=10)
    # Production polls every PRICE_POLL_SECONDS (10 s); 2 s keeps each tick a separate
    # burst (as in production) while keeping the run short.
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between ticks")
    parser.add_argument("--web-processes", type=int, default=2)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=8661)
    parser.add_argument("--no-compression", action="store_true")
    return parser.parse_args()


# --- client processes ---------------------------------------------------------------


def client_process(url, count, compression, ready, stop, results) -> None:
    asyncio.run(_client(url, count, compression, ready, stop, results))


async def _client(url, count, compression, ready, stop, results) -> None:
    import orjson
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    counters = {"ticks": 0, "snapshots": 0, "failed": 0}
    gate = asyncio.Semaphore(64)

    async def open_one():
        async with gate:
            for attempt in range(5):
                try:
                    ws = await connect(
                        url,
                        compression="deflate" if compression else None,
                        ping_interval=None,
                        open_timeout=30,
                        max_queue=None,
                    )
                    first = orjson.loads(await ws.recv())
                    assert first["type"] == "snapshot", first
                    return ws
                except OSError:
                    await asyncio.sleep(0.2 * (attempt + 1))
            counters["failed"] += 1
            return None

    async def read(ws) -> None:
        try:
            async for message in ws:
                received = time.time()
                frame = orjson.loads(message)
                if frame["type"] == "tick":
                    counters["ticks"] += 1
                    sent = datetime.fromisoformat(frame["as_of"]).timestamp()
                    latencies.append(received - sent)
                elif frame["type"] == "snapshot":
                    counters["snapshots"] += 1
        except Exception:  # noqa: S110 - a socket closing at the end of the run
            pass

    sockets = [ws for ws in await asyncio.gather(*(open_one() for _ in range(count))) if ws]
    readers = [asyncio.ensure_future(read(ws)) for ws in sockets]
    ready.put(len(sockets))
    while not stop.is_set():
        await asyncio.sleep(0.05)
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    for task in readers:
        task.cancel()
    results.put({"latencies": latencies, **counters, "open": len(sockets)})


# --- server ---------------------------------------------------------------------------


def start_server(port: int, workers: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "uvicorn", "cryptovault.asgi:application",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT)  # noqa: S603 - fixed arguments
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            time.sleep(1.0 if workers > 1 else 0.2)  # let every worker start accepting
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("uvicorn did not start")


def web_pids(server: subprocess.Popen) -> list[int]:
    """The processes serving sockets: uvicorn's workers, or the server itself."""
    children_file = Path(f"/proc/{server.pid}/task/{server.pid}/children")
    children = [
        int(pid)
        for pid in children_file.read_text().split()
        # multiprocessing's resource tracker is a child too, but serves nothing.
        if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    return children or [server.pid]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time these processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


# --- one round --------------------------------------------------------------------------


def run_round(args, server, subscribers: int) -> None:
    from markets.realtime import prices_tick_publish

    ctx = mp.get_context("fork")
    ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    url = f"ws://127.0.0.1:{args.port}/ws/prices"
    shares = [subscribers // args.client_processes] * args.client_processes
    shares[0] += subscribers - sum(shares)
    pids = web_pids(server)
    rss_before = rss_bytes(pids)
    started = time.monotonic()
    clients = [
        ctx.Process(
            target=client_process,
            args=(url, share, not args.no_compression, ready, stop, results),
        )
        for share in shares
    ]
    for process in clients:
        process.start()
    opened = sum(ready.get(timeout=300) for _ in clients)
    connect_seconds = time.monotonic() - started
    time.sleep(1.0)
    rss_after = rss_bytes(pids)

    entries = {coin: {"usd": price, "change_24h_pct": "1.234"} for coin, price in PRICES.items()}
    client_pids = [process.pid for process in clients]
    web_cpu, client_cpu = cpu_seconds(pids), cpu_seconds(client_pids)
    for _ in range(args.ticks):
        as_of = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        prices_tick_publish(as_of=as_of, prices=entries)
        time.sleep(args.interval)
    time.sleep(2.0)  # let the last tick land everywhere
    web_cpu, client_cpu = cpu_seconds(pids) - web_cpu, cpu_seconds(client_pids) - client_cpu
    stop.set()
    reports = [results.get(timeout=120) for _ in clients]
    for process in clients:
        process.join(timeout=30)

    latencies = sorted(x for report in reports for x in report["latencies"])
    received = sum(report["ticks"] for report in reports)
    expected = args.ticks * opened
    per_thousand = (rss_after - rss_before) / max(opened, 1) * 1000

    def ms(q: float) -> str:
        if not latencies:
            return "n/a"
        return f"{latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000:.1f}"

    print(
        f"subscribers={subscribers} open={opened} failed={sum(r['failed'] for r in reports)} "
        f"connect={connect_seconds:.1f}s web_processes={len(pids)}\n"
        f"  ticks={args.ticks} every {args.interval}s  latency ms: p50={ms(0.50)} "
        f"p99={ms(0.99)} max={ms(1.0)} "
        f"mean={statistics.fmean(latencies) * 1000 if latencies else 0:.1f}\n"
        f"  CPU per tick: web {web_cpu / args.ticks * 1000:.0f} ms, "
        f"clients {client_cpu / args.ticks * 1000:.0f} ms\n"
        f"  dropped={expected - received} of {expected} "
        f"(re-sync snapshots={sum(r['snapshots'] for r in reports)})\n"
        f"  web RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB, "
        f"{per_thousand / 2**20:.1f} MiB per 1,000 connections",
        flush=True,
    )


def main() -> None:
    args = parse_args()
    import django

    django.setup()
    from markets.services import prices_record

    prices_record(prices={coin: Decimal(price) for coin, price in PRICES.items()})
    server = start_server(args.port, args.web_processes)
    try:
        print(
            f"fanout bench: uvicorn x{args.web_processes} on :{args.port}, "
            f"{args.client_processes} client processes, "
            f"compression={'off' if args.no_compression else 'deflate (as browsers)'}, "
            f"{os.cpu_count()} CPUs shared by server and clients, "
            f"load average {os.getloadavg()[0]:.1f} before the run",
            flush=True,
        )
        for size in (int(s) for s in args.subscribers.split(",")):
            run_round(args, server, size)
            time.sleep(2.0)  # sockets of the round wind down
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
