"""The worker's DB connection around tasks: Django's request-cycle rules, not a
reconnect per task (which cost a Postgres backend start per order run)."""

import pytest
from django.db import connection

from cryptovault.celery import _db_connections_recycle
from orders.tasks import order_queue_sweep

pytestmark = pytest.mark.django_db(transaction=True)


def _task_ends() -> None:
    # The handler itself: once a test has run a real worker, Celery's own fixup
    # (which closes per task unless CONN_MAX_AGE > 0 at startup) is connected too.
    _db_connections_recycle(task=order_queue_sweep)


def test_connection_closed_after_a_task_without_conn_max_age():
    assert connection.settings_dict["CONN_MAX_AGE"] == 0
    connection.ensure_connection()
    _task_ends()
    assert connection.connection is None


def test_connection_kept_across_tasks_with_conn_max_age():
    connection.close()
    connection.settings_dict["CONN_MAX_AGE"] = 300
    try:
        connection.ensure_connection()
        kept = connection.connection
        _task_ends()
        assert connection.connection is kept
    finally:
        connection.settings_dict["CONN_MAX_AGE"] = 0
        connection.close()
