"""Server-Sent Events next to WebSockets: price fan-out, order-fill latency, reconnect storm.

    DATABASE_URL=postgres://postgres@localhost:5432/cv_ssebench \\
    REDIS_URL=redis://localhost:6379/10 .venv/bin/python bench/sse.py

Starts its own uvicorn (``--port``, ``--web-workers``) and Celery worker against the
given database and Redis db (use your own: the Redis db is flushed first), with rate
limits off and the stream caps (``STREAM_MAX_PER_IP``, ``STREAM_MAX_PER_USER``) raised
for the run, since every client comes from 127.0.0.1. Then, in one run:

1. **Price fan-out**: ``--subscribers`` streams on ``GET /api/v1/stream/prices``, then
   as many sockets on ``/ws/prices`` (``--rounds`` pairs, alternating), opened from
   ``--client-processes`` lean clients (raw asyncio sockets: ``bench.fanout``'s raw
   WebSocket client, and a de-chunking SSE parser here). ``--ticks`` ticks
   ``--interval`` s apart are published through the poller's path, each carrying its
   send time as ``as_of``; latency is receive time minus ``as_of``, as in
   ``bench/fanout.py``. Each round has a fresh uvicorn (no round reuses memory another
   freed) and opens a few streams first (what the first ones set up once). Memory per
   stream: the web processes' RSS after the streams opened minus before, divided by
   the streams.
2. **Fill latency**: one user holds ``/api/v1/stream/user`` and ``/ws/user`` open and
   places ``--fills`` market orders over REST, one after the other; for each transport,
   the time from sending the POST to the ``order`` event with status ``filled``, and
   from the fill (the order's ``updated_at``) to that event: the push alone.
3. **Reconnect storm**: ``--storm-streams`` user streams over ``--storm-users`` users go
   live, disconnect; each user places ``--storm-orders`` orders, which fill while the
   streams are away; then all reconnect at once with ``Last-Event-ID``. Every stream
   must get exactly the ids after its last one up to the user's latest, in order (no
   gap, no duplicate); "settle" is from the reconnect to the last stream caught up.

Prints one table. Client and server share this machine's CPUs.
"""

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptovault.settings")

from bench.common import PRICES, stop_all, uvicorn_command  # noqa: E402
from bench.fanout import RawSubscriber, Recorder, Server, rss_bytes  # noqa: E402
from bench.orders import (  # noqa: E402
    COINS,
    keep_prices_fresh,
    percentile,
    prepare,
    start_processes,
    wait_healthy,
    wait_worker_ready,
)
from bench.streams import StreamClient, open_many  # noqa: E402

PRICES_PATH = "/api/v1/stream/prices"
USER_PATH = "/api/v1/stream/user"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between ticks")
    parser.add_argument("--rounds", type=int, default=1, help="SSE/WS pairs of fan-out rounds")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--fills", type=int, default=100)
    parser.add_argument("--storm-streams", type=int, default=1000)
    parser.add_argument("--storm-users", type=int, default=20)
    parser.add_argument("--storm-orders", type=int, default=3, help="per user, while away")
    parser.add_argument("--port", type=int, default=8613)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=2)
    return parser.parse_args()


# --- a lean SSE client ---------------------------------------------------------------


class SseStream(StreamClient):
    """An HTTP/1.1 GET whose chunked ``text/event-stream`` body is parsed into events;
    ``on_event(kind, event_id, data)`` for each. ``opened`` resolves with the status
    once the response head arrived."""

    def __init__(self, path: str, on_event, opened: asyncio.Future, headers: str = "") -> None:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{headers}\r\n"
        ).encode()
        super().__init__(request, opened)
        self.on_event = on_event
        self.events = bytearray()

    def head(self, status: int) -> bool:
        if not self.opened.done():
            self.opened.set_result(status)
        return status == 200

    def body(self, raw: bytearray) -> None:
        while True:  # chunked transfer encoding
            line_end = raw.find(b"\r\n")
            if line_end < 0:
                break
            size = int(raw[:line_end], 16)
            if len(raw) < line_end + 2 + size + 2:
                break
            self.events += raw[line_end + 2 : line_end + 2 + size]
            del raw[: line_end + 2 + size + 2]
            if size == 0:
                self.transport.close()
                break
        events = self.events
        while (end := events.find(b"\n\n")) >= 0:
            block = bytes(events[:end])
            del events[: end + 2]
            kind, event_id, data = "message", None, b""
            for line in block.split(b"\n"):
                if line.startswith(b":"):
                    continue  # a comment: keep-alive
                name, _, value = line.partition(b": ")
                if name == b"event":
                    kind = value.decode()
                elif name == b"id":
                    event_id = int(value)
                elif name == b"data":
                    data = value
            if data:
                self.on_event(kind, event_id, data)


