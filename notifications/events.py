"""The user event log: every ``order`` and ``notification`` frame pushed on a user's
streams (``/ws/user``, ``GET /api/v1/stream/user``), kept in PostgreSQL so a client that
reconnects gets what it missed.

Ids are per user, gapless, and given in commit order. ``events_record`` runs in the
transaction that causes the events and takes the next ids from the user's
:class:`~notifications.models.UserEventCounter` row with one ``INSERT .. ON CONFLICT DO
UPDATE``, which holds that row locked until the transaction ends. So a user's
transactions that make events commit one after the other, in id order, and a rolled-back
one gives its ids back. Hence two properties readers rely on:
- once id N is visible, every id below it is visible too: a reader resuming "after N"
  can never skip an event committed later with a smaller id (the hazard of a global
  sequence, whose ids are handed out at insert and commit in any order);
- a gap in what a reader sees live (a push lost, or overtaken by another process's push)
  is exactly the ids between, all already in the log: ``EventCursor`` reads them.
An order's placement logs its ``order`` frame the same way, inside the one call that
places it (``orders_order_place``, orders migration 0005: the user's row, then the
counter, after the order's balance row).
The price is that one user's event-making transactions queue on that row from their
first event to their commit; they already queue on the user's balances (order fills),
and a batch locks its users' rows together, in user id order (no deadlock between
batches).

Retention: an event stays replayable for at least ``EVENT_RETENTION`` (24 h) and at most
the last ``EVENT_RETENTION_PER_USER`` (1,000) per user; ``events_prune`` (the daily
``notifications.events_prune`` task) deletes the rest. Resuming from an id no longer in the log is a
``reset``: the client re-fetches its state over REST.
"""

from datetime import timedelta
from typing import NamedTuple

import orjson
from channels.db import database_sync_to_async
from django.db import connection
from django.utils import timezone

from cryptovault.sqlarrays import pg_array, pg_text_array
from notifications.models import UserEvent, UserEventCounter
from notifications.realtime import frame_encode

EVENT_RETENTION = timedelta(hours=24)
EVENT_RETENTION_PER_USER = 1000
REPLAY_PAGE = 500
MAX_EVENT_ID = 2**63 - 1


class Event(NamedTuple):
    id: int
    kind: str
    text: str  # the frame's JSON text


# The whole of ``events_record`` in one call of ``notifications_events_record``, a
# PL/pgSQL function (migration 0007), whose statements each backend plans once. It locks
# the users' rows first (FOR KEY SHARE, as the commit's foreign-key check of the log rows
# would take them), then the counters; both in user id order. Taken at commit instead,
# they came after the counter: a login holding its user's row FOR UPDATE and waiting for
# the counter deadlocked with us. The counters are inserted (and locked) in user id
# order: two batches touching the same users cannot deadlock. A frame's id is its user's
# new last id minus ``back`` (how many of the user's frames follow it), and its text the
# frame's JSON with the id put first.
_EVENTS_RECORD = """
SELECT user_id, last_id FROM notifications_events_record(
    %(user_ids)s::bigint[], %(counts)s::bigint[], %(now)s, %(frame_users)s::bigint[],
    %(backs)s::bigint[], %(kinds)s::varchar[], %(tails)s::text[])
"""


def frame_tail(frame: dict) -> str:
    """The frame's JSON text without its opening brace: what the log puts after the
    event's id (``notifications_events_record`` and ``orders_order_place`` build the
    logged text from it)."""
    return frame_encode(frame)[1:]


def _frame_text(event_id: int, tail: str) -> str:
    """``frame_encode({"id": event_id, **frame})`` given ``tail``, the frame's own JSON
    text without its opening brace (as ``notifications_events_record`` builds it too)."""
    return f'{{"id":{event_id},{tail}'


def events_record(*, frames_by_user: dict[int, list[dict]]) -> dict[int, list[str]]:
    """Log the frames in the current transaction and give each its ``"id"`` (in place,
    first key), so what is pushed after commit is what the log replays. Returns each
    user's frames as logged (JSON text), for the push to send as they are.

    One call whatever the number of users and frames (``_EVENTS_RECORD``)."""
    user_ids = sorted(user_id for user_id, frames in frames_by_user.items() if frames)
    if not user_ids:
        return {}
    tails = {
        user_id: [frame_tail(frame) for frame in frames_by_user[user_id]] for user_id in user_ids
    }
    columns: tuple[list, list, list, list] = ([], [], [], [])
    for user_id in user_ids:
        frames = frames_by_user[user_id]
        for offset, frame in enumerate(frames):
            columns[0].append(user_id)
            columns[1].append(len(frames) - 1 - offset)
            columns[2].append(frame["type"])
            columns[3].append(tails[user_id][offset])
    with connection.cursor() as cursor:
        cursor.execute(
            _EVENTS_RECORD,
            {
                "user_ids": pg_array(user_ids),
                "counts": pg_array(len(frames_by_user[user_id]) for user_id in user_ids),
                "now": timezone.now(),
                "frame_users": pg_array(columns[0]),
                "backs": pg_array(columns[1]),
                "kinds": pg_text_array(columns[2]),
                "tails": pg_text_array(columns[3]),
            },
        )
        last_ids = dict(cursor.fetchall())
    texts: dict[int, list[str]] = {}
    for user_id in user_ids:
        frames = frames_by_user[user_id]
        first = last_ids[user_id] - len(frames) + 1
        texts[user_id] = [
            _frame_text(first + offset, tail) for offset, tail in enumerate(tails[user_id])
        ]
        frames[:] = [{"id": first + offset, **frame} for offset, frame in enumerate(frames)]
    return texts


