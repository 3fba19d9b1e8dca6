"""Order throughput: users placing market orders over real HTTP, filled by a real worker.

    DATABASE_URL=postgres://postgres@localhost:5432/cv_orders \\
    REDIS_URL=redis://localhost:6379/12 .venv/bin/python bench/orders.py

Starts its own web processes (``--web-workers``, default 2: one uvicorn each, on
``--port``, default 8612, and the ports just above it; the client spreads its
connections evenly over them) and Celery worker against the given
database and Redis db (use your own: the Redis db is flushed first), creates
``--users`` funded users with live sessions, keeps prices fresh, and has
``--concurrency`` keep-alive connections POST market orders for ``--duration``
seconds. Then it waits for the queue to drain and prints: orders/s accepted and
filled, p50/p99 POST latency, p50/p99 place→filled latency (from the orders'
own timestamps), the CPU each part used per order (web, worker, PostgreSQL, this
client), and checks the ledger invariant. Rate limits are switched off
for the run (``RATELIMIT_ENABLE=false``), as load tests need.

``--via ws`` then places the same orders over ``/ws/user`` as well, in the same run
(one socket per connection, each for one user): ``order.place`` → ``order.ack``
latency, and place→filled as the client sees it (its ``filled`` order event), next
to the REST figures above.

``--via binance`` runs the load twice in one run, on the same servers and users: first
through the native API (bearer tokens, JSON), then through the Binance-compatible API
(``POST /binance/api/v3/order``, form body, HMAC-signed with each user's API key,
``newOrderRespType=ACK``: the native POST answers before the fill too), and prints the
two side by side with their ratio (goal: >= 0.8x).

``--ceiling PATH`` runs the same clients, tokens and servers against a GET of
``PATH`` instead (``/api/v1/auth/me``: an authenticated DRF read that does no work;
``/api/v1/auth/public-key``: an anonymous one). No order can be placed faster than
that, so its requests/s and p99 bound what this machine can give the order path.

``--limit-book N`` then rests N open limit buys (spread over the users, straight into
the database with their reservations), records a price that crosses them all, runs the
poll's hook, and reports how long until the last one filled and whether every user's
fills kept the order of placing.

``--goals`` runs, in one invocation and on the same servers, the phases issue 18 sets
goals for and prints each ratio: the ceiling (``/api/v1/auth/me``, ``--concurrency``
connections), light load (2 connections, 20 users), saturation (``--concurrency``
connections, every user) and the limit book (``--limit-book``, default 10,000).
Goals: light place->filled p50 <= 20 ms and p99 <= 100 ms; saturation filled/s >= 0.5x
the ceiling's requests/s with POST p99 <= 2x the ceiling's p99; the limit book filled
within 1 s, in order per user; 0 ledger mismatches, 0 lost, 0 double-filled.

Every order run ends with the integrity checks: the ledger and reservation invariants,
negative balances, orders lost (still pending) and double-filled.
"""

import argparse
import asyncio
import hashlib
import hmac
import itertools
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptovault.settings")

from bench.common import (  # noqa: E402
    CpuMeter,
    connections_per_process,
    machine_cpu_seconds,
    production_env,
    serving_pids,
    stop_all,
    uvicorn_command,
)

# A production-like configuration (no debug query log), shared with the server and
# worker started below, which must verify the tokens this process issues.
for name, value in production_env().items():
    os.environ.setdefault(name, value)
os.environ["DEBUG"] = "false"

COINS = {"bitcoin": Decimal("65000"), "ethereum": Decimal("3000")}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--port", type=int, default=8612)
    parser.add_argument(
        "--web-workers",
        type=int,
        default=2,
        help="web processes: one uvicorn each, on --port and the ports just above it",
    )
    parser.add_argument(
        "--shared-socket",
        action="store_true",
        help="the web processes as one uvicorn --workers N on --port, sharing its listening "
        "socket (how this bench ran until issue 18's one-core ceiling: see start_processes)",
    )
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after /health")
    parser.add_argument(
        "--no-fill-emails",
        action="store_true",
        help="users opt out of order_filled emails (on by default for new users)",
    )
    parser.add_argument(
        "--via",
        choices=("native", "ws", "binance"),
        default="native",
        help="ws: also place orders over /ws/user after the native load, in the same run; "
        "binance: the native load, then the same through the Binance-compatible API",
    )
    parser.add_argument(
        "--ceiling",
        metavar="PATH",
        help="GET PATH (with a bearer token) instead of placing orders, to measure the stack",
    )
    parser.add_argument(
        "--limit-book",
        type=int,
        default=0,
        metavar="N",
        help="after the load, fill N resting limit orders with one crossing poll",
    )
    parser.add_argument(
        "--goals", action="store_true", help="ceiling, light, saturation and limit book in one run"
    )
    args = parser.parse_args()
    if args.goals and (args.ceiling or args.via != "native"):
        parser.error("--goals runs its own phases: no --ceiling or --via with it")
    return args


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


