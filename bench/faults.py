"""Faults: the whole platform under a steady mixed load while its dependencies fail.

    .venv/bin/python bench/faults.py [--duration 30] [--only redis] [--users 8]

Starts its own hosts, so a run disturbs nothing else: a PostgreSQL cluster under
/tmp (``--pg-port``, default 5440, run as user postgres), an empty redis-server
(``--redis-port``, default 6390, no persistence), and the Procfile's processes (web,
worker, beat, simulator) on their own ports. It creates, migrates and seeds its
database, funds ``--users`` users who log in, read, place market orders and sign up
(verification emails go to a file backend it reads), and keeps one ``/ws/user``
socket listening to order events. Then, one phase each (``--duration`` seconds, the
fault a third in), it runs: a baseline, Redis restarted empty, PostgreSQL restarted,
the worker SIGKILLed and restarted, web SIGKILLed and restarted, and a 429 storm
from the market source (the simulator's ``/_control/fault``). It prints one table
per phase and in total, with the goal next to each figure. Every process it started
is stopped on exit, Ctrl-C included.
"""

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import platform_command, production_env  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
FAULTS = ("baseline", "redis", "postgres", "worker", "web", "source429")
PASSWORD = "Faults-bench-pw-1"  # noqa: S105 - throwaway users on a throwaway database
TIMEOUT = httpx.Timeout(5.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--only", choices=FAULTS[1:], help="run the baseline and this fault")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--port", type=int, default=8640)
    parser.add_argument("--simulator-port", type=int, default=8641)
    parser.add_argument("--pg-port", type=int, default=5440)
    parser.add_argument("--redis-port", type=int, default=6390)
    parser.add_argument("--workdir", default="/tmp/cvfaults")  # noqa: S108 - our own hosts
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    return parser.parse_args()


