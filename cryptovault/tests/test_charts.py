"""The SVG renderer: well-formed, accessible and readable whatever the data."""

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from cryptovault.charts import Band, Series, number_label, time_chart

SVG = "{http://www.w3.org/2000/svg}"
START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(hours=1)


def minutes(*values):
    return [(START + timedelta(minutes=i), v) for i, v in enumerate(values)]


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # noqa: S314 - our own output
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    title_id, desc_id = root.get("aria-labelledby").split()
    assert root.find(f"{SVG}title").get("id") == title_id
    assert root.find(f"{SVG}desc").get("id") == desc_id
    # No style attribute anywhere: a strict style-src CSP would drop it.
    assert "style=" not in svg
    return root


def chart(**kwargs) -> ET.Element:
    """A parsed one-hour chart titled "t"; ``kwargs`` give its series and the rest."""
    return parse(time_chart(title="t", desc="d", start=START, end=END, **kwargs))


def texts(root: ET.Element) -> list[str]:
    return [t.text for t in root.iter(f"{SVG}text")]


def test_empty_data_says_no_data():
    root = parse(time_chart(title="Empty", desc="nothing", start=START, end=END, series=[]))
    assert texts(root) == ["Empty", "No data"]
    only_gaps = time_chart(
        title="Gaps", desc="d", start=START, end=END, series=[Series("a", minutes(None, None))]
    )
    assert texts(parse(only_gaps)) == ["Gaps", "No data"]


def test_a_gap_breaks_the_line_and_bands_are_shaded():
    series = Series("price", minutes(1, 2, None, 4, 5))
    root = chart(
        series=[series],
        bands=[Band(START + timedelta(minutes=2), START + timedelta(minutes=3))],
        band_label="stale",
    )
    lines = root.findall(f"{SVG}polyline")
    assert [len(line.get("points").split()) for line in lines] == [2, 2]
    shaded = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(shaded) == 1 and shaded[0].find(f"{SVG}title").text.startswith("stale: 00:02")
    assert "stale" in texts(root) and "price" in texts(root)


def test_points_too_far_apart_are_not_joined():
    points = [(START, 1), (START + timedelta(minutes=1), 2), (START + timedelta(minutes=30), 3)]
    root = chart(series=[Series("a", points)], max_gap=timedelta(minutes=2))
    assert len(root.findall(f"{SVG}polyline")) == 1
    assert len(root.findall(f"{SVG}circle")) == 1  # the lone point after the gap


def test_a_single_point_is_a_visible_dot_on_a_readable_axis():
    root = chart(series=[Series("a", minutes(Decimal(7)))])
    assert len(root.findall(f"{SVG}circle")) == 1
    assert not root.findall(f"{SVG}polyline")
    # The flat range is padded: several distinct y labels around 7.
    labels = [t for t in texts(root) if t and t[0].isdigit() and ":" not in t]
    assert len(set(labels)) >= 3


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (Decimal("1e21"), Decimal("3e21"), "e21"),  # beyond any float-exact integer
        (Decimal("0.000000012"), Decimal("0.000000019"), "0.0000000"),
        (Decimal("67000.123456789012345678"), Decimal("67100.5"), "k"),
    ],
)
def test_huge_and_tiny_decimals(low, high, expected):
    root = chart(series=[Series("a", minutes(low, high))])
    y_labels = [t for t in texts(root) if t and t[0].isdigit() and ":" not in t]
    assert len(y_labels) >= 3
    assert all(expected in label for label in y_labels if label != "0")
    assert all(len(label) <= 14 for label in y_labels)


def test_number_labels():
    assert number_label(Decimal("67234.56")) == "67.235k"
    assert number_label(Decimal("2.5e21")) == "2.5e21"
    assert number_label(Decimal("1500000000000")) == "1.5T"
    assert number_label(Decimal("0.000012345")) == "0.0000123"
    assert number_label(-3) == "-3"
    assert number_label(0.1 + 0.2) == "0.3"
    assert number_label(0) == "0"


def test_labels_are_escaped():
    svg = time_chart(
        title="<script>alert(1)</script>",
        desc='a & "b"',
        start=START,
        end=END,
        series=[Series("</text><script>", minutes(1, 2))],
    )
    root = parse(svg)
    assert "<script>" not in svg
    assert root.find(f"{SVG}title").text == "<script>alert(1)</script>"
    assert "</text><script>" in texts(root)


def test_bars_one_per_slot():
    days = [(START + timedelta(days=i), n) for i, n in enumerate([0, 3, 1])]
    root = parse(
        time_chart(
            title="t",
            desc="d",
            start=START,
            end=START + timedelta(days=3),
            series=[Series("signups", days)],
            kind="bar",
            slot=timedelta(days=1),
        )
    )
    bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert [float(b.get("height")) > 0 for b in bars] == [False, True, True]
