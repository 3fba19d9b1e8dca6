"""Connect retries (cryptovault.reconnect) against a real Redis behind a proxy we cut."""

import threading
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings

from cryptovault.reconnect import RetryingRedisConnection
from cryptovault.testing import TcpProxy


@pytest.fixture
def redis_behind_proxy():
    url = urlsplit(settings.REDIS_URL)
    proxy = TcpProxy((url.hostname or "localhost", url.port or 6379))
    pool = redis.ConnectionPool(
        connection_class=RetryingRedisConnection,
        host="127.0.0.1",
        port=proxy.port,
        db=int(url.path.lstrip("/") or 0),
        socket_connect_timeout=1,
        socket_timeout=2,
    )
    yield proxy, redis.Redis(connection_pool=pool)
    pool.disconnect()
    proxy.down()


def test_a_redis_restart_shorter_than_the_connect_retries_is_invisible(redis_behind_proxy):
    proxy, client = redis_behind_proxy
    assert settings.REDIS_CONNECT_RETRY_SECONDS >= 2
    assert client.ping()

    proxy.down()  # refused for about a second, then accepted again
    threading.Timer(1.0, proxy.up).start()
    assert client.set("cv:test:reconnect", "1")
    assert client.get("cv:test:reconnect") == b"1"


def test_a_longer_redis_outage_still_fails(redis_behind_proxy, settings):
    proxy, client = redis_behind_proxy
    settings.REDIS_CONNECT_RETRY_SECONDS = 0.3
    assert client.ping()

    proxy.down()
    with pytest.raises(redis.ConnectionError):
        client.ping()
