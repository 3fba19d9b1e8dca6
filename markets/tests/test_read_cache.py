"""The public read cache (``markets.read_cache``) and its ASGI lane (``markets.asgi``):
Django fills it, the lane serves it with no database query, a write of market data
retires it, ETags answer 304, and every header Django would send is there."""

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from django.db import connections
from django.db.backends.signals import connection_created

from cryptovault.asgi import application, django_asgi_app
from cryptovault.testing import uvicorn_in_thread
from markets.asgi import public_reads_lane
from markets.models import PricePoint
from markets.read_cache import READS_PER_MINUTE
from markets.services import prices_record, tickers_record

pytestmark = pytest.mark.django_db(transaction=True)  # Django answers on its own threads

# Headers whose values differ per response by design.
PER_RESPONSE = {"x-request-id", "content-length"}
READS = [
    "/api/v1/coins",
    "/api/v1/coins?search=bit",
    "/api/v1/coins/bitcoin",
    "/api/v1/coins/bitcoin/history?days=1",
    "/api/v1/coins/bitcoin/ohlc?interval=5m&limit=12",
    "/api/v1/arbitrage",
    "/api/v1/prices",
]


@pytest.fixture
def market(simulator, tracked):
    """Prices, a day of stored history and venue tickers: every read answers 200."""
    now = datetime.now(tz=UTC).replace(second=0, microsecond=0)
    PricePoint.objects.bulk_create(
        PricePoint(coin_id="bitcoin", ts=now - timedelta(minutes=m), price=Decimal(60000 + m))
        for m in range(0, 24 * 60 + 30, 5)
    )
    prices_record(prices={"bitcoin": Decimal("65000"), "ethereum": Decimal("3000.5")})
    tickers_record(
        coin_id="bitcoin",
        venues=[("binance", "Binance", Decimal("65000")), ("kraken", "Kraken", Decimal("66000"))],
    )


async def _get(app, path, **kwargs):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        return await client.request(kwargs.pop("method", "GET"), path, **kwargs)


