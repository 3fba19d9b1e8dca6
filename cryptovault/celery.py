import os

from celery import Celery
from celery.signals import (
    before_task_publish,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_ready,
)
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptovault.settings")

app = Celery("cryptovault")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


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
    from cryptovault.logging import request_id_var

    request_id = request_id_var.get()
    if headers is not None and request_id:
        headers.setdefault("request_id", request_id)


@task_prerun.connect
def _task_context_set(task_id=None, task=None, **_: object) -> None:
    from cryptovault.logging import request_id_var, task_var

    request_id = getattr(task.request, "request_id", None) if task else None
    request_id_var.set(request_id)
    task_var.set((task_id, task.name) if task else None)


@task_postrun.connect
def _task_context_clear(**_: object) -> None:
    from cryptovault.logging import request_id_var, task_var

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
    from django.conf import settings
    from prometheus_client import start_http_server

    from cryptovault.metrics import metrics_registry

    if settings.METRICS_PORT:
        start_http_server(settings.METRICS_PORT, registry=metrics_registry())
