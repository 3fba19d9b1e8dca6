"""Candles: ``markets.selectors.candle_list`` and ``GET /api/v1/coins/<id>/ohlc``, from
price points stored in the real PostgreSQL."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from markets.models import PricePoint
from markets.selectors import candle_list

# A fixed hour, so buckets are predictable: 2026-01-01T10:00Z.
HOUR = datetime(2026, 1, 1, 10, tzinfo=UTC)


def _points(coin_id: str, prices: dict[int, str]) -> None:
    """One stored point per minute offset from HOUR."""
    PricePoint.objects.bulk_create(
        PricePoint(coin_id=coin_id, ts=HOUR + timedelta(minutes=m), price=Decimal(p))
        for m, p in prices.items()
    )


def test_candles_aggregate_open_high_low_close_per_bucket(tracked):
    _points("bitcoin", {0: "100", 1: "120", 2: "90", 3: "110", 5: "200", 9: "190"})
    candles = candle_list(
        coin_id="bitcoin", interval="5m", limit=3, start=HOUR, end=HOUR + timedelta(minutes=14)
    )
    assert [(c.open_time, c.open, c.high, c.low, c.close) for c in candles] == [
        (HOUR, 100, 120, 90, 110),
        (HOUR + timedelta(minutes=5), 200, 200, 190, 190),
    ]  # the third bucket (10-15) has no point: no candle


def test_candles_leave_gaps_and_stay_in_the_window(tracked):
    _points("bitcoin", {0: "1", 1: "2", 4: "5", 5: "6"})
    _points("ethereum", {2: "99"})
    candles = candle_list(
        coin_id="bitcoin", interval="1m", limit=5, end=HOUR + timedelta(minutes=4, seconds=30)
    )
    # The last five minutes ending in minute 4 are minutes 0-4; minutes 2-3 are a gap.
    assert [c.open_time.minute for c in candles] == [0, 1, 4]
    assert [c.close for c in candles] == [1, 2, 5]


def test_candles_align_to_the_epoch(tracked):
    _points("bitcoin", {m: str(m + 1) for m in range(0, 180, 30)})
    candles = candle_list(coin_id="bitcoin", interval="4h", limit=2, end=HOUR + timedelta(hours=3))
    # 4-hour buckets since 1970-01-01T00:00Z: 08:00 and 12:00.
    assert [c.open_time.hour for c in candles] == [8, 12]
    assert (candles[0].open, candles[0].close) == (1, 91)


def test_ohlc_endpoint(api_client, tracked):
    now = datetime.now(tz=UTC).replace(second=0, microsecond=0)
    PricePoint.objects.bulk_create(
        PricePoint(coin_id="bitcoin", ts=now - timedelta(minutes=m), price=Decimal(60000 + m))
        for m in range(0, 30)
    )
    response = api_client.get("/api/v1/coins/bitcoin/ohlc", {"interval": "1m", "limit": 10})
    assert response.status_code == 200
    body = response.json()
    assert len(body) == 10
    assert body[-1][0] == int(now.timestamp() * 1000)
    assert body[-1][1:] == ["60000", "60000", "60000", "60000"]
    assert [row[0] for row in body] == sorted(row[0] for row in body)
    hourly = api_client.get("/api/v1/coins/bitcoin/ohlc", {"interval": "1h"}).json()
    assert hourly  # default limit; the 30 points fall in one or two hourly buckets
    assert {row[2] for row in hourly} <= {"60029", *(str(60000 + m) for m in range(30))}
    assert max(Decimal(row[2]) for row in hourly) == Decimal("60029")
    assert all(isinstance(price, str) for row in hourly for price in row[1:])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({}, "interval"),
        ({"interval": "2m"}, "interval"),
        ({"interval": "3m"}, "interval"),  # Binance's klines have it; the native API not
        ({"interval": "1h", "limit": 0}, "limit"),
        ({"interval": "1h", "limit": 1001}, "limit"),
        ({"interval": "1h", "limit": "ten"}, "limit"),
    ],
)
def test_ohlc_bad_params_are_field_errors(api_client, tracked, query, field):
    response = api_client.get("/api/v1/coins/bitcoin/ohlc", query)
    assert response.status_code == 400
    assert field in response.json()


def test_ohlc_unknown_coin_is_404(api_client, tracked):
    response = api_client.get("/api/v1/coins/nocoin/ohlc", {"interval": "1h"})
    assert response.status_code == 404


def test_ohlc_is_rate_limited_per_ip(api_client, tracked, settings):
    from markets.read_cache import READS_PER_MINUTE

    limit = READS_PER_MINUTE["coin-ohlc"]
    for _ in range(limit):
        assert api_client.get("/api/v1/coins/bitcoin/ohlc", {"interval": "1h"}).status_code == 200
    refused = api_client.get("/api/v1/coins/bitcoin/ohlc", {"interval": "1h"})
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert int(refused["Retry-After"]) >= 1
