"""/ws/prices fan-out: N WebSocket subscribers on real uvicorn web processes receive ticks.

    DATABASE_URL=postgres://postgres@localhost:5432/cv_realtime \\
    REDIS_URL=redis://localhost:6379/13 .venv/bin/python bench/fanout.py [--rounds 2]

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

Next to it, with the same clients, a *peer*: a bare ``websockets`` server (its public
``websockets.asyncio.server.serve`` and ``websockets.broadcast``, as many processes as
web processes, sharing the port with ``SO_REUSEPORT``) subscribed to the same Redis
channel, which sends each tick to all its sockets with ``websockets.broadcast``. Rounds
alternate peer, platform, peer, platform (``--rounds`` pairs), since the machine may be
shared; a summary prints each side's p50/p99 and the ratio of the platform's p99 to the
peer's (medians over the rounds).

Goal: at 5,000 subscribers the platform's p99 within 1.25x of the peer's, zero drops;
10,000 idle connections per process within 1.5 GiB. ``--client raw`` (default) is a
minimal client that costs little CPU per message; ``--client websockets`` offers
permessage-deflate as browsers do.
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

from bench.common import PRICES, production_env, serving_pids, stop_all, uvicorn_command  # noqa: E402
from bench.streams import StreamClient, open_many  # noqa: E402

# Production settings, as deployed; the server started below inherits them.
for _name, _value in production_env().items():
    os.environ.setdefault(_name, _value)
# uvicorn logs every WebSocket handshake at INFO: thousands of lines per round.
os.environ.setdefault("LOG_LEVEL", "WARNING")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", default="1000,5000", help="comma-separated sizes")
    parser.add_argument("--ticks", type=int, default=10)
    # Production polls every PRICE_POLL_SECONDS (10 s); 2 s keeps each tick a separate
    # burst (as in production) while keeping the run short.
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between ticks")
    parser.add_argument("--web-processes", type=int, default=2)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="peer/platform pairs per size")
    parser.add_argument(
        "--only", choices=["both", "platform", "peer"], default="both", help="servers to run"
    )
    parser.add_argument("--serve-peer", type=int, metavar="PORT", help=argparse.SUPPRESS)
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


class RawSubscriber(StreamClient):
    """A minimal RFC 6455 client: handshake, unmasked server frames, pong replies.

    The ``websockets`` client spends ~50 us of Python per message, as much as the
    server spends per socket; on a box shared by both it would dominate the figures.
    """

    def __init__(self, host: str, path: str, recorder: Recorder, opened: asyncio.Future):
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
        ).encode()
        super().__init__(request, opened)
        self.recorder = recorder

    def head(self, status: int) -> bool:
        return status == 101

    def body(self, buffer: bytearray) -> None:
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

    sockets, recorder.counts["failed"] = await open_many(
        count, open_raw if client == "raw" else open_websockets, retry_on=(OSError, TimeoutError)
    )
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


# --- servers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port: int, processes: list[subprocess.Popen], settle: float) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            time.sleep(settle)  # let every process start accepting
            return
        except OSError:
            time.sleep(0.2)
    for process in processes:
        process.kill()
    raise SystemExit(f"server on :{port} did not start")


class Server:
    """A running fan-out server: the platform (uvicorn) or the peer (bare websockets)."""

    def __init__(self, name: str, port: int, processes: list[subprocess.Popen]) -> None:
        self.name, self.port, self.processes = name, port, processes

    def pids(self) -> list[int]:
        """The processes serving sockets: uvicorn's workers, or the servers themselves."""
        return [pid for process in self.processes for pid in serving_pids(process.pid)]

    def stop(self) -> None:
        stop_all(self.processes)


def start_platform(args: argparse.Namespace) -> Server:
    port, workers = free_port(), args.web_processes
    command = uvicorn_command(
        port=port,
        workers=workers,
        extra=["--ws", args.ws, "--ws-per-message-deflate", str(not args.no_deflate).lower()],
    )
    server = subprocess.Popen(command, cwd=ROOT)  # noqa: S603 - fixed arguments
    wait_listening(port, [server], 1.0 if workers > 1 else 0.2)
    return Server("platform", port, [server])


def start_peer(args: argparse.Namespace) -> Server:
    from markets.realtime import prices_channel
    from markets.selectors import prices_snapshot_bytes

    port = free_port()
    # The peer imports no Django: it gets the channel and the snapshot text from here.
    snapshot = '{"type":"snapshot",' + prices_snapshot_bytes().decode()[1:]
    command = [sys.executable, __file__, "--serve-peer", str(port)]
    if args.no_deflate:
        command.append("--no-deflate")
    env = {**os.environ, "PEER_CHANNEL": prices_channel(), "PEER_SNAPSHOT": snapshot}
    processes = [
        subprocess.Popen(command, cwd=ROOT, env=env)  # noqa: S603 - fixed arguments
        for _ in range(args.web_processes)
    ]
    wait_listening(port, processes, 0.5)
    return Server("peer", port, processes)