async def sse_open(path: str, on_event, headers: str = "", timeout: float = 60) -> SseStream:
    """An open stream (status 200), or an exception (``RuntimeError`` with the status)."""
    loop = asyncio.get_running_loop()
    opened = loop.create_future()
    port = int(os.environ["BENCH_PORT"])
    _, stream = await loop.create_connection(
        lambda: SseStream(path, on_event, opened, headers), "127.0.0.1", port
    )
    status = await asyncio.wait_for(opened, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"HTTP {status}")
    return stream


# --- 1. price fan-out ----------------------------------------------------------------


def client_process(transport, count, ready, stop, results) -> None:
    import uvloop

    uvloop.run(_client(transport, count, ready, stop, results))


async def _client(transport, count, ready, stop, results) -> None:
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    port = int(os.environ["BENCH_PORT"])

    async def open_ws():
        opened = loop.create_future()
        connection, _ = await loop.create_connection(
            lambda: RawSubscriber(f"127.0.0.1:{port}", "/ws/prices", recorder, opened),
            "127.0.0.1",
            port,
        )
        await asyncio.wait_for(opened, timeout=60)
        return connection

    async def open_sse():
        snapshot = loop.create_future()

        def on_event(kind, event_id, data) -> None:
            recorder.frame(data)
            if kind == "snapshot" and not snapshot.done():
                snapshot.set_result(None)

        stream = await sse_open(PRICES_PATH, on_event)
        await asyncio.wait_for(snapshot, timeout=60)
        return stream.transport

    connections, recorder.counts["failed"] = await open_many(
        count,
        open_sse if transport == "sse" else open_ws,
        retry_on=(OSError, TimeoutError, RuntimeError, ConnectionError),
    )
    recorder.counts["snapshots"] = 0  # count only re-sync snapshots from here on
    ready.put(len(connections))
    while not stop.is_set():
        await asyncio.sleep(0.05)
    for connection in connections:
        connection.close()
    results.put({"latencies": recorder.latencies, **recorder.counts})