class Platform:
    """The hosts and processes of one run; ``stop()`` ends every one of them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir)
        self.pgdata = self.work / "pg"
        self.mail = self.work / "mail"
        self.logs = self.work / "logs"
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{args.pg_port}/cvfaults",
            "REDIS_URL": f"redis://127.0.0.1:{args.redis_port}/0",
            **production_env(),
            "RATELIMIT_ENABLE": "false",
            "MARKET_DATA_URL": f"http://127.0.0.1:{args.simulator_port}/api/v3",
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(self.mail),
            "PRICE_POLL_SECONDS": "5",
            "LOG_LEVEL": "WARNING",
        }

    # -- hosts ------------------------------------------------------------------------
    def postgres(self, action: str) -> None:
        command = [str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "30", "-m", "fast"]
        options = f"-p {self.args.pg_port} -k /tmp -c listen_addresses=127.0.0.1"
        subprocess.run(  # noqa: S603 - fixed arguments
            ["runuser", "-u", "postgres", "--", *command, "-o", options,  # noqa: S607
             "-l", str(self.logs / "postgres.log"), action],
            check=action != "stop", timeout=60, stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def init_postgres(self) -> None:
        if self.work.exists():
            shutil.rmtree(self.work)
        for path in (self.pgdata, self.mail, self.logs):
            path.mkdir(parents=True)
        shutil.chown(self.work, "postgres")
        shutil.chown(self.pgdata, "postgres")
        shutil.chown(self.logs, "postgres")
        subprocess.run(  # noqa: S603
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D",  # noqa: S607
             str(self.pgdata), "-A", "trust", "-U", "postgres"],
            check=True, timeout=120, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.postgres("start")
        subprocess.run(  # noqa: S603
            [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.args.pg_port),
             "-U", "postgres", "cvfaults"],
            check=True, timeout=30,
        )  # fmt: skip

    def start_redis(self) -> None:
        self.spawn(
            "redis",
            ["redis-server", "--port", str(self.args.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(  # noqa: S603
                ["redis-cli", "-p", str(self.args.redis_port), "ping"],  # noqa: S607
                capture_output=True, timeout=5, check=False,
            )  # fmt: skip
            if probe.stdout.strip() == b"PONG":
                return
            time.sleep(0.1)

    # -- processes --------------------------------------------------------------------
    def command(self, name: str) -> list[str]:
        return platform_command(
            name,
            web_port=self.args.port,
            simulator_port=self.args.simulator_port,
            beat_schedule=self.work / "beat-schedule",
        )

    def spawn(self, name: str, command: list[str] | None = None) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - kept by the child
        self.processes[name] = subprocess.Popen(  # noqa: S603 - fixed arguments
            command or self.command(name), cwd=ROOT, env=self.env, stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def manage(self, *arguments: str) -> None:
        subprocess.run(  # noqa: S603
            [sys.executable, "manage.py", *arguments], cwd=ROOT, env=self.env, check=True,
            timeout=300, stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        for name in ("web", "worker", "beat", "simulator", "redis"):
            self.kill(name, signal.SIGTERM)
        if self.pgdata.exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.postgres("stop")


def wait_http(url: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        time.sleep(0.3)
    return False


def prepare_users(platform: Platform, n_users: int) -> None:
    """Verified users with money and coins, created through Django in this process."""
    os.environ.update(platform.env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptovault.settings")
    import django

    django.setup()
    from decimal import Decimal

    from django.db import connection
    from django.utils import timezone

    from accounts.models import User
    from orders.services import wallet_adjust

    for i in range(n_users):
        user = User.objects.create_user(
            email=f"faults-{i}@bench.invalid", password=PASSWORD, email_verified_at=timezone.now()
        )
        for asset, amount in (("usd", "1000000"), ("bitcoin", "10"), ("ethereum", "100")):
            wallet_adjust(user=user, asset=asset, amount=Decimal(amount), reason="bench")
    connection.close()


class Load:
    """Clients placing the mixed load; every figure is counted against the current phase."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.base = f"http://127.0.0.1:{args.port}"
        self.args = args
        self.phase = "baseline"
        self.stats: dict[str, Counter] = {name: Counter() for name in FAULTS}
        self.accepted: dict[int, str] = {}  # order id -> phase
        self.signups: dict[str, str] = {}  # email -> phase
        self.ws_user = "faults-0@bench.invalid"
        self.ws_orders: set[int] = set()
        self.ws_events: dict[int, set[str]] = {}
        self.ws_connected = False  # orders placed while it is down are not counted
        self.running = True
        self.listening = True  # the socket outlives the load (see ``run``)

    def count(self, key: str, n: int = 1) -> None:
        self.stats[self.phase][key] += n

    async def call(self, client: httpx.AsyncClient, method: str, path: str, **kwargs):
        """One request, counted; None when no answer came (refused, reset, timeout)."""
        self.count("requests")
        try:
            response = await client.request(method, self.base + path, timeout=TIMEOUT, **kwargs)
        except httpx.HTTPError:
            self.count("no answer")
            return None
        if response.status_code >= 500:
            self.count("5xx")
        if response.status_code >= 400 and "json" not in response.headers.get("content-type", ""):
            self.count("non-JSON errors")
        return response

    async def login(self, client: httpx.AsyncClient, email: str) -> dict | None:
        response = await self.call(
            client, "POST", "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
        )
        if response is not None and response.status_code == 200:
            return response.json()
        return None

    async def trader(self, i: int) -> None:
        email = f"faults-{i}@bench.invalid"
        async with httpx.AsyncClient() as client:
            tokens = None
            while self.running:
                if tokens is None:
                    tokens = await self.login(client, email)
                    if tokens is None:
                        await asyncio.sleep(0.5)
                        continue
                    if i == 0:
                        self.ws_token = tokens["access"]
                headers = {"Authorization": f"Bearer {tokens['access']}"}
                step = random.choice(("me", "coins", "prices", "order", "order"))
                if step == "order":
                    body = {
                        "coin": random.choice(("bitcoin", "ethereum")),
                        "side": random.choice(("buy", "sell")),
                        "type": "market",
                        "quantity": "0.001",
                    }
                    response = await self.call(
                        client, "POST", "/api/v1/orders", json=body, headers=headers
                    )
                    if response is not None and response.status_code == 201:
                        order_id = response.json()["id"]
                        self.accepted[order_id] = self.phase
                        if i == 0 and self.ws_connected:
                            self.ws_orders.add(order_id)
                else:
                    path = {"me": "/api/v1/auth/me", "coins": "/api/v1/coins",
                            "prices": "/api/v1/prices"}[step]  # fmt: skip
                    response = await self.call(client, "GET", path, headers=headers)
                if response is not None and response.status_code == 401:
                    code = _code(response)
                    if code == "token_not_valid" and "expired" in response.text:
                        tokens = await self.refresh(client, tokens)
                    else:
                        self.count("sessions lost")
                        tokens = None
                await asyncio.sleep(0.05)

    async def refresh(self, client: httpx.AsyncClient, tokens: dict) -> dict | None:
        response = await self.call(
            client, "POST", "/api/v1/auth/token/refresh", json={"refresh": tokens["refresh"]}
        )
        if response is not None and response.status_code == 200:
            return {**tokens, **response.json()}
        self.count("sessions lost")
        return None

    async def signups_and_logins(self) -> None:
        """A signup (one verification email) and a fresh login every second."""
        n = 0
        async with httpx.AsyncClient() as client:
            while self.running:
                n += 1
                email = f"signup-{n}@bench.invalid"
                body = {"email": email, "password": PASSWORD}
                response = await self.call(client, "POST", "/api/v1/auth/signup", json=body)
                if response is not None and response.status_code == 201:
                    self.signups[email] = self.phase
                # Logged out again at once: MAX_SESSIONS_PER_USER would revoke the traders'.
                tokens = await self.login(client, f"faults-{n % self.args.users}@bench.invalid")
                if tokens is not None:
                    logout = {"refresh": tokens["refresh"]}
                    await self.call(client, "POST", "/api/v1/auth/logout", json=logout)
                await asyncio.sleep(1)

    async def listener(self) -> None:
        """The ``/ws/user`` socket of user 0, reconnected whenever it drops, resuming
        after the last event id it saw (``?since=``), as a client should."""
        url = f"ws://127.0.0.1:{self.args.port}/ws/user?token="
        last_id = None
        while self.listening:
            token = getattr(self, "ws_token", None)
            if token is None:
                await asyncio.sleep(0.3)
                continue
            since = "" if last_id is None else f"&since={last_id}"
            try:
                async with websockets.connect(url + token + since, open_timeout=5) as socket:
                    self.ws_connected = True
                    while self.listening:
                        try:
                            frame = await asyncio.wait_for(socket.recv(), timeout=1)
                        except TimeoutError:
                            continue
                        event = _json(frame)
                        last_id = event.get("id", last_id)
                        if event.get("type") == "order":
                            order = event["order"]
                            self.ws_events.setdefault(order["id"], set()).add(order["status"])
            except (OSError, websockets.WebSocketException, TimeoutError):
                self.ws_connected = False
                self.count("ws drops")
                await asyncio.sleep(0.5)

    async def run(self, platform: Platform, phases: list[str]) -> None:
        tasks = [asyncio.ensure_future(self.trader(i)) for i in range(self.args.users)]
        tasks.append(asyncio.ensure_future(self.signups_and_logins()))
        listener = asyncio.ensure_future(self.listener())
        try:
            for phase in phases:
                self.phase = phase
                print(f"[{time.strftime('%H:%M:%S')}] phase {phase}", flush=True)
                await asyncio.sleep(self.args.duration / 3)
                if phase != "baseline":
                    await asyncio.to_thread(inject, platform, phase, self.args.duration / 3)
                await asyncio.sleep(self.args.duration * 2 / 3)
        finally:
            self.running = False
            await asyncio.wait(tasks, timeout=15)
            for task in tasks:
                task.cancel()
            # The last orders fill after the load stops: the socket keeps listening until
            # each order it counts has had an event past "pending" (or the drain timeout),
            # else their fills would count as missed events.
            deadline = time.monotonic() + self.args.drain_timeout
            while time.monotonic() < deadline and any(
                not self.ws_events.get(order_id, set()) - {"pending"} for order_id in self.ws_orders
            ):
                await asyncio.sleep(0.2)
            self.listening = False
            await asyncio.wait([listener], timeout=5)
            listener.cancel()


