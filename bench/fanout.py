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
process within 1.5 GiB. ``--client raw`` (default) is a minimal client that costs little
CPU per message; ``--client websockets`` offers permessage-deflate as browsers do.
"""

import argparse
import asyncio
import base64
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

from bench.common import PRICES, production_env, uvicorn_command  # noqa: E402

# Production settings, as deployed; the server started below inherits them.
for _name, _value in production_env().items():
    os.environ.setdefault(_name, _value)


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
    parser.add_argument(
        "--ws",
        default="auto",
        help="uvicorn --ws implementation (auto, as the Procfile, is websockets-sansio)",
    )
    parser.add_argument(
        "--no-deflate",
        action="store_true",
        help="serve with --ws-per-message-deflate false (only matters for --client websockets)",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "websockets"],
        default="raw",
        help="raw: a minimal client without compression; websockets: the websockets "
        "library offering permessage-deflate, as browsers do (costlier per message)",
    )
    return parser.parse_args()


# --- client processes ---------------------------------------------------------------


class Recorder:
    """Tick latencies and frame counts of one client process."""

    def __init__(self) -> None:
        import orjson

        self._loads = orjson.loads
        self.latencies: list[float] = []
        self.counts = {"ticks": 0, "snapshots": 0, "failed": 0}

    def frame(self, payload: bytes | str) -> str:
        received = time.time()
        frame = self._loads(payload)
        if frame["type"] == "tick":
            self.counts["ticks"] += 1
            self.latencies.append(received - datetime.fromisoformat(frame["as_of"]).timestamp())
        elif frame["type"] == "snapshot":
            self.counts["snapshots"] += 1
        return frame["type"]


class RawSubscriber(asyncio.Protocol):
    """A minimal RFC 6455 client: handshake, unmasked server frames, pong replies.

    The ``websockets`` client spends ~50 us of Python per message, as much as the
    server spends per socket; on a box shared by both it would dominate the figures.
    """

    def __init__(self, host: str, path: str, recorder: Recorder, opened: asyncio.Future):
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
        ).encode()
        self.recorder, self.opened = recorder, opened
        self.buffer = bytearray()
        self.upgraded = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the snapshot"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.transport.close()
                return
            del buffer[: end + 4]
            self.upgraded = True
        while len(buffer) >= 2:
            opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            if opcode == 0x1:
                kind = self.recorder.frame(payload)
                if kind == "snapshot" and not self.opened.done():
                    self.opened.set_result(self)
            elif opcode == 0x9:  # the server's keepalive ping: answer with a masked pong
                mask = os.urandom(4)
                masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)
            elif opcode == 0x8:
                self.transport.close()


def client_process(url, count, client, ready, stop, results) -> None:
    import uvloop

    uvloop.run(_client(url, count, client, ready, stop, results))


async def _client(url, count, client, ready, stop, results) -> None:
    from urllib.parse import urlsplit

    from websockets.asyncio.client import connect

    recorder = Recorder()
    gate = asyncio.Semaphore(64)
    target = urlsplit(url)
    loop = asyncio.get_running_loop()

    async def open_raw():
        opened = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda: RawSubscriber(target.netloc, target.path, recorder, opened),
            target.hostname,
            target.port,
        )
        await asyncio.wait_for(opened, timeout=30)
        return transport

    async def open_websockets():
        ws = await connect(url, compression="deflate", ping_interval=None, max_queue=None)
        assert recorder.frame(await ws.recv()) == "snapshot"

        async def read() -> None:
            try:
                async for message in ws:
                    recorder.frame(message)
            except Exception:  # noqa: S110 - a socket closing at the end of the run
                pass

        ws.reader = asyncio.ensure_future(read())
        return ws

    async def open_one():
        async with gate:
            for attempt in range(5):
                try:
                    return await (open_raw() if client == "raw" else open_websockets())
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.2 * (attempt + 1))
            recorder.counts["failed"] += 1
            return None

    sockets = [ws for ws in await asyncio.gather(*(open_one() for _ in range(count))) if ws]
    recorder.counts["snapshots"] = 0  # count only re-sync snapshots from here on
    ready.put(len(sockets))
    while not stop.is_set():
        await asyncio.sleep(0.05)
    for ws in sockets:
        if client == "raw":
            ws.close()
        else:
            ws.reader.cancel()
            await ws.close()
    results.put({"latencies": recorder.latencies, **recorder.counts, "open": len(sockets)})


# --- server ---------------------------------------------------------------------------


def start_server(args: argparse.Namespace) -> subprocess.Popen:
    port, workers = args.port, args.web_processes
    command = uvicorn_command(
        port=port,
        workers=workers,
        extra=["--ws", args.ws, "--ws-per-message-deflate", str(not args.no_deflate).lower()],
    )
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
            args=(url, share, args.client, ready, stop, results),
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
    server = start_server(args)
    try:
        print(
            f"fanout bench: uvicorn x{args.web_processes} (--ws {args.ws}) on :{args.port}, "
            f"{args.client_processes} client processes, "
            f"client={args.client} "
            f"({'permessage-deflate' if args.client == 'websockets' else 'no compression'}), "
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