class Clients:
    """Client processes holding ``count`` streams of one transport until ``close()``."""

    def __init__(self, transport: str, count: int, processes: int) -> None:
        ctx = mp.get_context("fork")
        self.ready, self.results, self.stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        shares = [count // processes] * processes
        shares[0] += count - sum(shares)
        self.processes = [
            ctx.Process(
                target=client_process,
                args=(transport, share, self.ready, self.stop, self.results),
            )
            for share in shares
        ]
        for process in self.processes:
            process.start()
        self.opened = sum(self.ready.get(timeout=600) for _ in self.processes)

    def close(self) -> list[dict]:
        self.stop.set()
        reports = [self.results.get(timeout=120) for _ in self.processes]
        for process in self.processes:
            process.join(timeout=30)
        return reports


def start_web(args) -> Server:
    """A fresh uvicorn, so that no round reuses memory another round freed."""
    env = {**os.environ, "RATELIMIT_ENABLE": "false", "LOG_LEVEL": "WARNING"}
    command = uvicorn_command(port=args.port, workers=args.web_workers)
    web = subprocess.Popen(command, cwd=ROOT, env=env)  # noqa: S603 - fixed arguments
    asyncio.run(wait_healthy(args.port))
    time.sleep(3)  # every worker accepting
    return Server("platform", args.port, [web])


def fanout_round(args, transport: str) -> dict:
    from markets.realtime import prices_tick_publish

    server = start_web(args)
    try:
        # What the first streams set up once (threads, connections, the subscription)
        # is not per stream: a few streams open and close before the measure.
        Clients(transport, 10 * args.web_workers, args.client_processes).close()
        time.sleep(1.0)
        pids = server.pids()
        rss_before = rss_bytes(pids)
        clients = Clients(transport, args.subscribers, args.client_processes)
        time.sleep(1.0)
        rss_after = rss_bytes(pids)
        reports = _ticks(args, prices_tick_publish, clients)
    finally:
        server.stop()
    opened = clients.opened
    latencies = [x for report in reports for x in report["latencies"]]
    received = sum(report["ticks"] for report in reports)
    result = {
        "transport": transport,
        "open": opened,
        "failed": sum(report["failed"] for report in reports),
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "max": max(latencies, default=float("nan")) * 1000,
        "dropped": args.ticks * opened - received,
        "resyncs": sum(report["snapshots"] for report in reports),
        "kib_per_stream": (rss_after - rss_before) / max(opened, 1) / 1024,
        "load": os.getloadavg()[0],
    }
    print(f"  fan-out {transport}: {result}", flush=True)
    return result


def _ticks(args, publish, clients: Clients) -> list[dict]:
    entries = {coin: {"usd": price, "change_24h_pct": "1.234"} for coin, price in PRICES.items()}
    for _ in range(args.ticks):
        as_of = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        publish(as_of=as_of, prices=entries)
        time.sleep(args.interval)
    time.sleep(2.0)  # the last tick lands everywhere
    return clients.close()


# --- 2. fill latency -------------------------------------------------------------------


async def post_order(client, token: str) -> int:
    response = await client.post(
        "/api/v1/orders",
        json={"coin": "bitcoin", "side": "buy", "type": "market", "quantity": "0.0001"},
        headers={"Authorization": f"Bearer {token}"},
    )
    if response.status_code != 201:
        raise RuntimeError(f"order refused: {response.status_code} {response.text[:200]}")
    return response.json()["id"]


def fill_times(order_ids: list[int]) -> dict[int, float]:
    """When each order was filled (its last update, in the fill's transaction)."""
    from orders.models import Order

    rows = Order.objects.filter(pk__in=order_ids).values_list("pk", "updated_at")
    return {pk: updated.timestamp() for pk, updated in rows}


async def fill_latency(args, token: str) -> dict:
    import httpx
    import orjson
    from asgiref.sync import sync_to_async
    from websockets.asyncio.client import connect

    # order id -> (monotonic, wall clock) when its filled event arrived
    filled: dict[str, dict[int, tuple[float, float]]] = {"sse": {}, "ws": {}}

    def seen(transport: str, data) -> None:
        frame = orjson.loads(data)
        if frame.get("type") == "order" and frame["order"]["status"] == "filled":
            filled[transport].setdefault(frame["order"]["id"], (time.monotonic(), time.time()))

    stream = await sse_open(
        USER_PATH,
        lambda kind, event_id, data: seen("sse", data),
        headers=f"Authorization: Bearer {token}\r\n",
    )
    url = f"ws://127.0.0.1:{args.port}/ws/user?token={token}"
    async with (
        connect(url, ping_interval=None) as ws,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{args.port}", timeout=30) as client,
    ):

        async def read_ws() -> None:
            async for message in ws:
                seen("ws", message)

        reader = asyncio.ensure_future(read_ws())
        sent: dict[int, float] = {}
        for _ in range(args.fills):
            started = time.monotonic()
            order_id = await post_order(client, token)
            sent[order_id] = started
            deadline = time.monotonic() + 30
            while not all(order_id in got for got in filled.values()):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.05)
        reader.cancel()
    stream.transport.close()
    fills_at = await sync_to_async(fill_times)(list(sent))
    result = {}
    for transport, got in filled.items():
        lags = [got[order_id][0] - at for order_id, at in sent.items() if order_id in got]
        pushes = [got[order_id][1] - fills_at[order_id] for order_id in sent if order_id in got]
        result[transport] = {
            "n": len(lags),
            "missing": len(sent) - len(lags),
            "p50": percentile(lags, 50) * 1000,
            "p99": percentile(lags, 99) * 1000,
            "push_p50": percentile(pushes, 50) * 1000,
            "push_p99": percentile(pushes, 99) * 1000,
        }
    print(f"  fill latency: {result}", flush=True)
    return result


# --- 3. reconnect storm ---------------------------------------------------------------


class UserStream:
    """One user stream's ids across connections."""

    def __init__(self, user_id: int, token: str, last_id: int) -> None:
        self.user_id, self.token, self.last_id = user_id, token, last_id
        self.ids: list[int] = []  # received on the current connection
        self.refusals: list[str] = []  # why an attempt failed ("HTTP 503", ...)
        self.stream: SseStream | None = None

    def on_event(self, kind: str, event_id: int | None, data: bytes) -> None:
        if event_id is not None:
            self.ids.append(event_id)
            if kind == "reset":
                self.ids.append(-1)  # never expected: counted as wrong

    async def connect(self, *, gate: asyncio.Semaphore | None = None) -> int:
        """Opens with Last-Event-ID = the last id seen; returns the attempts it took."""
        self.ids = []
        headers = f"Authorization: Bearer {self.token}\r\nLast-Event-ID: {self.last_id}\r\n"
        for attempt in range(1, 11):
            try:
                if gate is None:
                    self.stream = await sse_open(USER_PATH, self.on_event, headers)
                else:
                    async with gate:
                        self.stream = await sse_open(USER_PATH, self.on_event, headers)
                return attempt
            except (OSError, TimeoutError, RuntimeError, ConnectionError) as exc:
                self.refusals.append(str(exc) or type(exc).__name__)
                await asyncio.sleep(0.2 * attempt)
        raise RuntimeError("stream did not open in 10 attempts")

    def disconnect(self) -> None:
        if self.ids:
            self.last_id = self.ids[-1]
        assert self.stream is not None
        self.stream.transport.close()

    def caught_up(self, target: int) -> bool:
        return (self.ids[-1] if self.ids else self.last_id) >= target