def inject(platform: Platform, fault: str, hold: float) -> None:
    """Do ``fault`` and bring the platform back (a 429 storm lasts ``hold`` seconds)."""
    if fault == "redis":
        platform.kill("redis")
        platform.start_redis()
    elif fault == "postgres":
        platform.postgres("restart")
    elif fault in ("worker", "web"):
        platform.kill(fault)
        platform.spawn(fault)
        if fault == "web":
            wait_http(f"http://127.0.0.1:{platform.args.port}/health", timeout=30)
    elif fault == "source429":
        control = f"http://127.0.0.1:{platform.args.simulator_port}/_control/fault"
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(control, json={"mode": "rate_limit"}, timeout=5)
            time.sleep(hold)
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(control, json={"mode": "none"}, timeout=5)


def _json(text) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _code(response: httpx.Response) -> str:
    return str(_json(response.text).get("code", ""))


def check(load: Load, platform: Platform, drain_timeout: float) -> dict:
    """Orders, emails and the ledger, read from the database once the queue drained."""
    from django.db import close_old_connections
    from django.db.models import Count, Q

    from notifications.models import OutboxEmail
    from orders.models import Order
    from orders.selectors import ledger_mismatches, reservation_mismatches

    close_old_connections()
    ids = list(load.accepted)
    deadline = time.monotonic() + drain_timeout
    while Order.objects.filter(pk__in=ids, status="pending").exists():
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    # An email whose wake-up Redis lost waits in the outbox for beat's sweep (every 60 s).
    deadline = time.monotonic() + max(drain_timeout, 70)
    while OutboxEmail.objects.filter(status="pending").exists():
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    time.sleep(3)  # the last emails and socket events
    trades = Count("ledger_entries", filter=Q(ledger_entries__kind__startswith="trade"))
    rows = Order.objects.filter(pk__in=ids).annotate(trades=trades)
    orders = {o["pk"]: o for o in rows.values("pk", "status", "trades")}
    per: dict[str, Counter] = {name: Counter() for name in FAULTS}
    for order_id, phase in load.accepted.items():
        order = orders.get(order_id)
        per[phase]["orders accepted"] += 1
        if order is None or order["status"] == "pending":
            per[phase]["orders lost"] += 1
            continue
        per[phase]["orders final"] += 1
        if order["status"] == "rejected":
            per[phase]["rejected"] += 1
        if order["trades"] > 2:  # one fill moves two assets
            per[phase]["double-filled"] += 1
        if order_id in load.ws_orders and order["status"] not in load.ws_events.get(order_id, ()):
            per[phase]["ws events missed"] += 1
    sent = Counter()
    for path in platform.mail.glob("*.log"):
        text = path.read_text(errors="replace")
        for email in load.signups:
            if f"To: {email}" in text:
                sent[email] += 1
    for email, phase in load.signups.items():
        per[phase]["emails queued"] += 1
        per[phase]["emails sent"] += min(sent[email], 1)
    ledger = len(ledger_mismatches()) + len(reservation_mismatches())
    return {"per": per, "ledger": ledger}


