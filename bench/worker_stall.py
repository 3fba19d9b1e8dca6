"""Worker stall: a Celery worker under a steady task stream while its Redis is killed
and restarted empty, again and again.

    DEBUG=true .venv/bin/python bench/worker_stall.py [--rounds 30] [--stall-seconds 10]

Starts its own empty redis-server (``--redis-port``, default 6395, no persistence) and
one worker (``-Q celery,orders``, concurrency 2, the Procfile's) on the database of
``DATABASE_URL`` (it publishes only ``orders.queue_process`` for a user with no orders
and ``orders.queue_sweep``, which change nothing). A publisher thread keeps both queues
busy (about 60 tasks a second, which the worker keeps up with). Each round SIGKILLs
Redis after a few seconds, starts it again at once (empty), and waits until the worker
has taken 50 of the tasks published since (``--recover-timeout``). It prints, per round
and in total:
recovered or not, seconds to recover, and how many times the worker's ConsumerWatchdog
reconnected a stalled consumer. Without the watchdog (``--stall-seconds 100000``), a
round in about ten ends with a worker that never consumes again (celery/celery#10205).
"""

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--redis-port", type=int, default=6395)
    parser.add_argument(
        "--stall-seconds", type=float, default=10.0, help="the worker's WORKER_STALL_SECONDS"
    )
    parser.add_argument("--recover-timeout", type=float, default=60.0)
    parser.add_argument("--log", default="/tmp/worker_stall.log")  # noqa: S108 - bench output
    return parser.parse_args()


class Redis:
    """An empty redis-server of our own, killed and restarted on demand."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",  # noqa: S607
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise SystemExit(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def main() -> int:
    args = parse_args()
    redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
    os.environ.update(
        REDIS_URL=redis_url,
        DJANGO_SETTINGS_MODULE="cryptovault.settings",
        WORKER_STALL_SECONDS=str(args.stall_seconds),
    )
    import django
    import redis

    django.setup()
    from cryptovault.celery import CELERY_QUEUES, app

    server = Redis(args.redis_port)
    server.start()
    log = open(args.log, "w")  # noqa: SIM115 - the worker writes it for the whole run
    worker = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
        [sys.executable, "-m", "celery", "-A", "cryptovault", "worker", "--loglevel", "INFO",
         "--concurrency", "2", "-Q", ",".join(CELERY_QUEUES)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    stop = threading.Event()
    sent = [0]

    def publish() -> None:
        while not stop.is_set():
            try:
                app.send_task("orders.queue_process", args=[0], retry=False)
                app.send_task("orders.queue_sweep", retry=False)
                sent[0] += 2
            except Exception:  # noqa: BLE001 - Redis is down this instant: try again
                time.sleep(0.2)
            time.sleep(1 / 30)

    client = redis.Redis(port=args.redis_port, socket_timeout=2)

    def depth() -> int | None:
        try:
            return sum(client.llen(queue) for queue in CELERY_QUEUES)
        except redis.RedisError:
            return None

    time.sleep(8)  # the worker boots
    threading.Thread(target=publish, daemon=True).start()
    recovered, times = 0, []
    print(f"{'round':>5} {'sent':>7} {'recovered':>9} {'seconds':>7}")
    try:
        for round_ in range(args.rounds):
            time.sleep(4 + round_ % 5)
            server.kill()
            server.start()
            started, sent_before = time.monotonic(), sent[0]
            ok = False
            while time.monotonic() - started < args.recover_timeout:
                time.sleep(0.5)
                waiting = depth()
                if waiting is not None and sent[0] - sent_before - waiting >= 50:
                    ok = True
                    break
            seconds = time.monotonic() - started
            recovered += ok
            times.append(seconds)
            print(
                f"{round_:>5} {sent[0]:>7} {'yes' if ok else 'NO':>9} {seconds:>7.1f}", flush=True
            )
            if worker.poll() is not None:
                print(f"the worker exited ({worker.returncode}); see {args.log}")
                break
    finally:
        stop.set()
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        server.kill()
        log.close()
    reconnects = Path(args.log).read_text().count("worker consumer stalled")
    print(
        f"\nrounds {len(times)}, recovered {recovered}, worst {max(times, default=0):.1f} s, "
        f"watchdog reconnects {reconnects} (goal: every round recovered)"
    )
    return 0 if recovered == len(times) == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
