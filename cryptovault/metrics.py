"""Prometheus metrics of web and worker (prometheus-client).

Events (requests, orders, WebSocket connections) are counted where they happen. State
(Celery queue depth, price age, email outbox) is read when Prometheus scrapes, by
:class:`PlatformStateCollector`, so it is never older than the scrape.

Several processes serve one pod: uvicorn's ``--workers`` and Celery's prefork children.
With ``PROMETHEUS_MULTIPROC_DIR`` set (``make run``, the k8s manifests) each process
writes its values to files in that directory and a scrape sums them
(``MultiProcessCollector``), so any process can answer for all of them. Without it (tests,
a single process) values live in memory. The directory must be empty when the processes
start: values of the previous run would otherwise be added to this one's.
"""

import atexit
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cryptovault.celery import app as celery_app
from cryptovault.celery import celery_queue_lengths
from cryptovault.exceptions import DEPENDENCY_ERRORS, error_response, handler404
from cryptovault.middleware import HybridMiddleware

logger = logging.getLogger(__name__)

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ
# How long an inspect broadcast waits for worker replies; it always waits this long, as
# the number of workers is not known.
INSPECT_TIMEOUT_SECONDS = 0.5
# When the request reached MetricsMiddleware, kept in its environ (request.META).
STARTED_META = "cryptovault.metrics_started"

HTTP_REQUESTS = Counter(
    "cryptovault_http_requests_total",
    "HTTP requests answered, by URL pattern (never the raw path) and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "cryptovault_http_request_duration_seconds",
    "Time from the first middleware to the response, by URL pattern and status.",
    ["method", "route", "status"],
)
ORDERS_PLACED = Counter(
    "cryptovault_orders_placed_total", "Orders accepted (committed).", ["side", "type"]
)
ORDERS_FILLED = Counter("cryptovault_orders_filled_total", "Orders filled.", ["side", "type"])
ORDERS_REJECTED = Counter(
    "cryptovault_orders_rejected_total", "Orders rejected after placing, by reason.", ["reason"]
)
WEBSOCKET_CONNECTIONS = Gauge(
    "cryptovault_websocket_connections",
    "Open (accepted) WebSocket connections, by stream.",
    ["stream"],
    # Summed over the processes still alive: a dead worker's sockets are gone.
    multiprocess_mode="livesum",
)

if MULTIPROCESS:
    # Drops this process's live gauge files (open sockets) when it exits.
    atexit.register(multiprocess.mark_process_dead, os.getpid())


def http_request_observe(*, method: str, route: str, status: int, seconds: float) -> None:
    requests, latency = _http_series(method, route, status)
    requests.inc()
    latency.observe(seconds)


# Bounded: the method is the client's to choose (routes are URL patterns).
@lru_cache(maxsize=1024)
def _http_series(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The two series of a label set: looking them up costs more than counting."""
    labels = {"method": method, "route": route, "status": str(status)}
    return HTTP_REQUESTS.labels(**labels), HTTP_LATENCY.labels(**labels)


class MetricsMiddleware(HybridMiddleware):
    """Counts and times every request Django answers, labelled with the URL pattern that
    matched (``api/v1/orders/<int:order_id>``), so ids in paths do not make new series.
    A path no pattern matches is ``unmatched``. First in ``MIDDLEWARE`` so the time
    includes the other middleware."""

    def before(self, request: HttpRequest) -> None:
        request.META[STARTED_META] = time.perf_counter()

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        match = request.resolver_match
        http_request_observe(
            method=request.method or "",
            route=match.route if match is not None else "unmatched",
            status=response.status_code,
            seconds=time.perf_counter() - request.META[STARTED_META],
        )
        return response


class WebSocketConnectionsCounted:
    """Consumer mixin: counts the socket in ``cryptovault_websocket_connections{stream}``
    from its accept to its disconnect (also a socket accepted only to be closed with an
    error code: it was open)."""

    stream: str
    _counted = False

    async def accept(self, *args, **kwargs) -> None:
        await super().accept(*args, **kwargs)  # type: ignore[misc]  # the consumer's, after us
        WEBSOCKET_CONNECTIONS.labels(stream=self.stream).inc()
        self._counted = True

    async def websocket_disconnect(self, message: dict) -> None:
        if self._counted:
            WEBSOCKET_CONNECTIONS.labels(stream=self.stream).dec()
            self._counted = False
        await super().websocket_disconnect(message)  # type: ignore[misc]  # likewise


def celery_unacked_count() -> int | None:
    """Messages the workers hold and have not acknowledged, as they report them (Celery's
    inspect): running ones (tasks ack late) and prefetched ones. None when no worker
    answered within ``INSPECT_TIMEOUT_SECONDS`` (none up, or all busy past the timeout).
    A message whose worker died before acking is back in its queue once the broker's
    visibility timeout passes, and counted as waiting then."""
    inspect = celery_app.control.inspect(timeout=INSPECT_TIMEOUT_SECONDS)
    active, reserved = inspect.active(), inspect.reserved()
    if active is None and reserved is None:
        return None
    return sum(len(tasks) for replies in (active, reserved) for tasks in (replies or {}).values())


def queue_depths() -> dict:
    """Messages waiting in each Celery queue and messages workers hold unacknowledged."""
    return {"waiting": celery_queue_lengths(), "unacked": celery_unacked_count()}


class PlatformStateCollector(Collector):
    """Series read from PostgreSQL and Redis at scrape time. A dependency that does not
    answer drops its series from this scrape (and is logged); the rest is served."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # Upward calls: the apps import this module for their counters (module-level
        # imports of their selectors would cycle).
        from markets.selectors import prices_age_by_source
        from notifications.selectors import outbox_pending_count

        # (series, help, label or None for a single value, what reads it)
        readers: tuple[tuple[str, str, str | None, Callable[[], Any]], ...] = (
            (
                "cryptovault_celery_queue_length",
                "Messages waiting in each Celery queue (its Redis list).",
                "queue",
                celery_queue_lengths,
            ),
            (
                "cryptovault_price_age_seconds",
                "Seconds since the newest stored price of each source.",
                "source",
                prices_age_by_source,
            ),
            (
                "cryptovault_email_outbox_pending",
                "Emails in the outbox not sent yet.",
                None,
                outbox_pending_count,
            ),
        )
        for name, documentation, label, read in readers:
            try:
                values = read()
            except DEPENDENCY_ERRORS as exc:
                logger.warning("metric unavailable", extra={"metric": name, "error": repr(exc)})
                continue
            if label is None:
                yield GaugeMetricFamily(name, documentation, value=values)
                continue
            family = GaugeMetricFamily(name, documentation, labels=[label])
            for key, value in sorted(values.items()):
                family.add_metric([key], value)
            yield family


class _ThisProcess(Collector):
    """The default registry (this process's own values) as one collector."""

    def collect(self):
        return REGISTRY.collect()


def metrics_registry() -> CollectorRegistry:
    """What a scrape answers: every process's values and the platform state."""
    registry = CollectorRegistry()
    if MULTIPROCESS:
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(PlatformStateCollector())
    return registry


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics`` with ``Authorization: Bearer <METRICS_TOKEN>``. Without the
    setting the endpoint does not exist (404); a missing or wrong token is a 401."""
    token = settings.METRICS_TOKEN
    if not token:
        return handler404(request)
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return error_response(
            401,
            "A valid metrics token is required.",
            "not_authenticated",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    return HttpResponse(generate_latest(metrics_registry()), content_type=CONTENT_TYPE_LATEST)
