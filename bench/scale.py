"""Scale-out: bench/prices.py and bench/orders.py through nginx, one vs two web processes.

    DATABASE_URL=postgres://postgres@localhost:5432/cv_scale \\
    REDIS_URL=redis://localhost:6379/14 .venv/bin/python bench/scale.py

Starts nginx with ``deploy/nginx.conf`` (its upstream pointed at local ports) in front
of one, then two uvicorn processes (one worker each, the same options as
bench/prices.py), and runs the two benchmarks' own seeding, load generators and
reports against nginx's port: GET /api/v1/prices with ``--connections`` keep-alive
connections (wrk when installed), then market orders from ``--users`` users over
``--concurrency`` connections, filled by one Celery worker (the same for both runs).
Prints each run's figures and the scaling factor two/one. Use your own database and
Redis db: the Redis db is flushed. Needs nginx (``apt-get install nginx``).

On a 2-core machine the load generator, nginx, Redis, PostgreSQL and the worker share
the cores with the web processes, so the factor shows what a second process buys
there, not the linear scaling of separate hosts.
"""

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import production_env  # noqa: E402

# One configuration for this process (which seeds users and issues their tokens) and
# every server it starts: production-like, no rate limits.
os.environ.update(
    **production_env(),
    RATELIMIT_ENABLE="false",
    LOG_LEVEL="WARNING",
    TRUSTED_PROXIES="127.0.0.1",
    # Order fills send emails; printing them would load the worker, not the web tier.
    EMAIL_BACKEND="django.core.mail.backends.dummy.EmailBackend",
)
# Every process keeps its connections (web requests run on long-lived threads).
os.environ.setdefault("CONN_MAX_AGE", "60")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptovault.settings")

from bench import orders as orders_bench  # noqa: E402
from bench import prices as prices_bench  # noqa: E402
from bench.common import CpuMeter, stop_all, uvicorn_command  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nginx-port", type=int, default=8090)
    parser.add_argument("--web-ports", default="18011,18012", help="two ports for web")
    parser.add_argument("--connections", type=int, default=64, help="prices bench")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--prices-duration", type=int, default=10)
    parser.add_argument("--users", type=int, default=100, help="orders bench")
    parser.add_argument("--concurrency", type=int, default=32, help="orders bench")
    parser.add_argument("--orders-duration", type=float, default=15.0)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternate one/two this often; best run counts"
    )
    return parser.parse_args()


class Edge:
    """nginx from deploy/nginx.conf in front of ``web_ports``, in a temporary prefix."""

    def __init__(self, port: int, web_ports: list[int]) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="cv-bench-nginx-"))
        servers = " ".join(f"server 127.0.0.1:{p} max_fails=2 fail_timeout=10s;" for p in web_ports)
        conf = []
        for line in (ROOT / "deploy" / "nginx.conf").read_text().splitlines():
            if "# cv:upstream-servers" in line:
                line = f"        {servers}"
            elif "# cv:listen" in line:
                line = f"        listen 127.0.0.1:{port};"
            conf.append(line)
        # Per-request JSON logging costs CPU the comparison is not about.
        text = "\n".join(conf).replace("access_log /dev/stdout cv;", "access_log off;")
        (self.prefix / "nginx.conf").write_text(text)
        user = " user www-data;" if os.geteuid() == 0 else ""
        self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
            [
                shutil.which("nginx") or "nginx",
                "-p",
                str(self.prefix),
                "-c",
                str(self.prefix / "nginx.conf"),
                "-g",
                f"pid {self.prefix}/nginx.pid; daemon off;{user}",
            ],  # fmt: skip
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.prefix, ignore_errors=True)


def start_webs(ports: list[int]) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
            uvicorn_command(
                port=port,
                fast=True,
                extra=["--proxy-headers", "--forwarded-allow-ips", "127.0.0.1"],
            ),
            cwd=ROOT,
        )  # fmt: skip
        for port in ports
    ]