BENCH_PASSWORD = "bench-password-not-secret"  # noqa: S105 - the bench users' own


@dataclass(frozen=True)
class Trader:
    token: str
    key: str = ""
    secret: str = ""


def prepare(n_users: int, *, fill_emails: bool = True, api_keys: bool = False) -> list[Trader]:
    """Migrate, seed coins and prices, and return one access token (and with
    ``api_keys`` one HMAC API key) per funded user."""
    import django

    django.setup()
    from django.core.management import call_command
    from django_redis import get_redis_connection

    from accounts.models import User
    from accounts.services import api_key_create, api_keys_revoke_all, session_start
    from markets.services import coins_seed, prices_record
    from notifications.services import notification_preferences_update
    from orders.models import Balance
    from orders.services import wallet_adjust

    call_command("migrate", verbosity=0)
    get_redis_connection("default").flushdb()
    coins_seed(coin_ids=list(COINS))
    prices_record(prices=COINS)
    funding = {"usd": Decimal("10000000"), "bitcoin": Decimal("100"), "ethereum": Decimal("1000")}
    traders = []
    for i in range(n_users):
        user, _ = User.objects.get_or_create(
            email=f"bench-trader-{i}@bench.invalid",
            defaults={"email_verified_at": django.utils.timezone.now()},
        )
        for asset, amount in funding.items():
            balance = Balance.objects.filter(user=user, asset=asset).first()
            have = balance.available if balance else Decimal(0)
            if have < amount:
                wallet_adjust(user=user, asset=asset, amount=amount - have, reason="bench")
        notification_preferences_update(user=user, email={"order_filled": fill_emails})
        _, issued = session_start(user=user)
        if not api_keys:
            traders.append(Trader(token=issued["access"]))
            continue
        user.set_password(BENCH_PASSWORD)
        user.save(update_fields=["password"])
        api_keys_revoke_all(user=user, reason="bench")  # a rerun's keys replace the last's
        api_key, secret = api_key_create(
            user=user, label="bench", scopes=["read", "trade"], password=BENCH_PASSWORD
        )
        assert secret is not None
        traders.append(Trader(token=issued["access"], key=api_key.key, secret=secret))
    return traders


# What keep_prices_fresh records (the limit book moves bitcoin).
CURRENT = dict(COINS)


def keep_prices_fresh(stop: threading.Event) -> None:
    """What the poller does every few seconds (without the tick fan-out)."""
    from django.db import connection

    from markets.services import prices_record

    while not stop.wait(5):
        prices_record(prices=dict(CURRENT))
    connection.close()


def web_ports(args: argparse.Namespace) -> list[int]:
    """One port per web process: ``--port``, then the ports just above it (only
    ``--port`` with ``--shared-socket``)."""
    return [args.port + n for n in range(1 if args.shared_socket else args.web_workers)]


