"""The dashboard and coin admin charts, drawn from real orders, users, price history and
status samples; the sampler task run by a real worker."""

import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts import services as accounts_services
from accounts.models import User
from accounts.tests.factories import user_create
from markets.models import PricePoint, StatusSample
from markets.services import history_append, status_sample_record
from markets.tasks import status_sample
from orders.models import Order
from orders.services import order_place, order_queue_process, wallet_adjust
from orders.tests.factories import coins_and_prices

SCREENSHOTS = Path(settings.BASE_DIR) / "var/screenshots"


@pytest.fixture
def operator_client(db):
    operator = accounts_services.user_role_set(user=user_create(), role=User.Role.OPERATOR)
    client = Client()
    client.force_login(operator)
    return client


def svgs(html: str) -> dict[str, str]:
    """Every chart on the page by its <title>."""
    found = re.findall(r"<svg [^>]*class=\"cv-chart\".*?</svg>", html, flags=re.S)
    return {re.search(r"<title id=[^>]*>(.*?)</title>", svg).group(1): svg for svg in found}


def test_dashboard_charts_without_data_say_so(operator_client):
    html = operator_client.get(reverse("admin-dashboard")).content.decode()
    charts = svgs(html)
    assert set(charts) == {
        "Orders per minute, last hour",
        "Signups per day, last 30 days",
        "Celery queue depth, last hour",
        "Price age, last hour",
    }
    # The operator signed up today: the only chart with data.
    assert all("No data" in svg for title, svg in charts.items() if "Signups" not in title)
    assert "No tracked coins." in html


def test_dashboard_charts_show_real_orders_signups_prices_and_stale_moments(operator_client):
    now = timezone.now()
    coins_and_prices({"bitcoin": "65000"})
    # 24 h price history with a 2 h hole (failed polls): the line breaks, the hole shaded.
    minutes = [*range(24 * 60 - 2, 3 * 60, -1), *range(60, 0, -1)]
    for ago in minutes:
        history_append(
            as_of=now - timedelta(minutes=ago),
            prices={"bitcoin": Decimal(65000) + Decimal(ago) / 7},
        )
    assert PricePoint.objects.count() == len(minutes)
    for days_ago in (3, 3, 10):
        user_create(date_joined=now - timedelta(days=days_ago))
    trader = user_create()
    wallet_adjust(user=trader, asset="usd", amount=Decimal(1_000_000), reason="test")
    for _ in range(2):
        order_place(user=trader, coin_id="bitcoin", side="buy", type="market", quantity=Decimal(1))
    order_queue_process(user_id=trader.pk)
    order_place(user=trader, coin_id="bitcoin", side="buy", type="market", quantity=Decimal(1))
    coins_and_prices({"bitcoin": "65000"}, age_seconds=600)  # stale before the queue runs
    order_queue_process(user_id=trader.pk)
    assert sorted(Order.objects.values_list("status", flat=True)) == [
        "filled",
        "filled",
        "rejected",
    ]
    status_sample_record()  # a stale minute, and a queue sample

    response = operator_client.get(reverse("admin-dashboard"))
    html = response.content.decode()
    charts = svgs(html)

    orders = charts["Orders per minute, last hour"]
    assert "Totals over the hour: placed 3, filled 2, rejected 1." in orders
    assert orders.count("<polyline") == 3
    signups = charts["Signups per day, last 30 days"]
    # Three earlier signups, the trader and the operator today.
    assert "5 signups over 30 days; today 2." in signups
    assert signups.count("<rect") >= 30  # a bar (possibly empty) for every day

    price = charts["Bitcoin (BTC): usd price, last 24 h"]
    assert f"{len(minutes)} recorded prices" in price
    assert price.count("<polyline") == 2  # broken at the hole
    # The hole, and the stale minute the sampler recorded (it touches the last point).
    assert "stale or no source price: " in price
    assert "2 stale period(s) shaded" in price
    assert reverse("admin:markets_coin_change", args=["bitcoin"]) in html

    age = charts["Price age, last hour"]
    assert "1 minute samples" in age and "stale or no source price" in age
    queue = charts["Celery queue depth, last hour"]
    # No worker ran the sampler here, so none reported messages in flight.
    assert "latest 0 waiting, unknown (no worker answered) in flight" in queue

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "dashboard.html").write_text(html)


def test_coin_admin_change_page_shows_its_24h_chart(operator_client):
    coins_and_prices({"bitcoin": "65000", "ethereum": "3000"})
    now = timezone.now()
    for ago in range(30, 0, -1):
        history_append(
            as_of=now - timedelta(minutes=ago),
            prices={"bitcoin": Decimal(65000 + ago), "ethereum": Decimal("3000.5")},
        )
    html = operator_client.get(
        reverse("admin:markets_coin_change", args=["bitcoin"])
    ).content.decode()
    charts = svgs(html)
    assert list(charts) == ["Bitcoin (BTC): usd price, last 24 h"]
    assert "30 recorded prices, from 65001 to 65030 usd, last 65001 usd; 0 stale" in html


def test_sampler_task_records_a_sample_and_trims_old_ones(celery_worker, celery_task_results):
    coins_and_prices({"bitcoin": "65000"})
    old = StatusSample.objects.create(
        ts=timezone.now() - timedelta(hours=25), price_stale=False, queue_waiting=1
    )
    kept = StatusSample.objects.create(
        ts=timezone.now() - timedelta(hours=23), price_stale=True, queue_waiting=2
    )
    result = status_sample.delay()
    assert celery_task_results.wait(result.id)[0] == "SUCCESS"
    samples = list(StatusSample.objects.order_by("ts"))
    assert [s.pk for s in samples[:1]] == [kept.pk]
    assert not StatusSample.objects.filter(pk=old.pk).exists()
    latest = samples[-1]
    assert latest.ts == timezone.now().replace(second=0, microsecond=0) or (
        timezone.now() - latest.ts < timedelta(minutes=2)
    )
    assert latest.price_source == "coingecko" and latest.price_stale is False
    assert latest.price_age_seconds is not None and latest.price_age_seconds < 60
    # The task's own message was taken off the queue: none waiting, none unacked but it.
    assert latest.queue_waiting == 0
    assert latest.queue_unacked == 1
    # Run again in the same minute: still one sample for it (the row is rewritten).
    result = status_sample.delay()
    assert celery_task_results.wait(result.id)[0] == "SUCCESS"
    assert StatusSample.objects.filter(ts=latest.ts).count() == 1