async def wait_filled(order_ids: list[int]) -> dict[int, int]:
    """Until no order is pending; then each user's latest event id."""
    from asgiref.sync import sync_to_async

    from notifications.events import event_last_id
    from orders.models import Order

    @sync_to_async
    def pending_and_last() -> tuple[bool, dict[int, int]]:
        orders = Order.objects.filter(pk__in=order_ids)
        pending = orders.filter(status="pending").exists()
        users = set(orders.values_list("user_id", flat=True))
        return pending, {user_id: event_last_id(user_id=user_id) for user_id in users}

    deadline = time.monotonic() + 120
    while True:
        pending, last = await pending_and_last()
        if not pending or time.monotonic() > deadline:
            await asyncio.sleep(0.5)  # the fills' notifications commit with them
            return (await pending_and_last())[1]
        await asyncio.sleep(0.2)


async def storm(args, users: list[tuple[int, str]]) -> dict:
    import httpx
    from asgiref.sync import sync_to_async

    from notifications.events import event_last_id

    last_ids = {
        user_id: await sync_to_async(event_last_id)(user_id=user_id) for user_id, _ in users
    }
    streams = [
        UserStream(user_id, token, last_ids[user_id])
        for i in range(args.storm_streams)
        for user_id, token in [users[i % len(users)]]
    ]
    gate = asyncio.Semaphore(64)
    await asyncio.gather(*(s.connect(gate=gate) for s in streams))

    async def wait_caught_up(targets: dict[int, int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(s.caught_up(targets[s.user_id]) for s in streams):
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.01)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{args.port}", timeout=60) as client:

        async def place(count: int) -> list[int]:
            return list(
                await asyncio.gather(
                    *(post_order(client, token) for _, token in users for _ in range(count))
                )
            )

        # Live first: every stream sees one order per user, so each knows its last id.
        targets = await wait_filled(await place(1))
        await wait_caught_up(targets, 60)
        live_ok = all(s.caught_up(targets[s.user_id]) for s in streams)
        for s in streams:
            s.disconnect()
        await asyncio.sleep(1.0)  # the server sees them gone
        away_from = {id(s): s.last_id for s in streams}
        targets = await wait_filled(await place(args.storm_orders))

    for s in streams:
        s.refusals = []
    started = time.monotonic()
    attempts = await asyncio.gather(*(s.connect() for s in streams))
    connected = time.monotonic() - started
    await wait_caught_up(targets, 120)
    settled = time.monotonic() - started
    await asyncio.sleep(1.0)  # anything late (a duplicate) would land now
    missed = gaps = duplicates = wrong = exact = 0
    for s in streams:
        expected = list(range(away_from[id(s)] + 1, targets[s.user_id] + 1))
        missed += len(expected)
        got = s.ids
        duplicates += len(got) - len(set(got))
        gaps += len(set(expected) - set(got))
        wrong += len(set(got) - set(expected))
        exact += got == expected
        s.stream.transport.close()
    result = {
        "streams": len(streams),
        "users": len(users),
        "live_ok": live_ok,
        "missed_events": missed,
        "exact_streams": exact,
        "gaps": gaps,
        "duplicates": duplicates,
        "wrong": wrong,
        "retried": sum(1 for a in attempts if a > 1),
        "refusals": dict(Counter(r for s in streams for r in s.refusals)),
        "connect_s": connected,
        "settle_s": settled,
    }
    print(f"  storm: {result}", flush=True)
    return result


# --- the run --------------------------------------------------------------------------


def print_table(args, fanout: list[dict], fills: dict, storm_result: dict) -> None:
    print(
        f"\nSSE bench {datetime.now(UTC):%Y-%m-%d}: {args.web_workers} web processes, "
        f"{args.client_processes} client processes, {os.cpu_count()} CPUs shared, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(f"{'measure':44}{'SSE':>22}{'WebSocket':>22}")

    def row(label: str, sse, ws) -> None:
        print(f"{label:44}{sse:>22}{ws:>22}")

    by = {t: [r for r in fanout if r["transport"] == t] for t in ("sse", "ws")}

    def joined(transport: str, key: str, fmt: str) -> str:
        return ", ".join(format(r[key], fmt) for r in by[transport])

    n = args.subscribers
    row(f"price streams open (of {n})", joined("sse", "open", "d"), joined("ws", "open", "d"))
    for key, label in (("p50", "p50"), ("p99", "p99"), ("max", "max")):
        row(
            f"  tick latency {label}, ms ({args.ticks} ticks)",
            joined("sse", key, ".0f"),
            joined("ws", key, ".0f"),
        )
    row("  ticks dropped", joined("sse", "dropped", "d"), joined("ws", "dropped", "d"))
    row(
        "  web RSS per stream, KiB",
        joined("sse", "kib_per_stream", ".1f"),
        joined("ws", "kib_per_stream", ".1f"),
    )
    for key in ("p50", "p99"):
        row(
            f"POST order -> filled event {key}, ms ({args.fills} orders)",
            f"{fills['sse'][key]:.0f}",
            f"{fills['ws'][key]:.0f}",
        )
    for key in ("push_p50", "push_p99"):
        row(
            f"  fill commit -> event {key[5:]}, ms",
            f"{fills['sse'][key]:.0f}",
            f"{fills['ws'][key]:.0f}",
        )
    row("  fill events missing", fills["sse"]["missing"], fills["ws"]["missing"])
    s = storm_result
    print(
        f"reconnect storm (SSE, Last-Event-ID): {s['streams']} streams of {s['users']} users, "
        f"{args.storm_orders} orders per user while away; "
        f"live before: {'every stream caught up' if s['live_ok'] else 'SOME STREAMS BEHIND'}\n"
        f"  missed events to replay {s['missed_events']}: streams exact {s['exact_streams']}"
        f"/{s['streams']}, gaps {s['gaps']}, duplicates {s['duplicates']}, "
        f"unexpected {s['wrong']}\n"
        f"  streams refused at first and retried {s['retried']} "
        f"(refusals: {s['refusals'] or 'none'})\n"
        f"  all reconnected in {s['connect_s']:.1f} s, settled in {s['settle_s']:.1f} s"
    )


def main() -> int:
    args = parse_args()
    # Every client is 127.0.0.1; the caps would refuse the bench's own streams.
    os.environ["STREAM_MAX_PER_IP"] = str(10 * (args.subscribers + args.storm_streams))
    os.environ["STREAM_MAX_PER_USER"] = str(args.storm_streams + 10)
    os.environ["BENCH_PORT"] = str(args.port)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers
    tokens = [trader.token for trader in prepare(max(args.storm_users, 1), fill_emails=False)]
    from accounts.models import User
    from markets.services import prices_record

    prices_record(prices={coin: Decimal(price) for coin, price in PRICES.items()})
    emails = [f"bench-trader-{i}@bench.invalid" for i in range(len(tokens))]
    ids = dict(User.objects.filter(email__in=emails).values_list("email", "pk"))
    users = [(ids[email], token) for email, token in zip(emails, tokens, strict=True)]

    print(f"sse bench: load average {os.getloadavg()[0]:.1f} before the run", flush=True)
    fanout = []
    for _ in range(args.rounds):
        for transport in ("sse", "ws"):
            fanout.append(fanout_round(args, transport))
    # uvicorn --workers N on one port: the storm opens its streams over time, which the
    # shared socket spreads well enough (orders.py's 32 keep-alive connections opened at
    # once it did not, hence its port per process).
    processes = start_processes(args, port_per_web_process=False)
    stop = threading.Event()
    try:
        asyncio.run(wait_healthy(args.port))
        time.sleep(5)  # every uvicorn worker accepting
        wait_worker_ready()
        threading.Thread(target=keep_prices_fresh, args=(stop,), daemon=True).start()
        prices_record(prices=COINS)
        fills = asyncio.run(fill_latency(args, users[0][1]))
        storm_result = asyncio.run(storm(args, users))
        print_table(args, fanout, fills, storm_result)
        ok = (
            storm_result["live_ok"]
            and storm_result["exact_streams"] == storm_result["streams"]
            and not fills["sse"]["missing"]
            and not fills["ws"]["missing"]
        )
        return 0 if ok else 1
    finally:
        stop.set()
        stop_all(processes)


if __name__ == "__main__":
    sys.exit(main())