ROWS = [
    ("requests", "requests sent", None),
    ("no answer", "no answer (refused/timeout)", None),
    ("5xx", "5xx", "0"),
    ("non-JSON errors", "non-JSON error bodies", "0"),
    ("sessions lost", "sessions lost (valid -> 401)", "0"),
    ("orders accepted", "orders accepted (201)", None),
    ("orders final", "orders final/open", "= accepted"),
    ("rejected", "  of which rejected", None),
    ("orders lost", "orders lost (pending/missing)", "0"),
    ("double-filled", "orders double-filled", "0"),
    ("emails queued", "emails queued (signups)", None),
    ("emails sent", "emails sent", "= queued"),
    ("ws drops", "/ws/user drops", None),
    ("ws events missed", "/ws/user events missed", "0"),
]


def print_table(load: Load, result: dict, phases: list[str]) -> None:
    columns = [*phases, "total"]
    merged = {name: load.stats[name] + result["per"][name] for name in phases}
    merged["total"] = sum(merged.values(), Counter())
    print()
    print(f"{'':32}" + "".join(f"{c:>11}" for c in columns) + "   goal")
    for key, label, goal in ROWS:
        values = "".join(f"{merged[c][key]:>11}" for c in columns)
        print(f"{label:32}{values}   {goal or ''}")
    ledger = "exact" if result["ledger"] == 0 else f"{result['ledger']} mismatches"
    print(f"{'ledger (balances = ledger sums)':32}{ledger:>11}   exact")


def main() -> int:
    args = parse_args()
    phases = ["baseline", args.only] if args.only else list(FAULTS)
    platform = Platform(args)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        platform.init_postgres()
        platform.start_redis()
        platform.manage("migrate", "--noinput")
        platform.manage("seed_demo")
        prepare_users(platform, args.users)
        for name in ("simulator", "web", "worker", "beat"):
            platform.spawn(name)
        if not wait_http(f"http://127.0.0.1:{args.port}/health", timeout=90):
            print("web did not come up; see", platform.logs / "web.log")
            return 1
        time.sleep(10)  # worker and beat boot; the first price poll lands
        load = Load(args)
        asyncio.run(load.run(platform, phases))
        result = check(load, platform, args.drain_timeout)
        print_table(load, result, phases)
        total = sum((load.stats[p] + result["per"][p] for p in phases), Counter())
        bad = ("5xx", "sessions lost", "orders lost", "double-filled", "ws events missed")
        return 0 if not any(total[k] for k in bad) and result["ledger"] == 0 else 1
    except KeyboardInterrupt:
        return 130
    finally:
        platform.stop()


if __name__ == "__main__":
    sys.exit(main())
