"""The operations dashboard in the admin (``/admin/dashboard/``): price source status,
queue depth, today's orders and signups, open limit orders, the latest audit events, and
charts (``cryptovault.charts``) of prices, order flow, queues and signups over time.

Every figure is cheap to compute whatever the size of the tables: Redis reads of what the
poller and Celery already store, counts served by indexes, and chart series bounded by
the primary key (rows newer than a boundary id) and grouped in PostgreSQL.

Project wiring, like the URLconf that serves it: it reads every app, and no app imports it.
"""

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.db.models import Count, Model, QuerySet
from django.db.models.functions import TruncDate, TruncMinute
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.safestring import SafeString
from django_celery_beat.models import PeriodicTask

from accounts.models import AuditEvent, User
from cryptovault.charts import Series, merged_bands, time_chart
from cryptovault.exceptions import STATUS_READ_ERRORS
from cryptovault.metrics import queue_depths
from markets.charts import MINUTE, STALE_LABEL, price_charts, stale_sample_spans
from markets.models import Coin, StatusSample
from markets.selectors import prices_age_seconds, prices_snapshot
from markets.sources import rate_limited_for
from orders.models import LedgerEntry, Order

logger = logging.getLogger(__name__)

# Calls a minute the CoinGecko plans allow (Demo: about 30, errors count too).
PLAN_CALLS_PER_MINUTE = {"demo": 30, "pro": 500}
POLL_TASKS = ("markets.prices_poll", "markets.tickers_poll")


def rows_created_since(model: type[Model], field: str, since: datetime) -> QuerySet[Any]:
    """Rows created since ``since``, found through the primary key: ids grow with the
    creation time, so the newest row older than ``since`` bounds them (a walk back over
    the recent rows on the pk index, no scan of the whole table)."""
    boundary = (
        model._default_manager.filter(**{f"{field}__lt": since})
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    rows = model._default_manager.all()
    return rows if boundary is None else rows.filter(pk__gt=boundary)


def rows_since(model: type[Model], field: str, since: datetime) -> int:
    return rows_created_since(model, field, since).count()


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


RECENT_WINDOW = timedelta(hours=1)
SIGNUP_DAYS = 30


def _per_minute(rows, since: datetime) -> list[tuple[datetime, int]]:
    counts = {row["minute"]: row["n"] for row in rows}
    start = since.replace(second=0, microsecond=0)
    return [(start + MINUTE * i, counts.get(start + MINUTE * i, 0)) for i in range(61)]


def order_flow_chart(now: datetime) -> SafeString:
    """Orders placed, filled and rejected per minute over the last hour. Placed and
    rejected come from the orders placed in the window (the queue rejects within moments
    of placement); fills from the ledger, so a limit order resting since yesterday counts
    in the minute it filled."""
    since = now - RECENT_WINDOW
    recent = rows_created_since(Order, "created_at", since)
    placed = (
        recent.annotate(minute=TruncMinute("created_at")).values("minute").annotate(n=Count("id"))
    )
    rejected = (
        recent.filter(status=Order.Status.REJECTED)
        .annotate(minute=TruncMinute("updated_at"))
        .values("minute")
        .annotate(n=Count("id"))
    )
    filled = (
        rows_created_since(LedgerEntry, "created_at", since)
        .filter(kind__in=(LedgerEntry.Kind.TRADE_BUY, LedgerEntry.Kind.TRADE_SELL))
        .annotate(minute=TruncMinute("created_at"))
        .values("minute")
        .annotate(n=Count("order_id", distinct=True))
    )
    counts = {
        "placed": _per_minute(placed, since),
        "filled": _per_minute(filled, since),
        "rejected": _per_minute(rejected, since),
    }
    series = [Series(name, points) for name, points in counts.items()]
    totals = ", ".join(f"{name} {sum(n for _, n in points)}" for name, points in counts.items())
    has_orders = any(n for points in counts.values() for _, n in points)
    return time_chart(
        title="Orders per minute, last hour",
        desc=f"Totals over the hour: {totals}.",
        start=since,
        end=now,
        series=series if has_orders else [],
        unit="orders/min",
        zero_based=True,
    )


def status_charts(now: datetime) -> tuple[SafeString, SafeString]:
    """Queue depth and price age over the last hour, from the minute samples; a minute
    with no sample (sampler or beat down) breaks the lines."""
    since = now - RECENT_WINDOW
    samples = list(
        StatusSample.objects.filter(ts__gte=since).values_list(
            "ts", "queue_waiting", "queue_unacked", "price_age_seconds"
        )
    )
    bands = merged_bands(stale_sample_spans(since))
    gap = MINUTE * 2.5
    waiting = [(ts, w) for ts, w, _, _ in samples]
    unacked = [(ts, u) for ts, _, u, _ in samples]
    ages = [(ts, age) for ts, _, _, age in samples]
    latest = samples[-1] if samples else None
    queue = time_chart(
        title="Celery queue depth, last hour",
        desc=(
            f"{len(samples)} minute samples; latest {latest[1]} waiting, "
            f"{'unknown (no worker answered)' if latest[2] is None else latest[2]} in flight."
            if latest
            else "No samples recorded yet (is beat running markets.status_sample?)."
        ),
        start=since,
        end=now,
        series=[Series("waiting", waiting), Series("in flight", unacked)],
        unit="messages",
        max_gap=gap,
        zero_based=True,
    )
    age = time_chart(
        title="Price age, last hour",
        desc=(
            f"{len(samples)} minute samples; latest age {latest[3]} s; "
            f"{len(bands)} stale period(s) shaded."
            if latest
            else "No samples recorded yet (is beat running markets.status_sample?)."
        ),
        start=since,
        end=now,
        series=[Series("price age (s)", ages)],
        unit="seconds",
        bands=bands,
        band_label=STALE_LABEL,
        max_gap=gap,
        zero_based=True,
    )
    return queue, age


def signups_chart(now: datetime) -> SafeString:
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    since = today - timedelta(days=SIGNUP_DAYS - 1)
    rows = (
        rows_created_since(User, "date_joined", since)
        .annotate(day=TruncDate("date_joined"))
        .values("day")
        .annotate(n=Count("id"))
    )
    counts = {row["day"]: row["n"] for row in rows}
    days = [since + timedelta(days=i) for i in range(SIGNUP_DAYS)]
    points = [(day, counts.get(day.date(), 0)) for day in days]
    total = sum(n for _, n in points)
    return time_chart(
        title=f"Signups per day, last {SIGNUP_DAYS} days",
        desc=f"{total} signups over {SIGNUP_DAYS} days; today {points[-1][1]}.",
        start=since,
        end=today + timedelta(days=1),
        series=[Series("signups", points)] if total else [],
        kind="bar",
        slot=timedelta(days=1),
        unit="users",
    )


def dashboard_charts() -> dict:
    now = timezone.now()
    queue, age = status_charts(now)
    return {
        "prices": price_charts(list(Coin.objects.filter(tracked=True))),
        "orders": order_flow_chart(now),
        "queue": queue,
        "price_age": age,
        "signups": signups_chart(now),
    }


def _section(name: str, read):
    try:
        return read(), None
    except STATUS_READ_ERRORS as exc:
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
        "charts": dashboard_charts(),
        "recent_events": AuditEvent.objects.select_related("actor")[:10],
    }
    return TemplateResponse(request, "admin/dashboard.html", context)


# Staff only (operators and admins), with the admin's login redirect and CSRF handling.
admin_dashboard = admin.site.admin_view(dashboard)
