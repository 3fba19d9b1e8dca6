"""The event log under concurrency, on real PostgreSQL connections (one per thread)."""

import threading

import pytest
from django.db import close_old_connections, transaction

from accounts.models import User
from notifications.events import events_record
from notifications.models import UserEvent
from notifications.tests.factories import user_create

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_transaction_holding_the_user_row_does_not_deadlock_with_an_event_being_logged():
    """A logs an event (taking the user's counter), B locks the user row FOR UPDATE (as
    a login does) and then logs an event too. A's commit checks the log row's foreign key
    (FOR KEY SHARE on the user): unless A took that lock before the counter, A waits for
    B's row lock while B waits for A's counter, and PostgreSQL kills one of them."""
    user = user_create()
    a_logged, b_locked = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run(body):
        try:
            body()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            close_old_connections()

    def a():
        with transaction.atomic():
            events_record(frames_by_user={user.pk: [{"type": "notification"}]})
            a_logged.set()
            b_locked.wait(timeout=2)  # B holds the user row now (or waits behind us)

    def b():
        a_logged.wait(timeout=5)
        with transaction.atomic():
            User.objects.select_for_update().get(pk=user.pk)
            b_locked.set()
            events_record(frames_by_user={user.pk: [{"type": "order"}]})

    threads = [threading.Thread(target=run, args=(body,)) for body in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert list(UserEvent.objects.filter(user=user).values_list("event_id", flat=True)) == [1, 2]
