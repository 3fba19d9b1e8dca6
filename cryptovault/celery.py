import logging
import os
import time

from celery import Celery, bootsteps
from celery.signals import (
    before_task_publish,
    setup_logging,
    task_postrun,
    task_prerun,
    task_received,
    worker_ready,
)
from django.conf import settings
from django.db import close_old_connections
from kombu.exceptions import ChannelError
from prometheus_client import start_http_server

from cryptovault.logging import request_id_var, task_var

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptovault.settings")

logger = logging.getLogger(__name__)

app = Celery("cryptovault")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The queues the worker consumes (Procfile ``-Q``) and KEDA scales it on
# (deploy/k8s/worker.yaml): ``orders.*`` tasks go to ``orders`` (CELERY_TASK_ROUTES).
CELERY_QUEUES = ("celery", "orders")


def celery_queue_lengths(queues: tuple[str, ...] = CELERY_QUEUES) -> dict[str, int]:
    """Messages waiting in each Celery queue: the length of its Redis list, what KEDA's
    Redis list scaler reads too (kombu's passive declare, which counts every priority
    step of the queue; an empty list does not exist). Uses a connection of its own."""
    lengths = {}
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1)
        channel = connection.default_channel
        for queue in queues:
            try:
                lengths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except ChannelError:
                lengths[queue] = 0
    return lengths


class ConsumerStalled(ConnectionError):
    """Raised inside the worker's event loop when its consumer stopped taking messages."""


class ConsumerWatchdog(bootsteps.StartStopStep):
    """Reconnects a worker whose consumer has silently stopped consuming.

    Celery 5.6 and 5.7 with the Redis transport can come back from a Redis restart with
    a consumer that never fetches again (celery/celery#10205, #10302; reproduced here by
    ``bench/worker_stall.py``). One cause: tasks that finish while Redis is down cannot
    be acknowledged, kombu keeps them as delivered, the prefetch window stays full, and
    with no BRPOP in flight the consumer never sees that its connection is dead.

    Every ``WORKER_STALL_CHECK_SECONDS`` this step (in the worker's main process, on the
    consumer's own timer) looks at how long ago this worker received a task. When that
    is longer than ``WORKER_STALL_SECONDS`` and messages wait in the queues it consumes
    (read over a connection of its own) at two checks in a row, with nothing received in
    between, it raises a connection error in the event loop: Celery then does what it
    does on a lost connection, a fresh connection and a fresh prefetch window, and the
    waiting messages flow again. Messages the old connection had
    delivered and not acknowledged are redelivered; every task here is idempotent.

    A worker whose every process is busy on a task longer than the stall window while
    messages wait looks the same; it reconnects once per window, which costs a
    redelivery of its running tasks' messages, never a lost or doubled effect.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}
    last_received = time.monotonic()

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.timer_entry = None
        # ``last_received`` as it was when messages were first seen waiting.
        self.suspect_since: float | None = None

    def start(self, c):
        type(self).last_received = time.monotonic()
        self.stall_seconds = settings.WORKER_STALL_SECONDS
        self.queues = tuple(queue.name for queue in c.task_consumer.queues)
        self.timer_entry = c.timer.call_repeatedly(
            settings.WORKER_STALL_CHECK_SECONDS, self.check, priority=10
        )

    def stop(self, c):
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    def check(self) -> None:
        """Reconnects on the second check in a row that finds messages waiting with
        nothing received since before the first: a message published just before one
        check is taken within milliseconds by a healthy consumer, never a whole check
        interval later."""
        last_received = type(self).last_received
        idle = time.monotonic() - last_received
        if idle < self.stall_seconds:
            self.suspect_since = None
            return
        try:
            waiting = sum(celery_queue_lengths(self.queues).values())
        except Exception:  # noqa: BLE001 - the broker is down: Celery's own reconnect owns that
            return
        if not waiting:
            self.suspect_since = None
            return
        if self.suspect_since != last_received:
            self.suspect_since = last_received  # first sighting: look again next time
            return
        logger.warning(
            "worker consumer stalled: %d messages waiting, none received for %.0f s; reconnecting",
            waiting,
            idle,
            extra={"data": {"waiting": waiting, "idle_seconds": round(idle)}},
        )
        type(self).last_received = time.monotonic()
        self.suspect_since = None
        raise ConsumerStalled(f"no message received for {idle:.0f} s while {waiting} wait")


@task_received.connect
def _consumer_alive(**_: object) -> None:
    ConsumerWatchdog.last_received = time.monotonic()


app.steps["consumer"].add(ConsumerWatchdog)


@setup_logging.connect
def _keep_django_logging(**_: object) -> None:
    """Worker and beat log as the web does, one JSON object per line.

    Celery sets its own plain-text handlers on the root logger unless this signal has a
    receiver. Django, set up by Celery's Django fixup before this signal, has applied
    the settings' ``LOGGING`` already (``LOG_LEVEL`` is its level, not ``--loglevel``),
    so there is nothing left to do here.
    """


# The request id travels with each task, so a worker's log lines can be joined
# to the HTTP request that enqueued them.
@before_task_publish.connect
def _attach_request_id(headers: dict | None = None, **_: object) -> None:
    request_id = request_id_var.get()
    if headers is not None and request_id:
        headers.setdefault("request_id", request_id)


@task_prerun.connect
def _task_context_set(task_id=None, task=None, **_: object) -> None:
    request_id = getattr(task.request, "request_id", None) if task else None
    request_id_var.set(request_id)
    task_var.set((task_id, task.name) if task else None)


@task_postrun.connect
def _task_context_clear(**_: object) -> None:
    request_id_var.set(None)
    task_var.set(None)


@task_prerun.connect
@task_postrun.connect
def _db_connections_recycle(task=None, **_: object) -> None:
    """Around every task, what Django does around every request: close a connection
    that is broken or older than CONN_MAX_AGE (so with CONN_MAX_AGE=0, after each
    task). Celery's own per-task close is off when CONN_MAX_AGE > 0 (settings), so the
    worker reuses its connection instead of starting a Postgres backend per task."""
    if task is not None and not getattr(task.request, "is_eager", False):
        close_old_connections()


@worker_ready.connect
def _serve_metrics(**_: object) -> None:
    """The worker's /metrics on METRICS_PORT (main process; with PROMETHEUS_MULTIPROC_DIR
    it answers for the prefork children too). Started once the pool is up, so the
    children do not inherit the listening socket."""
    # cryptovault.metrics imports this module (queue lengths) at load time.
    from cryptovault.metrics import metrics_registry

    if settings.METRICS_PORT:
        start_http_server(settings.METRICS_PORT, registry=metrics_registry())
