"""The live half of login sessions, in Redis.

``cv:accounts:session:<sid>`` holds the user id and expires after
``SESSION_IDLE_SECONDS`` of inactivity; every authenticated request slides it. A token
whose key is gone is refused, which is what makes logout and revocation instant.
PostgreSQL (``accounts.models.Session``) keeps the listing/audit copy.
"""

from collections.abc import Iterable

from django.conf import settings
from django_redis import get_redis_connection

SESSION_KEY = "cv:accounts:session:{}"
SEEN_KEY = "cv:accounts:session-seen:{}"
# How often a session's last_seen is written to PostgreSQL at most.
LAST_SEEN_WRITE_SECONDS = 60

# One round trip on the hot path: read + slide the session, and tell the caller whether
# it is time to persist last_seen (at most once a LAST_SEEN_WRITE_SECONDS per session).
_TOUCH_LUA = """
local uid = redis.call('GETEX', KEYS[1], 'EX', ARGV[1])
if not uid then return {false, 0} end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return {uid, 1} end
return {uid, 0}
"""


def _redis():
    return get_redis_connection("default")


def store(*, session_id: str, user_id: int) -> None:
    _redis().set(SESSION_KEY.format(session_id), str(user_id), ex=settings.SESSION_IDLE_SECONDS)


def touch(*, session_id: str) -> tuple[str | None, bool]:
    """(user id or None when the session is gone, whether to persist last_seen now)."""
    # register_script only hashes the source; EVALSHA falls back to EVAL once per server.
    uid, due = _redis().register_script(_TOUCH_LUA)(
        keys=[SESSION_KEY.format(session_id), SEEN_KEY.format(session_id)],
        args=[settings.SESSION_IDLE_SECONDS, LAST_SEEN_WRITE_SECONDS],
    )
    if uid is None:
        return None, False
    return (uid.decode() if isinstance(uid, bytes) else str(uid)), bool(due)


def live(session_ids: Iterable[str]) -> set[str]:
    """Which of these sessions still exist (without sliding them)."""
    ids = list(session_ids)
    if not ids:
        return set()
    pipe = _redis().pipeline(transaction=False)
    for sid in ids:
        pipe.exists(SESSION_KEY.format(sid))
    return {sid for sid, found in zip(ids, pipe.execute(), strict=True) if found}


def delete(session_ids: Iterable[str]) -> None:
    keys = []
    for sid in session_ids:
        keys += [SESSION_KEY.format(sid), SEEN_KEY.format(sid)]
    if keys:
        _redis().delete(*keys)
