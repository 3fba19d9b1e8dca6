"""Shared fixtures. Tests run against the real PostgreSQL and Redis.

Redis isolation: the test run uses its own Redis database (pytest-env sets
``REDIS_URL`` in pyproject.toml), flushed around each test so no state leaks.
"""

import pytest
from django_redis import get_redis_connection
from rest_framework.test import APIClient


@pytest.fixture(autouse=True)
def _clean_redis():
    connection = get_redis_connection("default")
    connection.flushdb()
    yield
    connection.flushdb()


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
