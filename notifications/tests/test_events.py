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


def test_the_frames_are_logged_and_returned_with_their_ids_first():
    """One statement logs every user's frames: ids go on from each user's last, the text
    returned for the push is the one logged, and is the frame encoded with its id first."""
    from notifications.realtime import frame_encode

    first, second = user_create(), user_create()
    with transaction.atomic():
        events_record(frames_by_user={first.pk: [{"type": "order"}]})
    frames = {
        second.pk: [{"type": "order", "order": {"id": 7, "quantity": "0.5"}}],
        first.pk: [
            {"type": "notification", "notification": {"title": 'say "hi" \\ é {}'}},
            {"type": "order", "order": None},
        ],
    }
    originals = {user_id: [dict(frame) for frame in own] for user_id, own in frames.items()}
    with transaction.atomic():
        texts = events_record(frames_by_user=frames)
    expected = {
        first.pk: [{"id": 2, **originals[first.pk][0]}, {"id": 3, **originals[first.pk][1]}],
        second.pk: [{"id": 1, **originals[second.pk][0]}],
    }
    assert frames == expected
    assert texts == {
        user_id: [frame_encode(frame) for frame in own] for user_id, own in expected.items()
    }
    logged = {
        (row.user_id, row.event_id): (row.kind, row.frame)
        for row in UserEvent.objects.filter(user__in=[first, second])
    }
    assert logged == {
        (user_id, frame["id"]): (frame["type"], text)
        for user_id, own in expected.items()
        for frame, text in zip(own, texts[user_id], strict=True)
    } | {(first.pk, 1): ("order", '{"id":1,"type":"order"}')}
