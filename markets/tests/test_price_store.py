"""The Redis price store (markets.price_store): an emptied store is refilled from
PostgreSQL with the true as-of, never over a newer poll."""

import time
from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
from django.utils import timezone
from django_redis import get_redis_connection

from markets.models import Coin
from markets.price_store import (
    EMPTY_PRICES_BODY,
    PRICE_CLOCK_SKEW_SECONDS,
    prices_are_stale,
    prices_body_render,
    snapshot_body,
)
from markets.selectors import PriceUnavailable, price_get_fresh, prices_snapshot
from markets.services import latest_prices_record, prices_record
from markets.sources import MarketQuote


def _record_real_prices(*, as_of, prices: dict[str, str]) -> None:
    """What a successful poll leaves behind in PostgreSQL and Redis."""
    Coin.objects.bulk_create(
        [Coin(id=coin_id, symbol=coin_id[:3], name=coin_id) for coin_id in prices]
    )
    quotes = [
        MarketQuote(coin_id, coin_id[:3], coin_id, Decimal(price), Decimal("1.5"), None, None, None)
        for coin_id, price in prices.items()
    ]
    latest_prices_record(as_of=as_of, source="coingecko", quotes=quotes)
    prices_record(prices={q.id: q.price for q in quotes}, as_of=as_of)


def _redis_restarted_empty() -> None:
    get_redis_connection("default").flushdb()


@pytest.mark.django_db
def test_an_emptied_price_store_is_refilled_from_postgres_with_the_true_as_of():
    as_of = timezone.now() - timedelta(seconds=5)
    _record_real_prices(as_of=as_of, prices={"bitcoin": "65000.5", "ethereum": "3000"})
    _redis_restarted_empty()

    quote = price_get_fresh(coin_id="bitcoin")
    assert (quote.price, quote.as_of, quote.source) == (Decimal("65000.5"), as_of, "coingecko")
    snapshot = prices_snapshot()
    assert snapshot["stale"] is False
    assert snapshot["as_of"] == as_of.isoformat().replace("+00:00", "Z")
    assert snapshot["prices"]["ethereum"] == {"usd": "3000", "change_24h_pct": "1.5"}


@pytest.mark.django_db
def test_a_refilled_price_that_was_already_old_is_still_stale(settings):
    as_of = timezone.now() - timedelta(seconds=settings.PRICE_STALE_SECONDS + 5)
    _record_real_prices(as_of=as_of, prices={"bitcoin": "65000"})
    _redis_restarted_empty()

    with pytest.raises(PriceUnavailable) as raised:
        price_get_fresh(coin_id="bitcoin")
    assert raised.value.code == "price_stale"
    assert prices_snapshot()["stale"] is True


@pytest.mark.django_db
def test_a_refill_never_overwrites_a_newer_poll():
    old = timezone.now() - timedelta(seconds=20)
    _record_real_prices(as_of=old, prices={"bitcoin": "60000"})
    _redis_restarted_empty()
    prices_record(prices={"bitcoin": Decimal("61000")})  # a poll landed first

    assert price_get_fresh(coin_id="bitcoin").price == Decimal("61000")


def test_the_stale_flag_is_set_at_read_time(settings):
    now = time.time()
    fresh = snapshot_body(as_of=timezone.now(), source="coingecko", quotes={})
    assert b'"stale":false' in prices_body_render(body=fresh, as_of_raw=repr(now).encode())
    old = repr(now - settings.PRICE_STALE_SECONDS - 1).encode()
    assert orjson.loads(prices_body_render(body=fresh, as_of_raw=old))["stale"] is True
    assert prices_body_render(body=None, as_of_raw=None) == EMPTY_PRICES_BODY
    assert prices_are_stale(as_of_epoch=now + PRICE_CLOCK_SKEW_SECONDS + 5)  # from the future
    assert not prices_are_stale(as_of_epoch=now + PRICE_CLOCK_SKEW_SECONDS / 2)
