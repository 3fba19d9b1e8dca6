"""Every process of the Procfile logs one JSON object per line: each runs here as a real
subprocess, as the Procfile starts it, against the test database and Redis."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from websockets.sync.client import connect

from cryptovault.celery import app
from cryptovault.logging import request_id_var

ROOT = Path(__file__).resolve().parents[2]
# The one thing not logged: Celery writes this straight to stdout from its SIGTERM
# handler (where logging is unsafe), between blank lines, whatever the configuration.
CELERY_SHUTDOWN_NOTICE = ("", "worker: Warm shutdown (MainProcess)")

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


class _Output:
    """A process's merged stdout and stderr, line by line, as it comes."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 60) -> dict:
        def found() -> dict | None:
            for line in self.lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and predicate(record):
                    return record
            return None

        with self._changed:
            if not self._changed.wait_for(lambda: found() is not None, timeout=timeout):
                raise AssertionError("no such line in:\n" + "\n".join(self.lines))
            return found()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _process(*args: str, **env: str) -> Iterator[_Output]:
    """Runs ``python args`` on the test database; on exit, stops it as honcho does
    (SIGTERM) and checks that every line it wrote was a JSON object."""
    database = settings.DATABASES["default"]
    environment = {
        **os.environ,
        "DEBUG": "true",
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:"
        f"{database['PORT']}/{database['NAME']}",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    process = subprocess.Popen(  # noqa: S603 - fixed interpreter and arguments
        [sys.executable, *args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = _Output(process.stdout)
    try:
        yield output
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for line in output.lines:
        if line not in CELERY_SHUTDOWN_NOTICE:
            assert isinstance(json.loads(line), dict), line


def test_worker_lines_are_json_with_the_task_and_the_originating_request():
    queue = f"test-logs-{os.getpid()}"
    with _process(
        "-m", "celery", "-A", "cryptovault", "--quiet", "worker", "--loglevel", "INFO",
        "--concurrency", "1", "-Q", queue, "-n", f"{queue}@%h",
    ) as output:  # fmt: skip
        output.wait_for(lambda r: r["message"].endswith(" ready."))
        # As a request that enqueues a task: its request id travels in the task headers.
        token = request_id_var.set("req-from-the-api")
        try:
            task_id = app.send_task("markets.history_prune", queue=queue).id
        finally:
            request_id_var.reset(token)
        done = output.wait_for(
            lambda r: r.get("task_id") == task_id and "succeeded" in r["message"]
        )
    assert done["task_name"] == "markets.history_prune"
    assert done["request_id"] == "req-from-the-api"
    assert done["logger"] == "celery.app.trace"
    assert done["level"] == "INFO"


def test_beat_lines_are_json():
    with _process(
        "-m", "celery", "-A", "cryptovault", "--quiet", "beat", "--loglevel", "INFO",
        "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler",
    ) as output:  # fmt: skip
        started = output.wait_for(lambda r: "Starting" in r["message"])
    assert started["logger"].startswith("celery.beat")


def test_web_lines_are_json_with_the_request_id():
    port = _free_port()
    with _process(
        "-m", "uvicorn", "cryptovault.asgi:application", "--port", str(port),
        "--no-access-log",
    ) as output:  # fmt: skip
        output.wait_for(lambda r: r["logger"] == "uvicorn.error" and "running" in r["message"])
        response = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/nope", headers={"X-Request-ID": "trace-7"}
        )
        assert response.status_code == 404
        not_found = output.wait_for(lambda r: r["logger"] == "django.request")
    assert not_found["request_id"] == "trace-7"
    assert "color_message" not in not_found


def test_web_log_level_applies_to_uvicorn_lines():
    """At LOG_LEVEL=WARNING a WebSocket connection and an HTTP request print nothing:
    uvicorn's own INFO lines ("connection open", "[accepted]") follow LOG_LEVEL too."""
    port = _free_port()
    with _process(
        "-m", "uvicorn", "cryptovault.asgi:application", "--port", str(port),
        "--no-access-log", LOG_LEVEL="WARNING",
    ) as output:  # fmt: skip
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health")
                break
            except httpx.TransportError:
                threading.Event().wait(0.1)
        with connect(f"ws://127.0.0.1:{port}/ws/prices", open_timeout=10) as socket_:
            assert json.loads(socket_.recv(timeout=10))["type"] == "snapshot"
        threading.Event().wait(0.5)
    levels = [json.loads(line)["level"] for line in output.lines if line.startswith("{")]
    assert "INFO" not in levels, output.lines


def test_simulator_lines_are_json():
    port = _free_port()
    with _process("manage.py", "run_simulator", "--port", str(port)) as output:
        listening = output.wait_for(lambda r: r["message"] == "simulator listening")
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/_control/state").raise_for_status()
                break
            except httpx.TransportError:
                threading.Event().wait(0.1)
        else:
            raise AssertionError("the simulator did not answer")
    assert listening["url"] == f"http://127.0.0.1:{port}"
