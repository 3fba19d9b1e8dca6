"""Shared fixtures. Tests run against the real PostgreSQL and Redis.

Redis isolation: the test run uses its own Redis database (pytest-env sets
``REDIS_URL`` in pyproject.toml), flushed around each test so no state leaks.
"""

import threading

import pytest
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django_redis import get_redis_connection
from rest_framework.test import APIClient


@pytest.fixture(autouse=True)
def _clean_redis():
    connection = get_redis_connection("default")
    connection.flushdb()
    yield
    connection.flushdb()


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test gets its own channel layer object (``ChannelLayerManager.set``, meant for
    tests). The layer is process-global but binds its receives to one event loop, and
    tests run servers on loops of their own: a receive left running on a stopped test
    server's loop must not make the next test's sockets fail with "Two event loops are
    trying to receive() on one channel layer at once!"."""
    channel_layers.set(DEFAULT_CHANNEL_LAYER, channel_layers.make_backend(DEFAULT_CHANNEL_LAYER))
    yield


@pytest.fixture(scope="session")
def rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def celery_worker(transactional_db):
    """A real Celery worker thread consuming the real Redis broker.

    Tasks run in this process against the test database, so tests using it must
    use the transactional database (the worker has its own DB connection).
    """
    from cryptovault.testing import celery_worker_running

    with celery_worker_running() as worker:
        yield worker


class _TaskResults:
    """What each task run in this process returned (``task_postrun``): the platform runs
    Celery without a result backend, and the test worker is a thread of this process."""

    def __init__(self) -> None:
        self.done: dict[str, tuple[str, object]] = {}
        self._changed = threading.Condition()

    def record(self, task_id=None, retval=None, state=None, **_) -> None:
        with self._changed:
            self.done[task_id] = (state, retval)
            self._changed.notify_all()

    def wait(self, task_id: str, timeout: float = 30.0) -> tuple[str, object]:
        with self._changed:
            if not self._changed.wait_for(lambda: task_id in self.done, timeout=timeout):
                raise AssertionError(f"task {task_id} did not run within {timeout} s")
            return self.done[task_id]


@pytest.fixture
def celery_task_results():
    """``celery_task_results.wait(async_result.id)`` → ``(state, return value)``."""
    from celery.signals import task_postrun

    results = _TaskResults()
    task_postrun.connect(results.record, weak=False)
    yield results
    task_postrun.disconnect(results.record)
