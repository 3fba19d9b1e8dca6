"""Small server-side SVG charts for the admin: time series as lines or bars, with axes,
a legend, shaded bands (moments the data is not to be trusted) and breaks at gaps.

Pure Python, no JavaScript and no third-party origin, so the charts render offline and
under a same-origin Content-Security-Policy. Colours are presentation attributes (never
``style``, which a strict ``style-src`` refuses); text and axes use ``currentColor`` so
the admin's light and dark themes both read.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import count

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

Number = Decimal | int | float

# Drawn at its natural size (width/height attributes, no CSS): charts flow inline, two
# abreast on a desktop admin, wrapping on a narrow screen.
WIDTH, HEIGHT = 480, 200
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 44, 28
PALETTE = ("#2f7ed8", "#2e9e5b", "#d9534f", "#8e44ad", "#e08e0b")
BAND_COLOUR = "#e08e0b"
Y_TICKS = 4
X_TICKS = 6
SI = ((Decimal("1e12"), "T"), (Decimal("1e9"), "G"), (Decimal("1e6"), "M"), (Decimal("1e3"), "k"))

# Unique ids for <title>/<desc> so several charts on one page keep aria-labelledby apart.
_ids = count(1)


@dataclass(frozen=True)
class Series:
    """``points`` as ``(moment, value)``; a ``None`` value is a known gap."""

    name: str
    points: Sequence[tuple[datetime, Number | None]]
    colour: str = ""


@dataclass(frozen=True)
class Band:
    start: datetime
    end: datetime


def merged_bands(spans: list[tuple[datetime, datetime]]) -> list[Band]:
    """The spans as bands, overlapping or touching ones merged, in time order."""
    bands: list[Band] = []
    for start, end in sorted(spans):
        if bands and start <= bands[-1].end:
            bands[-1] = Band(bands[-1].start, max(bands[-1].end, end))
        else:
            bands.append(Band(start, end))
    return bands


@dataclass
class _Frame:
    start: datetime
    end: datetime
    low: float
    high: float
    parts: list[str] = field(default_factory=list)

    def x(self, moment: datetime) -> float:
        span = (self.end - self.start).total_seconds() or 1.0
        return LEFT + (moment - self.start).total_seconds() / span * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return TOP + (self.high - value) / (self.high - self.low) * (HEIGHT - TOP - BOTTOM)


def number_label(value: Number) -> str:
    """A short label for any magnitude: ``67.2k``, ``1.5T``, ``2.5e21``, ``0.000012``."""
    value = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= SI[0][0] * 1000:
        exponent = value.adjusted()
        return f"{_trim(value.scaleb(-exponent), 2)}e{exponent}"
    for threshold, suffix in SI:
        if magnitude >= threshold:
            return f"{_trim(value / threshold, 3)}{suffix}"
    if magnitude >= 1:
        return _trim(value, 2)
    # Below 1: three significant digits, in plain notation (prices of small coins).
    places = -magnitude.adjusted() + 2
    return _trim(value, places)


def _trim(value: Decimal, places: int) -> str:
    text = f"{value.quantize(Decimal(1).scaleb(-places)):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _nice_step(span: float) -> float:
    raw = span / Y_TICKS
    power = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        if raw <= multiple * power:
            return multiple * power
    return 10 * power


def _value_range(values: list[float], zero_based: bool) -> tuple[float, float, float]:
    low, high = min(values), max(values)
    if zero_based:
        low = min(low, 0.0)
    if high == low:
        # One value (or a flat line): give it room above and below.
        pad = abs(high) * 0.05 or 1.0
        low, high = (low if zero_based else low - pad), high + pad
    step = _nice_step(high - low)
    return math.floor(low / step) * step, math.ceil(high / step) * step, step


def _time_label(moment: datetime, span: timedelta) -> str:
    return f"{moment:%m-%d}" if span > timedelta(days=2) else f"{moment:%H:%M}"


def _axes(frame: _Frame, step: float, unit: str) -> None:
    parts = frame.parts
    bottom = HEIGHT - BOTTOM
    ticks = int(round((frame.high - frame.low) / step))
    for i in range(ticks + 1):
        value = frame.low + i * step
        y = frame.y(value)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="currentColor" stroke-opacity="0.15"/>'
        )
        label = number_label(value)
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="currentColor">{escape(label)}</text>'
        )
    if unit:
        parts.append(
            f'<text x="4" y="{TOP - 5}" font-size="11" fill="currentColor">{escape(unit)}</text>'
        )
    span = frame.end - frame.start
    for i in range(X_TICKS + 1):
        moment = frame.start + span * i / X_TICKS
        x = frame.x(moment)
        anchor = "start" if i == 0 else "end" if i == X_TICKS else "middle"
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}" '
            'stroke="currentColor"/>'
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="{anchor}" font-size="11" '
            f'fill="currentColor">{escape(_time_label(moment, span))}</text>'
        )
    parts.append(
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{bottom}" y2="{bottom}" '
        'stroke="currentColor"/>'
    )


def _bands(frame: _Frame, bands: Sequence[Band], label: str) -> None:
    for band in bands:
        start, end = max(band.start, frame.start), min(band.end, frame.end)
        if end <= start:
            continue
        x1, x2 = frame.x(start), frame.x(end)
        frame.parts.append(
            f'<rect x="{x1:.1f}" y="{TOP}" width="{max(x2 - x1, 1.5):.1f}" '
            f'height="{HEIGHT - TOP - BOTTOM}" fill="{BAND_COLOUR}" fill-opacity="0.22">'
            f"<title>{escape(label)}: {start:%H:%M}–{end:%H:%M} UTC</title></rect>"
        )


def _segments(
    points: Sequence[tuple[datetime, Number | None]], max_gap: timedelta | None
) -> list[list[tuple[datetime, float]]]:
    """Runs of consecutive points: a ``None`` value or more than ``max_gap`` between two
    points starts a new run, so a line never bridges a moment nothing was recorded."""
    runs: list[list[tuple[datetime, float]]] = []
    current: list[tuple[datetime, float]] = []
    previous: datetime | None = None
    for moment, value in sorted(points, key=lambda point: point[0]):
        broken = previous is not None and max_gap is not None and moment - previous > max_gap
        if value is None or broken:
            if current:
                runs.append(current)
            current = []
        if value is not None:
            current.append((moment, float(value)))
        previous = moment
    if current:
        runs.append(current)
    return runs


def _line(frame: _Frame, series: Series, colour: str, max_gap: timedelta | None) -> None:
    for run in _segments(series.points, max_gap):
        if len(run) == 1:
            # A lone point has no line to draw: a dot keeps it visible.
            moment, value = run[0]
            frame.parts.append(
                f'<circle cx="{frame.x(moment):.1f}" cy="{frame.y(value):.1f}" r="2.5" '
                f'fill="{colour}"/>'
            )
            continue
        coords = " ".join(f"{frame.x(m):.1f},{frame.y(v):.1f}" for m, v in run)
        frame.parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.6" '
            'stroke-linejoin="round"/>'
        )


def _bars(frame: _Frame, series: Series, colour: str, slot: timedelta) -> None:
    span = (frame.end - frame.start).total_seconds() or 1.0
    width = max(slot.total_seconds() / span * (WIDTH - LEFT - RIGHT) * 0.8, 1.0)
    base = frame.y(max(frame.low, 0.0))
    for moment, value in series.points:
        if value is None:
            continue
        x = frame.x(moment + slot / 2) - width / 2
        top = frame.y(float(value))
        frame.parts.append(
            f'<rect x="{x:.1f}" y="{min(top, base):.1f}" width="{width:.1f}" '
            f'height="{abs(base - top):.1f}" fill="{colour}">'
            f"<title>{escape(_time_label(moment, frame.end - frame.start))}: "
            f"{escape(number_label(value))}</title></rect>"
        )


def _legend(parts: list[str], entries: list[tuple[str, str, bool]]) -> None:
    x = LEFT
    for name, colour, is_band in entries:
        if is_band:
            parts.append(
                f'<rect x="{x}" y="22" width="14" height="10" fill="{colour}" fill-opacity="0.35"/>'
            )
        else:
            parts.append(
                f'<line x1="{x}" x2="{x + 14}" y1="27" y2="27" stroke="{colour}" stroke-width="3"/>'
            )
        parts.append(
            f'<text x="{x + 18}" y="31" font-size="11" fill="currentColor">{escape(name)}</text>'
        )
        x += 18 + 7 * len(name) + 16


def time_chart(
    *,
    title: str,
    desc: str,
    start: datetime,
    end: datetime,
    series: Sequence[Series],
    kind: str = "line",
    unit: str = "",
    bands: Sequence[Band] = (),
    band_label: str = "",
    max_gap: timedelta | None = None,
    slot: timedelta | None = None,
    zero_based: bool = False,
) -> SafeString:
    """An ``<svg>`` of ``series`` over ``[start, end]``: ``kind="line"`` breaks at gaps
    (``None`` values, or points more than ``max_gap`` apart); ``kind="bar"`` draws one
    series as one bar per ``slot`` starting at each point. ``bands`` shade spans labelled
    ``band_label``. With no value at all the chart says "No data", not empty axes."""
    ident = next(_ids)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" class="cv-chart" '
        f'aria-labelledby="cv-chart-{ident}-title cv-chart-{ident}-desc">'
        f'<title id="cv-chart-{ident}-title">{escape(title)}</title>'
        f'<desc id="cv-chart-{ident}-desc">{escape(desc)}</desc>'
        # The title drawn too: the charts sit side by side with no caption of their own.
        f'<text x="4" y="13" font-size="12" font-weight="bold" fill="currentColor">'
        f"{escape(title)}</text>"
    ]
    values = [float(v) for s in series for _, v in s.points if v is not None]
    if not values:
        parts.append(
            f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
            f'height="{HEIGHT - TOP - BOTTOM}" fill="none" stroke="currentColor" '
            'stroke-opacity="0.3" stroke-dasharray="4 4"/>'
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" font-size="14" '
            f'fill="currentColor">No data</text></svg>'
        )
        return mark_safe("".join(parts))  # noqa: S308 - every text above is escaped
    low, high, step = _value_range(values, zero_based or kind == "bar")
    frame = _Frame(start=start, end=end, low=low, high=high, parts=parts)
    _bands(frame, bands, band_label)
    _axes(frame, step, unit)
    legend = []
    for index, one in enumerate(series):
        colour = one.colour or PALETTE[index % len(PALETTE)]
        if kind == "bar":
            _bars(frame, one, colour, slot or timedelta(days=1))
        else:
            _line(frame, one, colour, max_gap)
        legend.append((one.name, colour, False))
    if bands and band_label:
        legend.append((band_label, BAND_COLOUR, True))
    _legend(parts, legend)
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text above is escaped
