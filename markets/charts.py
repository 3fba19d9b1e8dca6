"""Charts of the market data for the admin: each coin's price over 24 h (the coin's page,
the operations dashboard) shaded where there was no fresh source price."""

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django.utils.safestring import SafeString

from cryptovault.charts import Series, merged_bands, time_chart
from cryptovault.decimals import decimal_str
from markets.models import Coin, PricePoint, StatusSample
from markets.price_store import SIMULATED_SOURCE

PRICE_WINDOW = timedelta(hours=24)
# The 24 h price lines keep one point per bucket (and both ends of every gap): a few
# hundred points a coin, whatever the history interval.
PRICE_BUCKET = timedelta(minutes=5)
STALE_LABEL = "stale or no source price"
MINUTE = timedelta(minutes=1)


def stale_sample_spans(since: datetime) -> list[tuple[datetime, datetime]]:
    """Minutes the sampler found the prices stale or simulated (or Redis unreachable)."""
    stale = StatusSample.objects.filter(
        Q(price_stale=True) | Q(price_source=SIMULATED_SOURCE), ts__gte=since
    ).values_list("ts", flat=True)
    return [(ts, ts + MINUTE) for ts in stale]


def _price_line(
    points: list[tuple[datetime, Decimal]], now: datetime, max_gap: timedelta
) -> tuple[list[tuple[datetime, Decimal | None]], list[tuple[datetime, datetime]]]:
    """The line to draw (bucketed, ``None`` at every gap) and the gaps as spans: more
    than ``max_gap`` between two source prices, or since the last one until now."""
    line: list[tuple[datetime, Decimal | None]] = []
    gaps: list[tuple[datetime, datetime]] = []
    # The last point kept may be replaced by a later one of its bucket, unless it is the
    # first point after a gap (the line must start where the prices resumed).
    replaceable = False
    for index, (ts, price) in enumerate(points):
        previous = points[index - 1][0] if index else ts
        after_gap = ts - previous > max_gap
        if after_gap:
            gaps.append((previous, ts))
            line.append((previous + max_gap / 2, None))
        same_bucket = bool(line) and (ts - now) // PRICE_BUCKET == (line[-1][0] - now) // (
            PRICE_BUCKET
        )
        if replaceable and same_bucket and not after_gap:
            line[-1] = (ts, price)
        else:
            line.append((ts, price))
        replaceable = not after_gap and index > 0
    if points and now - points[-1][0] > max_gap:
        gaps.append((points[-1][0], now))
    return line, gaps


def price_charts(coins: list[Coin]) -> list[tuple[Coin, SafeString]]:
    """Each coin's usd price over 24 h, shaded where there was no fresh source price:
    gaps in the recorded history (failed polls, simulated fallback, which history never
    records) and minutes the sampler saw stale prices. Two queries for any number of
    coins."""
    now = timezone.now()
    since = now - PRICE_WINDOW
    max_gap = timedelta(
        seconds=max(2 * settings.PRICE_HISTORY_INTERVAL_SECONDS, settings.PRICE_STALE_SECONDS)
    )
    history: dict[str, list[tuple[datetime, Decimal]]] = {coin.id: [] for coin in coins}
    rows = PricePoint.objects.filter(coin__in=history, ts__gte=since).order_by("coin", "ts")
    for coin_id, ts, price in rows.values_list("coin_id", "ts", "price"):
        history[coin_id].append((ts, price))
    sample_spans = stale_sample_spans(since)
    # The same window, unit and shading for every coin.
    every_chart: dict[str, Any] = {
        "start": since,
        "end": now,
        "unit": "usd",
        "band_label": STALE_LABEL,
    }
    charts = []
    for coin in coins:
        points = history[coin.id]
        line, gaps = _price_line(points, now, max_gap)
        bands = merged_bands(gaps + sample_spans)
        summary = (
            f"{len(points)} recorded prices, from {decimal_str(min(p for _, p in points))} "
            f"to {decimal_str(max(p for _, p in points))} usd, "
            f"last {decimal_str(points[-1][1])} usd"
            if points
            else "no price recorded"
        )
        chart = time_chart(
            title=f"{coin.name} ({coin.symbol.upper()}): usd price, last 24 h",
            desc=f"{summary}; {len(bands)} stale period(s) shaded.",
            series=[Series("price (usd)", line)],
            bands=bands,
            **every_chart,
        )
        charts.append((coin, chart))
    return charts
