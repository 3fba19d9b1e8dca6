import pytest
from django.core.cache import cache

from cryptovault.celery import app


@app.task(name="tests.cache_set")
def cache_set(key: str, value: str) -> None:
    cache.set(key, value)


@pytest.mark.timeout(60)
def test_tasks_reach_a_real_worker_through_redis(celery_worker):
    import time

    cache_set.delay("probe", "done")

    deadline = time.monotonic() + 20
    while cache.get("probe") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.get("probe") == "done"