def event_id_parse(raw: str) -> int:
    """A client's event id (``Last-Event-ID``, ``?since=``); ValueError if it is none."""
    value = int(raw.strip())
    if not 0 <= value <= MAX_EVENT_ID:
        raise ValueError(raw)
    return value


def event_last_id(*, user_id: int) -> int:
    """The id of the user's latest committed event (0: none yet)."""
    return (
        UserEventCounter.objects.filter(user_id=user_id).values_list("last_id", flat=True).first()
        or 0
    )


def events_after(*, user_id: int, after: int, limit: int = REPLAY_PAGE) -> list[Event]:
    return [
        Event(*row)
        for row in UserEvent.objects.filter(user_id=user_id, event_id__gt=after)
        .order_by("event_id")
        .values_list("event_id", "kind", "frame")[:limit]
    ]


def event_resumable(*, user_id: int, after: int) -> bool:
    """Whether every event after id ``after`` is still in the log (an id never given,
    past the latest, is not)."""
    last = event_last_id(user_id=user_id)
    if after == last:
        return True
    if after > last:
        return False
    return UserEvent.objects.filter(user_id=user_id, event_id=after + 1).exists()


def events_prune() -> int:
    """Delete events past retention (older than EVENT_RETENTION and not among the last
    EVENT_RETENTION_PER_USER of their user); returns how many."""
    log, counters = UserEvent._meta.db_table, UserEventCounter._meta.db_table
    with connection.cursor() as cursor:
        # Ids are gapless per user, so "among the last N" is "id > last_id - N".
        cursor.execute(
            f"DELETE FROM {log} e USING {counters} c"  # noqa: S608 - our table names
            " WHERE e.user_id = c.user_id"
            " AND (e.created_at < %s OR e.event_id <= c.last_id - %s)",
            [timezone.now() - EVENT_RETENTION, EVENT_RETENTION_PER_USER],
        )
        return cursor.rowcount


_last_id_async = database_sync_to_async(event_last_id, thread_sensitive=False)
_events_after_async = database_sync_to_async(events_after, thread_sensitive=False)
_resumable_async = database_sync_to_async(event_resumable, thread_sensitive=False)


class EventCursor:
    """One stream's position in a user's events: hands out each event once, in id order.

    The stream joins the user's live group first, then opens the cursor (which reads
    the log), then feeds it the live frames: an event committed during the replay comes
    both ways and is handed out once; a live frame that skips ids makes the cursor read
    the missing ones from the log first.
    """

    def __init__(self, *, user_id: int, last_id: int) -> None:
        self.user_id = user_id
        self.last_id = last_id

    @classmethod
    async def open(cls, *, user_id: int, after: int | None) -> tuple["EventCursor", bool]:
        """(cursor, reset). ``after`` None: from now on. An ``after`` the log cannot
        resume from puts the cursor at the latest event and says reset."""
        if after is not None and await _resumable_async(user_id=user_id, after=after):
            return cls(user_id=user_id, last_id=after), False
        return cls(user_id=user_id, last_id=await _last_id_async(user_id=user_id)), (
            after is not None
        )

    async def catch_up(self) -> list[Event]:
        """Every logged event after the cursor, moving it to the last one."""
        events: list[Event] = []
        while True:
            page = await _events_after_async(user_id=self.user_id, after=self.last_id)
            events += page
            if page:
                self.last_id = page[-1].id
            if len(page) < REPLAY_PAGE:
                return events

    async def live(self, texts: list[str]) -> list[Event]:
        """The events among pushed frame texts not handed out yet, gaps filled."""
        events: list[Event] = []
        for text in texts:
            frame = orjson.loads(text)
            event_id = frame.get("id")
            if not isinstance(event_id, int) or event_id <= self.last_id:
                continue
            if event_id > self.last_id + 1:
                events += await self.catch_up()
            if event_id > self.last_id:
                events.append(Event(event_id, frame["type"], text))
                self.last_id = event_id
        return events