def with_platform(args: argparse.Namespace, web_ports: list[int], run):
    """Start ``web_ports`` behind nginx, wait until nginx answers, ``run()``, stop them."""
    webs = start_webs(web_ports)
    edge = Edge(args.nginx_port, web_ports)
    try:
        for port in web_ports:
            asyncio.run(orders_bench.wait_healthy(port))
        asyncio.run(orders_bench.wait_healthy(args.nginx_port))
        return run()
    finally:
        edge.stop()
        stop_all(webs)


def prices_run(args: argparse.Namespace) -> float:
    url = f"http://127.0.0.1:{args.nginx_port}/api/v1/prices"
    load = prices_bench.load_wrk if shutil.which("wrk") else prices_bench.load_python
    options = argparse.Namespace(
        connections=args.connections, threads=args.threads, duration=args.prices_duration
    )
    load(url, argparse.Namespace(**{**vars(options), "duration": 2}))  # warm-up
    rps, p50, p99 = load(url, options)
    print(f"  GET /api/v1/prices  {rps:8.0f} req/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    return rps


def orders_run(args: argparse.Namespace, traders: list[orders_bench.Trader]) -> float:
    from django.utils import timezone

    options = argparse.Namespace(
        port=args.nginx_port,
        web_workers=1,  # one port: nginx's
        shared_socket=False,
        users=args.users,
        concurrency=args.concurrency,
        duration=args.orders_duration,
        drain_timeout=args.drain_timeout,
        ceiling=None,
    )
    meter = CpuMeter({"postgres": "postgres", "client": [os.getpid()]})
    t0 = timezone.now()
    stats = asyncio.run(orders_bench.load(options, traders, meter))
    t1 = timezone.now()
    if not orders_bench.report(options, stats, t0, t1)["ok"]:
        raise SystemExit("the ledger invariant failed")
    return stats["status"].get(201, 0) / (t1 - t0).total_seconds()


def main() -> None:
    args = parse_args()
    if not shutil.which("nginx"):
        raise SystemExit("nginx is not installed (apt-get install nginx)")
    one, two = ([int(p) for p in args.web_ports.split(",")][:n] for n in (1, 2))

    traders = orders_bench.prepare(args.users)  # migrates, flushes Redis, funds users
    prices_bench.seed_prices()
    print(f"prices: {args.connections} connections, {args.prices_duration}s per run, via nginx")
    prices: dict[str, list[float]] = {"one web": [], "two web": []}
    for _ in range(args.rounds):
        for label, ports in (("one web", one), ("two web", two)):
            print(f"{label} process(es):")
            prices[label].append(with_platform(args, ports, lambda: prices_run(args)))

    print(f"orders: {args.users} users, {args.concurrency} connections, {args.orders_duration}s")
    worker = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
        [
            sys.executable, "-m", "celery", "-A", "cryptovault", "worker", "-Q", "orders,celery",
            "--concurrency", "2", "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    stop = threading.Event()
    threading.Thread(target=orders_bench.keep_prices_fresh, args=(stop,), daemon=True).start()
    orders: dict[str, list[float]] = {"one web": [], "two web": []}
    try:
        orders_bench.wait_worker_ready()
        for _ in range(args.rounds):
            for label, ports in (("one web", one), ("two web", two)):
                print(f"{label} process(es):")
                orders[label].append(with_platform(args, ports, lambda: orders_run(args, traders)))
    finally:
        stop.set()
        stop_all([worker])

    # The best of the rounds: on a shared machine, slower runs measure the neighbours.
    print(f"scaling factor (two web processes / one, through nginx; best of {args.rounds}):")
    for name, figures, unit in (
        ("GET /api/v1/prices", prices, "req/s"),
        ("POST /api/v1/orders", orders, "orders/s accepted"),
    ):
        a, b = max(figures["one web"]), max(figures["two web"])
        print(f"  {name:20} {a:8.0f} -> {b:8.0f} {unit}   x{b / a:.2f}")


if __name__ == "__main__":
    main()