def serve_peer(port: int, deflate: bool) -> None:
    """One peer process: the tick's text to every socket with ``websockets.broadcast``
    (which frames, and compresses if negotiated, per socket, as uvicorn does)."""
    import uvloop

    uvloop.run(_serve_peer(port, deflate))


async def _serve_peer(port: int, deflate: bool) -> None:
    import orjson
    import redis.asyncio as aioredis
    from websockets import ConnectionClosed, broadcast
    from websockets.asyncio.server import serve

    snapshot = os.environ["PEER_SNAPSHOT"]
    connections = set()

    async def handler(connection) -> None:
        await connection.send(snapshot)
        connections.add(connection)
        try:
            async for message in connection:
                if orjson.loads(message).get("type") == "ping":
                    await connection.send('{"type":"pong"}')
        except ConnectionClosed:
            pass  # the raw client drops its sockets without a closing handshake
        finally:
            connections.discard(connection)

    client = aioredis.Redis.from_url(os.environ["REDIS_URL"])
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(os.environ["PEER_CHANNEL"])
    async with serve(
        handler,
        "127.0.0.1",
        port,
        reuse_port=True,
        compression="deflate" if deflate else None,
        max_queue=None,
    ):
        async for message in pubsub.listen():
            broadcast(connections, message["data"].decode())


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


def run_round(args, server: Server, subscribers: int) -> dict:
    from markets.realtime import prices_tick_publish

    ctx = mp.get_context("fork")
    ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    url = f"ws://127.0.0.1:{server.port}/ws/prices"
    shares = [subscribers // args.client_processes] * args.client_processes
    shares[0] += subscribers - sum(shares)
    pids = server.pids()
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

    def ms(q: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    print(
        f"[{server.name}] subscribers={subscribers} open={opened} "
        f"failed={sum(r['failed'] for r in reports)} "
        f"connect={connect_seconds:.1f}s processes={len(pids)} "
        f"load={os.getloadavg()[0]:.1f}\n"
        f"  ticks={args.ticks} every {args.interval}s  latency ms: p50={ms(0.50):.1f} "
        f"p99={ms(0.99):.1f} max={ms(1.0):.1f} "
        f"mean={statistics.fmean(latencies) * 1000 if latencies else 0:.1f}\n"
        f"  CPU per tick: server {web_cpu / args.ticks * 1000:.0f} ms, "
        f"clients {client_cpu / args.ticks * 1000:.0f} ms\n"
        f"  dropped={expected - received} of {expected} "
        f"(re-sync snapshots={sum(r['snapshots'] for r in reports)})\n"
        f"  server RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB, "
        f"{per_thousand / 2**20:.1f} MiB per 1,000 connections",
        flush=True,
    )
    return {"p50": ms(0.50), "p99": ms(0.99), "dropped": expected - received}


def summarize(results: dict[tuple[int, str], list[dict]]) -> None:
    print("\nsummary (median over rounds; ratio = platform p99 / peer p99):", flush=True)
    for size in sorted({size for size, _ in results}):
        sides = {name: results.get((size, name), []) for name in ("peer", "platform")}
        line = [f"  {size} subscribers:"]
        for name, rounds in sides.items():
            if rounds:
                p50s = ", ".join(f"{r['p50']:.0f}" for r in rounds)
                p99s = ", ".join(f"{r['p99']:.0f}" for r in rounds)
                line.append(f"{name} p50 [{p50s}] p99 [{p99s}] ms;")
        if sides["peer"] and sides["platform"]:
            ratio = statistics.median(r["p99"] for r in sides["platform"]) / statistics.median(
                r["p99"] for r in sides["peer"]
            )
            line.append(f"ratio {ratio:.2f}")
        print(" ".join(line), flush=True)


def main() -> None:
    args = parse_args()
    if args.serve_peer:
        serve_peer(args.serve_peer, deflate=not args.no_deflate)
        return
    import django

    django.setup()
    from markets.services import prices_record

    prices_record(prices={coin: Decimal(price) for coin, price in PRICES.items()})
    names = ["peer", "platform"] if args.only == "both" else [args.only]
    servers = {}
    try:
        for name in names:
            servers[name] = start_peer(args) if name == "peer" else start_platform(args)
        print(
            f"fanout bench: {' and '.join(names)}, {args.web_processes} server processes each "
            f"(platform: uvicorn --ws {args.ws}), {args.client_processes} client processes, "
            f"client={args.client} "
            f"({'permessage-deflate' if args.client == 'websockets' else 'no compression'}), "
            f"{os.cpu_count()} CPUs shared by servers and clients, "
            f"load average {os.getloadavg()[0]:.1f} before the run",
            flush=True,
        )
        results: dict[tuple[int, str], list[dict]] = {}
        for size in (int(s) for s in args.subscribers.split(",")):
            for _ in range(args.rounds):
                for name in names:  # interleaved: a load spike hits both sides alike
                    results.setdefault((size, name), []).append(
                        run_round(args, servers[name], size)
                    )
                    time.sleep(2.0)  # sockets of the round wind down
        summarize(results)
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
