"""A worker whose broker vanished while it had tasks to acknowledge consumes again
(cryptovault.celery.ConsumerWatchdog), against a real worker process and real Redis."""

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from cryptovault.celery import app
from cryptovault.testing import TcpProxy

# A queue of its own: nothing another test left in the platform's queues reaches this worker.
QUEUE = "tests.stall"


def _wait_for(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.1)
    return False


def _worker(proxy: TcpProxy, stall_seconds: float) -> subprocess.Popen:
    redis_url = urlsplit(settings.REDIS_URL)
    env = {
        **os.environ,
        "REDIS_URL": redis_url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl(),
        "WORKER_STALL_SECONDS": str(stall_seconds),
        "WORKER_STALL_CHECK_SECONDS": "1",
    }
    return subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
        [sys.executable, "-m", "celery", "-A", "cryptovault.tests.stall_worker", "worker",
         "-Q", QUEUE, "--concurrency", "1", "--loglevel", "WARNING", "--without-gossip",
         "--without-mingle", "--without-heartbeat"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _stall(tmp_path: Path, stall_seconds: float) -> tuple[bool, str]:
    """Cut the broker while the only task runs, let the task finish (its ack fails),
    restore the broker, then enqueue one more task. Returns whether that task ran
    within 30 s, and the worker's log. Without the watchdog (a stall window longer than
    the wait) it never runs: kombu keeps the unacknowledged message as delivered, the
    prefetch window stays full and the worker never asks the broker again."""
    host, port = urlsplit(settings.REDIS_URL).hostname, urlsplit(settings.REDIS_URL).port
    proxy = TcpProxy((host or "127.0.0.1", port or 6379))
    worker = _worker(proxy, stall_seconds)
    try:
        # The test publishes straight to Redis (settings' broker); the worker reads
        # through the proxy.
        app.send_task("tests.stall.touch", args=[str(tmp_path / "ready")], queue=QUEUE)
        assert _wait_for(tmp_path / "ready", 60), "the worker did not start"
        started, finished = tmp_path / "started", tmp_path / "finished"
        app.send_task("tests.stall.slow_touch", args=[str(started), str(finished), 2], queue=QUEUE)
        assert _wait_for(started, 20)
        proxy.down()
        assert _wait_for(finished, 20)
        time.sleep(1.5)  # the worker tries to acknowledge while the broker is gone
        proxy.up()
        app.send_task("tests.stall.touch", args=[str(tmp_path / "after")], queue=QUEUE)
        consumed = _wait_for(tmp_path / "after", 30)
    finally:
        worker.terminate()
        try:
            log = worker.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            worker.kill()
            log = worker.communicate()[0]
        proxy.down()
    return consumed, log


@pytest.mark.timeout(150)
def test_a_worker_that_could_not_ack_during_an_outage_consumes_again(tmp_path):
    consumed, log = _stall(tmp_path, stall_seconds=4)
    assert consumed, log
    assert "worker consumer stalled" in log