async def _teapot(scope, receive, send):
    """Stands in for Django: a 418 means the lane handed the request on."""
    await send({"type": "http.response.start", "status": 418, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _same_headers(one: httpx.Response, other: httpx.Response) -> None:
    assert {k: v for k, v in one.headers.items() if k not in PER_RESPONSE} == {
        k: v for k, v in other.headers.items() if k not in PER_RESPONSE
    }


@pytest.mark.parametrize("path", READS)
async def test_the_lane_serves_what_django_stored_same_bytes_and_headers(market, path, settings):
    origin = {"Origin": "http://localhost:8000"}  # APP_URL's origin: CORS headers too
    slow = await _get(django_asgi_app, path, headers=origin)  # fills the cache
    fast = await _get(public_reads_lane(_teapot), path, headers=origin)  # no Django at all
    assert slow.status_code == fast.status_code == 200
    assert fast.content == slow.content
    _same_headers(fast, slow)
    assert fast.headers["etag"].startswith('"')
    poll = settings.PRICE_POLL_SECONDS
    assert fast.headers["cache-control"] == f"public, max-age={poll}, s-maxage={poll}"
    assert fast.headers["x-content-type-options"] == "nosniff"
    assert fast.headers["x-frame-options"] == "DENY"
    assert fast.headers["content-security-policy"]
    assert fast.headers["access-control-allow-origin"] == origin["Origin"]
    assert len(fast.headers["x-request-id"]) == 32


class _QueryCounter:
    """Counts SQL statements on every connection opened meanwhile, on any thread (the
    tests run with ``CONN_MAX_AGE=0``: each request opens its own)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)

    def install(self, sender, connection, **kwargs) -> None:
        connection.execute_wrappers.append(self)


def test_warm_reads_make_no_database_query(market):
    counter = _QueryCounter()
    connections.close_all()
    connection_created.connect(counter.install)
    try:
        with uvicorn_in_thread(application) as address, httpx.Client() as client:
            for path in READS:
                cold = client.get(f"http://{address}{path}")
                assert cold.status_code == 200, path
                before = counter.count
                for _ in range(3):
                    warm = client.get(f"http://{address}{path}")
                    assert (warm.status_code, warm.content) == (200, cold.content), path
                assert counter.count == before, path
    finally:
        connection_created.disconnect(counter.install)
    assert counter.count > 0  # the cold reads were counted: the counter works


async def test_a_poll_retires_the_cached_body(market):
    first = await _get(application, "/api/v1/coins")
    assert (await _get(public_reads_lane(_teapot), "/api/v1/coins")).status_code == 200
    prices_record(prices={"bitcoin": Decimal("70000")})
    # The stored body is no longer served; Django answers with the new price.
    assert (await _get(public_reads_lane(_teapot), "/api/v1/coins")).status_code == 418
    second = await _get(application, "/api/v1/coins")
    bitcoin = next(c for c in second.json()["results"] if c["id"] == "bitcoin")
    assert bitcoin["price"] == "70000"
    assert second.headers["etag"] != first.headers["etag"]
    assert (await _get(public_reads_lane(_teapot), "/api/v1/coins")).content == second.content


async def test_tickers_retire_arbitrage(market):
    before = (await _get(application, "/api/v1/arbitrage")).json()
    tickers_record(
        coin_id="bitcoin",
        venues=[("binance", "Binance", Decimal("65000")), ("kraken", "Kraken", Decimal("67000"))],
    )
    after = (await _get(application, "/api/v1/arbitrage")).json()
    assert before["opportunities"][0]["sell_price"] == "66000"
    assert after["opportunities"][0]["sell_price"] == "67000"


@pytest.mark.parametrize("path", READS)
async def test_304_on_an_unchanged_etag_200_after_a_poll(market, path):
    first = await _get(application, path)
    etag = first.headers["etag"]
    for app in (application, public_reads_lane(_teapot), django_asgi_app):
        same = await _get(app, path, headers={"If-None-Match": etag})
        assert same.status_code == 304, app
        assert same.content == b""
        assert same.headers["etag"] == etag
        assert "content-type" not in same.headers
        assert same.headers["cache-control"].startswith("public, max-age=")
        assert same.headers["x-content-type-options"] == "nosniff"
    _same_headers(
        await _get(application, path, headers={"If-None-Match": etag}),
        await _get(django_asgi_app, path, headers={"If-None-Match": etag}),
    )
    prices_record(prices={"bitcoin": Decimal("71000")})
    changed = await _get(application, path, headers={"If-None-Match": etag})
    if path.startswith(("/api/v1/coins/bitcoin/", "/api/v1/arbitrage")):
        # These bytes do not show the latest price: a poll leaves them (and their ETag) as
        # they were, and an old ETag still matches them.
        assert changed.status_code == 304
    else:
        assert changed.status_code == 200
        assert changed.headers["etag"] != etag
        assert b"71000" in changed.content


async def test_a_stale_flag_is_never_served_from_an_old_body(market, settings):
    settings.PRICE_STALE_SECONDS = 60
    prices_record(prices={"bitcoin": Decimal("65000")}, as_of=datetime.now(tz=UTC))
    lane = public_reads_lane(_teapot)  # one lane throughout: it has the fresh body decoded
    fresh = await _get(lane, "/api/v1/prices")
    assert fresh.json()["stale"] is False
    assert (await _get(application, "/api/v1/prices")).content == fresh.content
    settings.PRICE_STALE_SECONDS = 0  # no poll since: the same stored body is now stale
    time.sleep(0.01)
    for app in (lane, application, django_asgi_app):
        stale = await _get(app, "/api/v1/prices", headers={"If-None-Match": fresh.headers["etag"]})
        assert stale.status_code == 200
        assert stale.json()["stale"] is True
        assert stale.headers["etag"] != fresh.headers["etag"]


async def test_cache_control_never_outlives_freshness(market, settings):
    settings.PRICE_STALE_SECONDS = 60
    prices_record(
        prices={"bitcoin": Decimal("65000")}, as_of=datetime.now(tz=UTC) - timedelta(seconds=56)
    )
    for path in ("/api/v1/prices", "/api/v1/coins"):
        for _ in range(2):  # Django, then the lane
            control = (await _get(application, path)).headers["cache-control"]
            max_age = int(control.split("max-age=")[1].split(",")[0])
            assert max_age <= 4, (path, control)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/coins/nope", 404),
        ("/api/v1/coins/nope/history", 404),
        ("/api/v1/coins/bitcoin/history?days=0", 400),
        ("/api/v1/coins/bitcoin/history?days=x", 400),
        ("/api/v1/coins/bitcoin/ohlc?interval=2m", 400),
        ("/api/v1/coins/bitcoin/ohlc", 400),
        ("/api/v1/arbitrage?min_net_pct=abc", 400),
        ("/api/v1/coins?page=0", 400),
    ],
)
async def test_bad_input_is_djangos_and_never_stored(market, path, status):
    for _ in range(2):
        response = await _get(application, path)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        assert "etag" not in response.headers
    assert (await _get(public_reads_lane(_teapot), path)).status_code == 418


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v1/coins?format=json", {}),  # not a parameter of the view: not stored
        ("/api/v1/coins?search=a&search=b", {}),
        ("/api/v1/coins", {"Accept": "text/html"}),  # DRF's to refuse (406)
        ("/api/v1/coins", {"Host": "evil.example"}),
        ("/api/v1/coins/", {}),
    ],
)
async def test_unusual_requests_go_to_django(market, path, headers):
    await _get(application, "/api/v1/coins")  # the plain read is stored
    await _get(application, path, headers=headers)
    assert (await _get(public_reads_lane(_teapot), path, headers=headers)).status_code == 418


async def test_not_acceptable_stays_djangos(market):
    await _get(application, "/api/v1/coins")
    refused = await _get(application, "/api/v1/coins", headers={"Accept": "text/html"})
    assert refused.status_code == 406


async def test_rate_limit_applies_before_the_cache(market, settings):
    path = "/api/v1/coins/bitcoin"
    allowed = READS_PER_MINUTE["coin-detail"]
    for _ in range(allowed):  # the first fills the cache (a miss is counted once)
        assert (await _get(application, path)).status_code == 200
    for app in (application, public_reads_lane(_teapot), django_asgi_app):  # one counter
        limited = await _get(app, path)
        assert limited.status_code == 429, app
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["code"] == "rate_limited"
        assert limited.headers["x-content-type-options"] == "nosniff"
    # Another client, as told by a trusted proxy, has its own count.
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    other = await _get(application, path, headers={"X-Forwarded-For": "203.0.113.9"})
    assert other.status_code == 200


async def test_head_and_preflight(market):
    full = await _get(application, "/api/v1/coins")
    head = await _get(public_reads_lane(_teapot), "/api/v1/coins", method="HEAD")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == full.headers["etag"]
    preflight = {"Origin": "http://localhost:8000", "Access-Control-Request-Method": "GET"}
    fast = await _get(
        application, "/api/v1/coins/bitcoin/ohlc", method="OPTIONS", headers=preflight
    )
    slow = await _get(
        django_asgi_app, "/api/v1/coins/bitcoin/ohlc", method="OPTIONS", headers=preflight
    )
    assert fast.status_code == slow.status_code == 200
    cors = {k: v for k, v in slow.headers.items() if k.startswith("access-control-")}
    assert cors and {k: v for k, v in fast.headers.items() if k in cors} == cors


def test_a_body_read_before_a_write_is_never_stored_after_it(market, rf):
    from django.http import HttpResponse

    from markets.read_cache import cached_response, read_state

    def fill(version: bytes) -> None:
        request = rf.get("/api/v1/coins", HTTP_HOST="localhost")
        response = HttpResponse(b'{"old":true}', content_type="application/json")
        cached_response(request, response, version=version, as_of_raw=None, params=frozenset())

    lane = public_reads_lane(_teapot)
    version, _ = read_state()
    prices_record(prices={"bitcoin": Decimal("70000")})  # the write lands meanwhile
    fill(version)
    assert (asyncio.run(_get(lane, "/api/v1/coins"))).status_code == 418
    fill(read_state()[0])  # built after the write: stored, until the next write
    assert asyncio.run(_get(lane, "/api/v1/coins")).content == b'{"old":true}'
    tickers_record(coin_id="bitcoin", venues=[("binance", "Binance", Decimal("65000"))])
    assert asyncio.run(_get(lane, "/api/v1/coins")).status_code == 418


class _Counted:
    """Django (the real one), counting the requests the lane hands it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        await django_asgi_app(scope, receive, send)


@pytest.mark.parametrize("path", [p for p in READS if p != "/api/v1/prices"])
async def test_concurrent_misses_make_one_django_render(market, path):
    django = _Counted()
    lane = public_reads_lane(django)
    answers = await asyncio.gather(*(_get(lane, path) for _ in range(12)))
    assert django.calls == 1
    assert {(a.status_code, a.content) for a in answers} == {(200, answers[0].content)}
    assert len({a.headers["etag"] for a in answers}) == 1
    # A poll retires the entry: the next burst of misses refills it once more.
    prices_record(prices={"bitcoin": Decimal("70000")})
    await asyncio.gather(*(_get(lane, path) for _ in range(12)))
    assert django.calls == 2


async def test_misses_of_what_django_never_stores_each_reach_django(market):
    django = _Counted()
    lane = public_reads_lane(django)
    answers = await asyncio.gather(*(_get(lane, "/api/v1/coins/nope") for _ in range(6)))
    assert {a.status_code for a in answers} == {404}
    assert django.calls == 6  # after waiting for the first, the others went on


async def test_one_lane_across_polls_never_serves_an_old_body(market):
    """One lane (its decoded entries live as long as it) through a 304 and a poll."""
    django = _Counted()
    lane = public_reads_lane(django)
    first = await _get(lane, "/api/v1/coins")
    assert (await _get(lane, "/api/v1/coins")).content == first.content
    same = await _get(lane, "/api/v1/coins", headers={"If-None-Match": first.headers["etag"]})
    assert (same.status_code, same.headers["etag"], django.calls) == (304, first.headers["etag"], 1)
    prices_record(prices={"bitcoin": Decimal("70000")})
    changed = await _get(lane, "/api/v1/coins", headers={"If-None-Match": first.headers["etag"]})
    assert (changed.status_code, django.calls) == (200, 2)
    assert b'"70000"' in changed.content and changed.headers["etag"] != first.headers["etag"]
    assert (await _get(lane, "/api/v1/coins")).content == changed.content
    assert django.calls == 2
