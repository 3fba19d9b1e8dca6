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


# The statement ``events_record`` ran before the function (migration 0007), kept as the
# reference the function must agree with.
_STATEMENT_BEFORE = """
WITH users AS MATERIALIZED (
    SELECT id FROM accounts_user WHERE id = ANY(%(user_ids)s::bigint[])
    ORDER BY id FOR KEY SHARE
), counters AS (
    INSERT INTO notifications_usereventcounter AS c (user_id, last_id)
    SELECT * FROM unnest(%(user_ids)s::bigint[], %(counts)s::bigint[])
    WHERE (SELECT count(*) FROM users) >= 0
    ORDER BY 1
    ON CONFLICT (user_id) DO UPDATE SET last_id = c.last_id + EXCLUDED.last_id
    RETURNING user_id, last_id
), logged AS (
    INSERT INTO notifications_userevent (user_id, event_id, kind, frame, created_at)
    SELECT f.user_id, c.last_id - f.back, f.kind,
        '{"id":' || (c.last_id - f.back) || ',' || f.tail, %(now)s
    FROM unnest(%(frame_users)s::bigint[], %(backs)s::bigint[], %(kinds)s::varchar[],
        %(tails)s::text[]) AS f (user_id, back, kind, tail)
    JOIN counters c USING (user_id)
)
SELECT user_id, last_id FROM counters
"""


def _log_arguments(frames_by_user: dict[int, list[tuple[str, str]]]) -> dict:
    """The arguments of both statements for frames given as (kind, tail) per user."""
    from django.utils import timezone

    from cryptovault.sqlarrays import pg_array, pg_text_array

    user_ids = sorted(frames_by_user)
    flat = [
        (user_id, len(frames_by_user[user_id]) - 1 - offset, kind, tail)
        for user_id in user_ids
        for offset, (kind, tail) in enumerate(frames_by_user[user_id])
    ]
    return {
        "user_ids": pg_array(user_ids),
        "counts": pg_array(len(frames_by_user[user_id]) for user_id in user_ids),
        "now": timezone.now(),
        "frame_users": pg_array(row[0] for row in flat),
        "backs": pg_array(row[1] for row in flat),
        "kinds": pg_text_array(row[2] for row in flat),
        "tails": pg_text_array(row[3] for row in flat),
    }


def test_the_function_logs_what_the_statement_before_it_logged():
    """Two sets of users get the same frames, in the same transactions, one set through
    the statement ``events_record`` ran before migration 0007, the other through the
    function: same last ids returned, same log rows, user for user."""
    from django.db import connection

    from notifications.events import _EVENTS_RECORD

    before, after = [user_create() for _ in range(3)], [user_create() for _ in range(3)]
    batches = [
        {0: [("order", '"type":"order"}')]},
        {1: [("notification", '"type":"notification","n":"é \\" {}"}')] * 3, 0: []},
        {2: [("order", '"type":"order","o":1}')], 0: [("order", '"type":"order"}')] * 2},
        {index: [("order", '"type":"order"}')] * (index + 1) for index in range(3)},
    ]
    returned: dict[str, list] = {"before": [], "after": []}
    for batch in batches:
        for name, users, statement in (
            ("before", before, _STATEMENT_BEFORE),
            ("after", after, _EVENTS_RECORD),
        ):
            frames = {users[index].pk: own for index, own in batch.items() if own}
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(statement, _log_arguments(frames))
                rows = dict(cursor.fetchall())
            by_pk = {user.pk: index for index, user in enumerate(users)}
            returned[name].append(sorted((by_pk[pk], last_id) for pk, last_id in rows.items()))
    assert returned["before"] == returned["after"]

    def logged(users):
        return [
            list(
                UserEvent.objects.filter(user=user)
                .order_by("event_id")
                .values_list("event_id", "kind", "frame")
            )
            for user in users
        ]

    assert logged(before) == logged(after)
    assert [len(rows) for rows in logged(after)] == [4, 5, 4]


def test_the_user_rows_are_locked_before_the_counters():
    """While another transaction holds a user's row FOR UPDATE (as a login does), logging
    an event for that user waits on the row before it takes the user's counter: the
    counter stays free for others meanwhile."""
    from django.db import connection

    from notifications.models import UserEventCounter

    user = user_create()
    with transaction.atomic():
        events_record(frames_by_user={user.pk: [{"type": "order"}]})
    row_locked, release, logged = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holder():
        try:
            with transaction.atomic():
                User.objects.select_for_update().get(pk=user.pk)
                row_locked.set()
                release.wait(timeout=10)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            close_old_connections()

    def logger():
        try:
            row_locked.wait(timeout=5)
            with transaction.atomic():
                events_record(frames_by_user={user.pk: [{"type": "order"}]})
            logged.set()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=body) for body in (holder, logger)]
    for thread in threads:
        thread.start()
    try:
        assert row_locked.wait(timeout=5)
        # The logger is waiting on the user's row by now, or about to.
        assert not logged.wait(timeout=0.5)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"SELECT last_id FROM {UserEventCounter._meta.db_table}"  # noqa: S608
                " WHERE user_id = %s FOR UPDATE NOWAIT",
                [user.pk],
            )
            assert cursor.fetchone() == (1,)
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=30)
    assert errors == []
    assert logged.is_set()
    assert list(UserEvent.objects.filter(user=user).values_list("event_id", flat=True)) == [1, 2]