def start_processes(
    args: argparse.Namespace, *, port_per_web_process: bool = True
) -> list[subprocess.Popen]:
    """The web processes (one uvicorn per port of ``web_ports``; without
    ``port_per_web_process``, one ``uvicorn --workers N`` on ``--port``), then the worker.

    Not one ``uvicorn --workers N`` on one port (``--shared-socket``): its processes
    accept from one shared listening socket, and whichever wakes first takes the
    connections queued at that moment, and the 32 keep-alive connections open at once
    (measured: 5/27, 12/20, 26/6 and 6/26 of 32; both light-load connections on one
    process in four runs of five). Each process runs Django's sync code under its own
    GIL, so it stops near one core whatever connections it holds: a process holding nearly
    all of them on an otherwise idle machine makes the ceiling one core's, not the stack's.
    Nor one socket per process on one port with ``SO_REUSEPORT`` (uvicorn's ``--fd``):
    the kernel picks a socket by a hash of each connection's addresses, a random split
    (20/12 or worse about one run in five with 32 connections; both of 2 on one process
    half the time). The clients spread their connections evenly over the ports instead
    (connection n to process n mod N), as nginx's ``least_conn`` upstream
    (``deploy/nginx.conf``) spreads long-lived connections over web instances.
    """
    env = {**os.environ, "RATELIMIT_ENABLE": "false", "LOG_LEVEL": "WARNING"}
    python = sys.executable
    commands = (
        [uvicorn_command(port=port) for port in web_ports(args)]
        if port_per_web_process
        else [uvicorn_command(port=args.port, workers=args.web_workers)]
    )
    webs = [
        subprocess.Popen(command, cwd=ROOT, env=env)  # noqa: S603 - our own interpreter
        for command in commands
    ]
    worker = subprocess.Popen(  # noqa: S603
        [
            python, "-m", "celery", "-A", "cryptovault", "worker", "-Q", "orders,celery",
            "--concurrency", str(args.worker_concurrency), "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return [*webs, worker]


def wait_worker_ready(timeout: float = 180.0) -> None:
    """Until the worker has run a task from the ``orders`` queue (its startup runs the
    system checks and can take a while on a busy machine)."""
    from django_redis import get_redis_connection

    from orders.services import QUEUE_RUN_KEY
    from orders.tasks import order_queue_process

    redis = get_redis_connection("default")
    redis.set(QUEUE_RUN_KEY, 1)
    order_queue_process.delay()  # nothing pending: the run only clears its mark
    deadline = time.monotonic() + timeout
    while redis.exists(QUEUE_RUN_KEY):
        if time.monotonic() > deadline:
            raise RuntimeError("worker did not start")
        time.sleep(0.2)


async def wait_healthy(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            await writer.drain()
            status_line = await reader.readline()
            writer.close()
            if b" 200 " in status_line:
                return
        except OSError:
            pass
        await asyncio.sleep(0.3)
    raise RuntimeError("server did not become healthy")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while True:  # chunked
        size = int((await reader.readline()).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body
        body += chunk[:-2]


def order_request(token: str) -> bytes:
    coin = random.choice(list(COINS))
    side = random.choice(("buy", "sell"))
    body = f'{{"coin":"{coin}","side":"{side}","type":"market","quantity":"0.0001"}}'.encode()
    return (
        f"POST /api/v1/orders HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


BINANCE_SYMBOLS = {"bitcoin": "BTCUSD", "ethereum": "ETHUSD"}


def binance_order_request(trader: Trader) -> bytes:
    """The same order as ``order_request``, as ccxt sends it to Binance: a form body
    signed with the user's key (hex HMAC-SHA256 of the body)."""
    symbol = BINANCE_SYMBOLS[random.choice(list(COINS))]
    side = random.choice(("BUY", "SELL"))
    params = (
        f"symbol={symbol}&side={side}&type=MARKET&quantity=0.0001&newOrderRespType=ACK"
        f"&timestamp={int(time.time() * 1000)}&recvWindow=10000"
    )
    signature = hmac.new(trader.secret.encode(), params.encode(), hashlib.sha256).hexdigest()
    body = f"{params}&signature={signature}".encode()
    return (
        f"POST /binance/api/v3/order HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-MBX-APIKEY: {trader.key}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def get_request(path: str, token: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()


async def client(
    args: argparse.Namespace,
    traders: list[Trader],
    until: float,
    stats: dict,
    *,
    via: str,
    port: int,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < until:
            trader = random.choice(traders)
            if args.ceiling:
                request = get_request(args.ceiling, trader.token)
            elif via == "binance":
                request = binance_order_request(trader)
            else:
                request = order_request(trader.token)
            started = time.monotonic()
            writer.write(request)
            await writer.drain()
            status, _ = await read_response(reader)
            stats["latency"].append(time.monotonic() - started)
            stats["status"][status] = stats["status"].get(status, 0) + 1
    finally:
        writer.close()


async def ws_client(
    args: argparse.Namespace, token: str, until: float, stats: dict, *, port: int
) -> None:
    """One user's socket: one ``order.place`` at a time, waiting for its ack; the fill
    events arrive on the same socket meanwhile. After ``until``, waits for the fills
    of what it placed (up to ``--drain-timeout``)."""
    import orjson
    import websockets

    placed: dict[int, float] = {}  # order id -> when its place was sent
    filled: set[int] = set()

    def on_event(frame: dict, now: float) -> None:
        order = frame["order"]
        if order["status"] == "filled" and order["id"] in placed and order["id"] not in filled:
            filled.add(order["id"])
            stats["fill_lag"].append(now - placed[order["id"]])

    url = f"ws://127.0.0.1:{port}/ws/user?token={token}"
    async with websockets.connect(url, max_queue=None, compression=None) as socket:
        for request_id in itertools.count():
            if time.monotonic() >= until:
                break
            coin = random.choice(list(COINS))
            side = random.choice(("buy", "sell"))
            started = time.monotonic()
            await socket.send(
                f'{{"type":"order.place","request_id":{request_id},"order":{{"coin":"{coin}",'
                f'"side":"{side}","type":"market","quantity":"0.0001"}}}}'
            )
            while True:
                frame = orjson.loads(await socket.recv())
                now = time.monotonic()
                if frame["type"] == "order":
                    on_event(frame, now)
                elif frame["type"] in ("order.ack", "error"):
                    break
            outcome = "ack" if frame["type"] == "order.ack" else frame["code"]
            stats["status"][outcome] = stats["status"].get(outcome, 0) + 1
            if outcome == "ack":
                stats["latency"].append(now - started)
                placed[frame["order"]["id"]] = started
        drain_until = time.monotonic() + args.drain_timeout
        while len(filled) < len(placed) and time.monotonic() < drain_until:
            try:
                frame = orjson.loads(await asyncio.wait_for(socket.recv(), 1))
            except TimeoutError:
                continue
            if frame["type"] == "order":
                on_event(frame, time.monotonic())


async def load(
    args: argparse.Namespace,
    traders: list[Trader],
    meter: CpuMeter,
    *,
    via: str = "native",
    extra: dict | None = None,
) -> dict:
    stats: dict = {"latency": [], "status": {}, "fill_lag": [], "web_pids": [], **(extra or {})}
    until = time.monotonic() + args.duration
    ports = web_ports(args)  # connection n goes to web process n mod their number
    if via == "ws":
        clients = [
            ws_client(
                args, traders[n % len(traders)].token, until, stats, port=ports[n % len(ports)]
            )
            for n in range(args.concurrency)
        ]
    else:
        clients = [
            client(args, traders, until, stats, via=via, port=ports[n % len(ports)])
            for n in range(args.concurrency)
        ]

    async def sample_cpu() -> None:
        while time.monotonic() < until:
            await asyncio.sleep(1)
            meter.sample()
            if "connections" not in stats and stats["web_pids"]:  # all connected by now
                stats["connections"] = connections_per_process(stats["web_pids"], ports)

    machine = machine_cpu_seconds()
    meter.start()
    started = time.monotonic()
    await asyncio.gather(sample_cpu(), *clients)
    stats["cpu"] = meter.stop()
    stats["machine_busy_cores"] = (machine_cpu_seconds() - machine) / (time.monotonic() - started)
    return stats


def print_percentiles(label: str, seconds: list[float], suffix: str = "") -> None:
    print(
        f"{label:<14} p50 {percentile(seconds, 50) * 1000:7.1f} ms"
        f"   p99 {percentile(seconds, 99) * 1000:7.1f} ms{suffix}"
    )


def print_cpu(stats: dict, *, what: str, count: int, seconds: float) -> None:
    cpu = {name: used for name, used in stats["cpu"].items() if not name.startswith("web-")}
    cores = os.cpu_count() or 1
    print(
        f"CPU per {what} (during the load): "
        + ", ".join(f"{name} {cpu[name] / max(count, 1) * 1000:.1f} ms" for name in cpu)
        + f" (of {cores * seconds:.0f} CPU-seconds on {cores} cores: "
        + ", ".join(f"{name} {cpu[name]:.1f}" for name in cpu)
        + ")"
    )
    print_web_share(stats, seconds=seconds)


def print_web_share(stats: dict, *, seconds: float) -> None:
    """The busy cores of this run's processes and of the whole machine (other sessions'
    load included), and how the web's CPU and connections split between its processes."""
    cpu, cores = stats["cpu"], os.cpu_count() or 1
    ours = sum(cpu.get(name, 0.0) for name in COST_PARTS)
    print(
        f"busy cores: {ours / seconds:.2f} of {cores} by this run ("
        + ", ".join(f"{name} {cpu.get(name, 0.0) / seconds:.2f}" for name in COST_PARTS)
        + f"), {stats['machine_busy_cores']:.2f} on the whole machine"
    )
    per_process = [cpu[f"web-{n}"] for n in range(1, len(stats["web_pids"]) + 1)]
    if not per_process:  # a load whose caller measures no web processes
        return
    total = sum(per_process) or 1e-9
    connections = stats.get("connections", [])
    print(
        "web processes: "
        + ", ".join(
            f"#{n} {used / total:.0%} of the web's CPU ({used / seconds:.2f} cores"
            + (f", {connections[n - 1]} connections" if connections else "")
            + ")"
            for n, used in enumerate(per_process, 1)
        )
    )


# The processes whose CPU an order or a request costs the machine: PostgreSQL's share is
# this run's backends and the server's own processes ("postgres", every process of the
# shared server, also counts other sessions' backends, so it is left out of the sum).
COST_PARTS = ("web", "worker", "pg-db", "pg-server", "client")


def cpu_cost(stats: dict, *, count: int, seconds: float) -> dict:
    """CPU-seconds per request or order over every part, how many cores the parts kept
    busy during the load, and the web processes' shares of the web's CPU."""
    total = sum(stats["cpu"].get(name, 0.0) for name in COST_PARTS)
    per_process = [stats["cpu"][f"web-{n}"] for n in range(1, len(stats["web_pids"]) + 1)]
    return {
        "cpu_per": total / max(count, 1),
        "busy_cores": total / seconds,
        "machine_busy_cores": stats["machine_busy_cores"],
        "web_shares": [used / (sum(per_process) or 1e-9) for used in per_process],
    }


def report_ceiling(args: argparse.Namespace, stats: dict, seconds: float) -> dict:
    """What the stack gives a request that does no work (``--ceiling``)."""
    answered = stats["status"].get(200, 0)
    latencies = stats["latency"]
    print(f"GET {args.ceiling}: users={args.users} connections={args.concurrency}")
    print(f"HTTP statuses: {stats['status']}   duration={seconds:.1f}s")
    print(f"answered: {answered / seconds:8.1f} requests/s (200s)")
    print_percentiles("latency", latencies)
    print_cpu(stats, what="request", count=answered, seconds=seconds)
    return {
        "ok": answered == len(latencies),
        "rps": answered / seconds,
        "p99": percentile(latencies, 99),
        **cpu_cost(stats, count=answered, seconds=seconds),
    }


def integrity() -> dict:
    """The ledger and reservation invariants, and orders lost (still pending after the
    drain) or booked twice (a filled order without exactly its three entries, or entries
    on an order that did not fill)."""
    from django.db.models import Count, Q

    from orders.models import Balance, LedgerEntry, Order
    from orders.selectors import ledger_mismatches, reservation_mismatches

    booked = dict(
        LedgerEntry.objects.filter(order__isnull=False)
        .values("order")
        .annotate(n=Count("id"))
        .values_list("order", "n")
    )
    filled = set(Order.objects.filter(status="filled").values_list("id", flat=True))
    doubled = sum(1 for order_id, n in booked.items() if n != 3 or order_id not in filled)
    doubled += len(filled - booked.keys())
    return {
        "ledger": ledger_mismatches(),
        "reservations": reservation_mismatches(),
        "negative": Balance.objects.filter(Q(available__lt=0) | Q(locked__lt=0)).count(),
        "lost": Order.objects.filter(status="pending").count(),
        "doubled": doubled,
    }


def print_integrity(checks: dict) -> bool:
    print(
        f"ledger invariant: {'OK' if not checks['ledger'] else checks['ledger'][:5]}; "
        f"reservations: {'OK' if not checks['reservations'] else checks['reservations'][:5]}; "
        f"negative balances: {checks['negative']}; lost: {checks['lost']}; "
        f"double-filled: {checks['doubled']}"
    )
    return not any(checks.values())


def print_batches(window) -> None:
    """How many orders each batch of the queue booked: a batch stamps all its orders with
    one ``updated_at`` (the time it started booking)."""
    from django.db.models import Count

    sizes = [
        row["n"]
        for row in window.exclude(status="pending").values("updated_at").annotate(n=Count("id"))
    ]
    if sizes:
        print(
            f"queue batches: {len(sizes)}, orders per batch mean {sum(sizes) / len(sizes):.1f},"
            f" p50 {percentile(sizes, 50):.0f}, max {max(sizes)}"
        )


def report(args: argparse.Namespace, stats: dict, t0, t1, *, accepted_status: int = 201) -> dict:
    """Prints the figures and the integrity checks once the window's orders drained."""
    from django.db.models import Max

    from orders.models import Order

    window = Order.objects.filter(created_at__gte=t0, created_at__lte=t1)
    deadline = time.monotonic() + args.drain_timeout
    while window.filter(status="pending").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    accepted = stats["status"].get(accepted_status, 0)
    filled_in_window = Order.objects.filter(
        status="filled", updated_at__gte=t0, updated_at__lte=t1
    ).count()
    lags = [
        (updated - created).total_seconds()
        for created, updated in window.filter(status="filled").values_list(
            "created_at", "updated_at"
        )
    ]
    statuses = dict((s, window.filter(status=s).count()) for s in ("pending", "filled", "rejected"))
    latencies = stats["latency"]
    seconds = (t1 - t0).total_seconds()
    print(f"users={args.users} connections={args.concurrency} duration={seconds:.1f}s")
    print(f"HTTP statuses: {stats['status']}   orders in window: {statuses}")
    print(f"accepted: {accepted / seconds:8.1f} orders/s")
    print(f"filled:   {filled_in_window / seconds:8.1f} orders/s (filled within the window)")
    last_fill = window.filter(status="filled").aggregate(last=Max("updated_at"))["last"]
    if last_fill is not None:
        drained = (last_fill - t0).total_seconds()
        print(
            f"          {statuses['filled'] / drained:8.1f} orders/s sustained (the window's "
            f"orders all filled {drained - seconds:.1f} s after it closed)"
        )
    print_batches(window)
    print_percentiles("POST latency", latencies)
    print_percentiles("place->filled", lags)
    ok = print_integrity(integrity())
    print_cpu(stats, what="accepted order", count=accepted, seconds=seconds)
    return {
        "ok": ok,
        "accepted_per_s": accepted / seconds,
        "filled_per_s": filled_in_window / seconds,
        "post_p50": percentile(latencies, 50),
        "post_p99": percentile(latencies, 99),
        "lag_p50": percentile(lags, 50),
        "lag_p99": percentile(lags, 99),
        **cpu_cost(stats, count=accepted, seconds=seconds),
    }


def report_ws(args: argparse.Namespace, stats: dict, rest: dict, seconds: float) -> dict:
    """The socket's figures, next to the REST run's (``rest``, from ``report``) on the
    same servers."""
    acks = stats["status"].get("ack", 0)
    latencies, lags = stats["latency"], stats["fill_lag"]
    print(f"via /ws/user: sockets={args.concurrency} duration={seconds:.1f}s")
    print(f"replies: {stats['status']}   filled (seen on the socket): {len(lags)}")
    print(f"acked:    {acks / seconds:8.1f} orders/s")
    print_percentiles(
        "place->ack",
        latencies,
        f"   (REST POST p50 {rest['post_p50'] * 1000:.1f} ms"
        f", p99 {rest['post_p99'] * 1000:.1f} ms)",
    )
    print_percentiles("place->filled", lags, "   (as the client sees it)")
    ok = print_integrity(integrity())
    print_cpu(stats, what="acked order", count=acks, seconds=seconds)
    return {"ok": ok and acks == len(lags)}


def limit_book(n: int, *, users: int, processes: list[subprocess.Popen]) -> dict:
    """Rest ``n`` limit buys of bitcoin at 60,000 (spread over the first ``users``
    users, reserved as order_place reserves), cross them with one poll, and time the
    fills and the CPU they cost the worker and this database's PostgreSQL backends (from
    the crossing poll until the last fill is seen committed)."""
    from django.db.models import F
    from django.utils import timezone

    from accounts.models import User
    from markets.services import prices_on_tick, prices_record
    from orders.models import Balance, LedgerEntry, Order
    from orders.services import buy_cost

    limit, quantity = Decimal("60000"), Decimal("0.0001")
    notional, fee = buy_cost(quantity=quantity, price=limit)
    traders = list(User.objects.filter(email__startswith="bench-trader-").order_by("id")[:users])
    orders = [
        Order(
            user=traders[i % len(traders)], coin_id="bitcoin", side="buy", type="limit",
            quantity=quantity, limit_price=limit, status="open", reserved_asset="usd",
            reserved_amount=notional + fee,
        )
        for i in range(n)
    ]  # fmt: skip
    Order.objects.bulk_create(orders, batch_size=2000)
    for trader in traders:
        count = sum(1 for order in orders if order.user_id == trader.pk)
        Balance.objects.filter(user=trader, asset="usd").update(
            available=F("available") - count * (notional + fee),
            locked=F("locked") + count * (notional + fee),
        )
    ids = [order.pk for order in orders]
    # The book's ids are one range (one bulk insert, nothing else inserts orders meanwhile):
    # polling it by range costs PostgreSQL ~1 ms, where ``pk__in`` a list of 10,000 ids
    # took ~30 ms a poll, CPU taken from the fills it watches (and counted as theirs).
    book = Order.objects.filter(pk__gte=min(ids), pk__lte=max(ids))
    assert book.count() == n, "the book's ids are not one range"
    CURRENT["bitcoin"] = Decimal("59000")
    meter = DatabaseCpuMeter({"worker": processes[-1].pid, "pg-db": DatabaseCpuMeter.DATABASE})
    meter.start()
    started = timezone.now()
    prices = dict(CURRENT)
    prices_on_tick(as_of=prices_record(prices=prices), prices=prices, changed=["bitcoin"])
    deadline = time.monotonic() + 120
    while book.filter(status="open").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
        meter.sample()
    cpu = meter.stop()
    # The stamps are the batches' own clock (each taken as its batch starts booking); this
    # one is when this process saw the last fill committed (within the 50 ms poll).
    seen = (timezone.now() - started).total_seconds()
    CURRENT["bitcoin"] = COINS["bitcoin"]
    prices_record(prices=dict(CURRENT))
    filled = book.filter(status="filled").count()
    last = max(book.filter(status="filled").values_list("updated_at", flat=True), default=started)
    seconds = (last - started).total_seconds()
    in_order = True
    for trader in traders:
        sequence = list(
            LedgerEntry.objects.filter(user=trader, order_id__in=ids)
            .order_by("id")
            .values_list("order_id", flat=True)
        )
        in_order &= sequence == sorted(sequence)
    print(
        f"limit book: {filled} of {n} open limit orders filled {seconds * 1000:.0f} ms after "
        f"the crossing poll ({filled / max(seconds, 1e-9):.0f} fills/s), all committed "
        f"{seen * 1000:.0f} ms after it; "
        f"per-user FIFO {'kept' if in_order else 'BROKEN'}"
    )
    print(
        "limit book CPU per fill: "
        + ", ".join(f"{name} {cpu[name] / max(filled, 1) * 1000:.3f} ms" for name in cpu)
        + " ("
        + ", ".join(f"{name} {cpu[name]:.2f} s" for name in cpu)
        + ")"
    )
    ok = print_integrity(integrity())
    return {"ok": ok and filled == n and in_order, "seconds": seconds, "committed": seen}


class DatabaseCpuMeter(CpuMeter):
    """``CpuMeter`` with two more kinds of group, read at each sample: the PostgreSQL
    backends connected to this run's database (``DATABASE``), and the server's own
    processes (``SERVER``: WAL writer, checkpointer, background writer, autovacuum). The
    machine's PostgreSQL is shared (``"postgres"`` counts every database's backends, other
    sessions' test suites included); these two count this run's statements and what the
    server does for every database."""

    DATABASE = "postgres-of-this-database"
    SERVER = "postgres-server-processes"

    def __init__(self, groups: dict[str, int | list[int] | str]) -> None:
        super().__init__(groups)
        self.connection: Any = None

    def _pids(self, group: int | list[int] | str) -> list[int]:
        if group not in (self.DATABASE, self.SERVER):
            return super()._pids(group)
        if self.connection is None:
            # A connection of its own: the samples are taken inside the load's event loop,
            # where Django's connections refuse to be used.
            import psycopg2
            from django.conf import settings

            db = settings.DATABASES["default"]
            self.connection = psycopg2.connect(
                dbname=db["NAME"],
                user=db["USER"],
                password=db["PASSWORD"],
                host=db["HOST"],
                port=db["PORT"] or None,
            )
            self.connection.autocommit = True
        with self.connection.cursor() as cursor:
            if group == self.SERVER:
                cursor.execute(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'"
                )
            else:
                cursor.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                )
            return [pid for (pid,) in cursor.fetchall()]


def measure(
    args: argparse.Namespace,
    traders: list[Trader],
    processes: list[subprocess.Popen],
    *,
    via: str = "native",
    rest: dict | None = None,
) -> dict:
    """One load on the running servers (``args.ceiling``: the GET), reported."""
    from django.utils import timezone

    # The machine is shared: a figure means little without the load it ran under.
    load_before = os.getloadavg()[0]
    *webs, worker = processes
    web_pids = [pid for web in webs for pid in serving_pids(web.pid)]
    meter = DatabaseCpuMeter(
        {
            "web": web_pids,
            "worker": worker.pid,
            "postgres": "postgres",
            "pg-db": DatabaseCpuMeter.DATABASE,
            "pg-server": DatabaseCpuMeter.SERVER,
            "client": [os.getpid()],
            **{f"web-{n}": [pid] for n, pid in enumerate(web_pids, 1)},
        }
    )
    stats_extra = {"web_pids": web_pids}
    t0 = timezone.now()
    stats = asyncio.run(load(args, traders, meter, via=via, extra=stats_extra))
    t1 = timezone.now()
    load_during = os.getloadavg()[0]
    if args.ceiling:
        result = report_ceiling(args, stats, (t1 - t0).total_seconds())
    elif via == "ws":
        assert rest is not None
        result = report_ws(args, stats, rest, args.duration)
    else:
        result = report(args, stats, t0, t1, accepted_status=200 if via == "binance" else 201)
    print(f"load average (1 min): {load_before:.2f} before the run, {load_during:.2f} at its end")
    return result


def print_goals(ceiling: dict, light: dict, saturation: dict, book: dict) -> None:
    print("--- goals (issue 18) ---")
    print(
        f"light place->filled p50 {light['lag_p50'] * 1000:.1f} ms: "
        f"{light['lag_p50'] * 1000 / 20:.2f}x of 20 ms; "
        f"p99 {light['lag_p99'] * 1000:.1f} ms: {light['lag_p99'] * 1000 / 100:.2f}x of 100 ms"
    )
    print(
        f"saturation filled {saturation['filled_per_s']:.1f}/s: "
        f"{saturation['filled_per_s'] / ceiling['rps']:.2f}x the ceiling's "
        f"{ceiling['rps']:.1f} requests/s (goal >= 0.5x); POST p99 "
        f"{saturation['post_p99'] * 1000:.1f} ms: {saturation['post_p99'] / ceiling['p99']:.2f}x "
        f"the ceiling's {ceiling['p99'] * 1000:.1f} ms (goal <= 2x)"
    )
    # The throughput ratio is the cost ratio only while both loads keep every core busy
    # with this run's processes and share the web's work evenly between its processes.
    cores = os.cpu_count() or 1

    def phase(name: str, figures: dict) -> str:
        shares = "/".join(f"{share:.0%}" for share in figures["web_shares"])
        return (
            f"{name} {figures['busy_cores']:.1f} of {cores} (machine "
            f"{figures['machine_busy_cores']:.1f}), web processes {shares}"
        )

    print(
        f"CPU per no-op request {ceiling['cpu_per'] * 1000:.1f} ms over CPU per order "
        f"{saturation['cpu_per'] * 1000:.1f} ms (web, worker, pg-db, pg-server, client): "
        f"{ceiling['cpu_per'] / saturation['cpu_per']:.2f}x; busy cores by this run: "
        f"{phase('ceiling', ceiling)}; {phase('saturation', saturation)}"
    )
    for name, figures in (("ceiling", ceiling), ("saturation", saturation)):
        if figures["machine_busy_cores"] < 0.9 * cores:
            print(f"  the {name} left CPU idle: read the CPU ratio")
        elif figures["busy_cores"] < 0.8 * cores:
            others = figures["machine_busy_cores"] - figures["busy_cores"]
            print(
                f"  during the {name} other processes took {others:.1f} cores: "
                "the throughput ratio compares unequal shares of the machine; read the CPU ratio"
            )
    # A fill counts once it is committed: the goal is read on the last commit seen (the
    # stamps say when each batch started booking).
    print(
        f"limit book: all committed {book['committed']:.2f} s: {book['committed']:.2f}x of 1 s "
        f"(last batch stamped {book['seconds']:.2f} s)"
    )


def goals(
    args: argparse.Namespace, traders: list[Trader], processes: list[subprocess.Popen]
) -> bool:
    """The phases issue 18 sets goals for, on the same servers (``--goals``)."""
    print("== ceiling (GET /api/v1/auth/me)")
    ceiling_args = argparse.Namespace(**{**vars(args), "ceiling": "/api/v1/auth/me"})
    ceiling = measure(ceiling_args, traders, processes)
    light_users = min(20, args.users)
    print(f"== light load (2 connections, {light_users} users)")
    light_args = argparse.Namespace(**{**vars(args), "users": light_users, "concurrency": 2})
    light = measure(light_args, traders[:light_users], processes)
    print("== saturation")
    saturation = measure(args, traders, processes)
    print("== limit book")
    book = limit_book(args.limit_book or 10_000, users=args.users, processes=processes)
    print_goals(ceiling, light, saturation, book)
    return all(r["ok"] for r in (ceiling, light, saturation, book))


def run(args: argparse.Namespace, traders: list[Trader], processes: list[subprocess.Popen]) -> bool:
    """``--ceiling``, or the native order load and then ``--via``'s; then ``--limit-book``."""
    if args.ceiling:
        ok = measure(args, traders, processes)["ok"]
    else:
        print("== native API (POST /api/v1/orders, bearer JWT, JSON)")
        native = measure(args, traders, processes)
        ok = native["ok"]
        if args.via == "ws":
            print("== /ws/user (order.place)")
            ok = measure(args, traders, processes, via="ws", rest=native)["ok"] and ok
        if args.via == "binance":
            print("== Binance-compatible API (POST /binance/api/v3/order, HMAC-signed, ACK)")
            binance = measure(args, traders, processes, via="binance")
            ok = binance["ok"] and ok
            ratios = ", ".join(
                f"{what} {binance[key]:.1f} vs {native[key]:.1f} orders/s = "
                f"{binance[key] / max(native[key], 1e-9):.2f}x"
                for what, key in (("accepted", "accepted_per_s"), ("filled", "filled_per_s"))
            )
            print(f"binance vs native: {ratios} (goal >= 0.8x)")
    if args.limit_book:
        ok = limit_book(args.limit_book, users=args.users, processes=processes)["ok"] and ok
    return ok


def main() -> int:
    args = parse_args()
    traders = prepare(
        args.users, fill_emails=not args.no_fill_emails, api_keys=args.via == "binance"
    )
    processes = start_processes(args, port_per_web_process=not args.shared_socket)
    stop = threading.Event()
    refresher = threading.Thread(target=keep_prices_fresh, args=(stop,), daemon=True)
    refresher.start()
    try:
        for port in web_ports(args):
            asyncio.run(wait_healthy(port))
        # Settle before the first phase (the processes' start-up work winds down).
        time.sleep(args.warmup)
        wait_worker_ready()
        ok = goals(args, traders, processes) if args.goals else run(args, traders, processes)
    finally:
        stop.set()
        stop_all(processes)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
