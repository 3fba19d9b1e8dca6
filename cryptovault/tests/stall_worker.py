"""The Celery app a test worker process runs in test_worker_watchdog.py: the platform's
app (its settings and the ConsumerWatchdog step) plus two tasks that report through
files, so they need no Redis or PostgreSQL while the broker is cut."""

import time
from pathlib import Path

from cryptovault.celery import app

# Without remote control the worker has no pub/sub connection, whose failure would
# otherwise notice the lost broker first, now and then: the stall is then certain.
app.conf.worker_enable_remote_control = False


@app.task(name="tests.stall.touch")
def touch(path: str) -> None:
    Path(path).write_text("done")


@app.task(name="tests.stall.slow_touch")
def slow_touch(started: str, path: str, seconds: float) -> None:
    Path(started).write_text("started")
    time.sleep(seconds)
    Path(path).write_text("done")
