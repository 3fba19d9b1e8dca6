"""The Redis cache of login sessions; PostgreSQL (``accounts.models.Session``) is the truth.

``cv:accounts:session:<sid>`` holds the user id and expires after
``SESSION_IDLE_SECONDS`` of inactivity; every authenticated request slides it. A hit
costs no database query. A miss (idled out, revoked, or Redis restarted empty) is
decided by the session row, which rebuilds the key when the session is still live.

The row's ``idle_expires_at`` is written ahead of the Redis deadline, at most once per
``persist_seconds()`` (5 % of the idle TTL, 60 s by default) per session, so it is never
earlier than the real deadline and at most that much later: losing Redis (or the key
idling out just before the row's deadline) adds at most ``persist_seconds()`` of idle
time, and never logs a live session out.
"""

from collections.abc import Iterable

from django.conf import settings
from django_redis import get_redis_connection

SESSION_KEY = "cv:accounts:session:{}"
SEEN_KEY = "cv:accounts:session-seen:{}"

# One round trip on the hot path: read + slide the session, and tell the caller whether
# it is time to persist last_seen and the idle deadline (at most once per ARGV[2] s).
_TOUCH_LUA = """
local uid = redis.call('GETEX', KEYS[1], 'EX', ARGV[1])
if not uid then return {false, 0} end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return {uid, 1} end
return {uid, 0}
"""


def persist_seconds() -> int:
    """How often (at most) a session's idle deadline reaches PostgreSQL, and by how much
    it leads the Redis deadline."""
    return max(1, settings.SESSION_IDLE_SECONDS // 20)


def _redis():
    return get_redis_connection("default")


def store(*, session_id: str, user_id: int) -> None:
    """Cache a live session; its idle deadline was just persisted."""
    pipe = _redis().pipeline(transaction=False)
    pipe.set(SESSION_KEY.format(session_id), str(user_id), ex=settings.SESSION_IDLE_SECONDS)
    pipe.set(SEEN_KEY.format(session_id), "1", ex=persist_seconds())
    pipe.execute()


def touch(*, session_id: str) -> tuple[str | None, bool]:
    """(user id or None on a cache miss, whether to persist last_seen now)."""
    # register_script only hashes the source; EVALSHA falls back to EVAL once per server.
    uid, due = _redis().register_script(_TOUCH_LUA)(
        keys=[SESSION_KEY.format(session_id), SEEN_KEY.format(session_id)],
        args=[settings.SESSION_IDLE_SECONDS, persist_seconds()],
    )
    if uid is None:
        return None, False
    return (uid.decode() if isinstance(uid, bytes) else str(uid)), bool(due)


def cached(session_id: str) -> bool:
    """Whether the session is in the cache (without sliding it)."""
    return bool(_redis().exists(SESSION_KEY.format(session_id)))


def delete(session_ids: Iterable[str]) -> None:
    keys = []
    for sid in session_ids:
        keys += [SESSION_KEY.format(sid), SEEN_KEY.format(sid)]
    if keys:
        _redis().delete(*keys)
