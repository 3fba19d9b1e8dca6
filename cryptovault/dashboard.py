"""The operations dashboard in the admin (``/admin/dashboard/``): price source status,
queue depth, today's orders and signups, open limit orders, the latest audit events.

Every figure is cheap to compute whatever the size of the tables: Redis reads of what the
poller and Celery already store, and counts served by indexes.
"""

import logging
from datetime import datetime

import redis
from django.conf import settings
from django.contrib import admin
from django.db.models import Model
from django.template.response import TemplateResponse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from kombu.transport.redis import PRIORITY_STEPS, Channel

from accounts.models import AuditEvent, User
from markets.selectors import prices_age_seconds, prices_snapshot
from markets.sources import rate_limited_for
from orders.models import Order

logger = logging.getLogger(__name__)

QUEUES = ("celery", "orders")
# Calls a minute the CoinGecko plans allow (Demo: about 30, errors count too).
PLAN_CALLS_PER_MINUTE = {"demo": 30, "pro": 500}
POLL_TASKS = ("markets.prices_poll", "markets.tickers_poll")


def rows_since(model: type[Model], field: str, since: datetime) -> int:
    """Rows created since ``since``, counted through the primary key: ids grow with the
    creation time, so the newest row older than ``since`` bounds today's rows (a walk
    back over today's rows on the pk index, no scan of the whole table)."""
    boundary = (
        model.objects.filter(**{f"{field}__lt": since})
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    rows = model.objects.all() if boundary is None else model.objects.filter(pk__gt=boundary)
    return rows.count()


def poll_calls_per_minute() -> float:
    """Source calls a minute the enabled poll schedules make (each run is one call), from
    the periodic tasks operators edit, else (beat never ran) from the settings."""
    tasks = list(PeriodicTask.objects.filter(task__in=POLL_TASKS).select_related("interval"))
    if tasks:
        seconds = [
            task.interval.schedule.run_every.total_seconds()
            for task in tasks
            if task.enabled and task.interval is not None
        ]
    else:
        seconds = [settings.PRICE_POLL_SECONDS, settings.TICKERS_POLL_SECONDS]
    return round(sum(60 / s for s in seconds if s > 0), 1)


def price_source_status() -> dict:
    """What the poller left in Redis: the last good write, its source and age, and the
    back-off after a 429. Failed polls write nothing, so their sign is age, staleness
    and the simulated fallback taking over."""
    snapshot = prices_snapshot()
    age = prices_age_seconds()
    backoff = rate_limited_for()
    problems = []
    if snapshot["as_of"] is None:
        problems.append("No prices recorded yet: is beat running, and the worker?")
    elif snapshot["stale"]:
        problems.append(
            f"Prices are stale (older than {settings.PRICE_STALE_SECONDS} s): "
            "orders are refused until a poll succeeds."
        )
    if snapshot["source"] == "simulated":
        problems.append("The source is failing: simulated fallback prices are being served.")
    if backoff:
        problems.append(f"Rate limited by the source (429): calls resume in {backoff:.0f} s.")
    plan = settings.COINGECKO_PLAN.lower()
    return {
        "url": settings.MARKET_DATA_URL,
        "plan": plan,
        "last_poll": snapshot["as_of"],
        "age_seconds": age,
        "source": snapshot["source"],
        "stale": snapshot["stale"],
        "coins": len(snapshot["prices"]),
        "fallback": settings.MARKET_DATA_FALLBACK,
        "rate_limited_seconds": round(backoff),
        "calls_per_minute": poll_calls_per_minute(),
        "budget_per_minute": PLAN_CALLS_PER_MINUTE.get(plan),
        "problems": problems,
    }


def queue_depths() -> dict:
    """Messages waiting in each Celery queue (kombu keeps one Redis list per queue and
    priority step) and messages taken by workers but not acknowledged yet."""
    client = redis.Redis.from_url(
        settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2
    )
    try:
        pipe = client.pipeline(transaction=False)
        for queue in QUEUES:
            for step in PRIORITY_STEPS:
                pipe.llen(f"{queue}{Channel.sep}{step}" if step else queue)
        pipe.hlen(Channel.unacked_key)
        lengths = pipe.execute()
    finally:
        client.close()
    steps = len(PRIORITY_STEPS)
    waiting = {queue: sum(lengths[i * steps : (i + 1) * steps]) for i, queue in enumerate(QUEUES)}
    return {"waiting": waiting, "unacked": lengths[-1]}


def activity_today() -> dict:
    midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "since": midnight,
        "orders": rows_since(Order, "created_at", midnight),
        "signups": rows_since(User, "date_joined", midnight),
        # Partial indexes on status (the open book, the pending queue) serve these.
        "open_limit_orders": Order.objects.filter(
            status=Order.Status.OPEN, type=Order.Type.LIMIT
        ).count(),
        "pending_orders": Order.objects.filter(status=Order.Status.PENDING).count(),
    }


def _section(name: str, read):
    try:
        return read(), None
    except (redis.RedisError, OSError) as exc:
        logger.warning("dashboard section unavailable", extra={"section": name, "error": str(exc)})
        return None, f"Unavailable: {exc}"


def dashboard(request):
    prices, prices_error = _section("prices", price_source_status)
    queues, queues_error = _section("queues", queue_depths)
    context = {
        **admin.site.each_context(request),
        "title": "Operations dashboard",
        "prices": prices,
        "prices_error": prices_error,
        "queues": queues,
        "queues_error": queues_error,
        "today": activity_today(),
        "recent_events": AuditEvent.objects.select_related("actor")[:10],
    }
    return TemplateResponse(request, "admin/dashboard.html", context)


# Staff only (operators and admins), with the admin's login redirect and CSRF handling.
admin_dashboard = admin.site.admin_view(dashboard)
