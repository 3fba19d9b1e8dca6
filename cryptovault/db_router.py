"""Read-replica routing: reads that tolerate replication lag go to ``replica``.

With ``DATABASE_REPLICA_URL`` set, settings add a ``replica`` alias (a PostgreSQL
streaming standby). Only data that is written by someone else and read by everyone
may be a few seconds old: market data (coins, price history) and the notification
list. Everything that reads its own writes — orders, balances, the ledger, users and
their sessions — keeps reading the primary, so a client never sees its order vanish or
its balance roll back right after a write.

Writes always go to the primary, and so does any query that will write or lock
(Django routes ``select_for_update``, ``get_or_create`` and friends with
``db_for_write``). Migrations run on the primary only; the standby replays them.

A client also reads its own writes of lag-tolerant data: ``ReplicaPinningMiddleware``
keeps every read of a writing request (POST, PATCH, DELETE …) on the primary, and for
``PIN_SECONDS`` afterwards every read of requests carrying the same credentials — so
``POST notifications/read-all`` followed by ``GET notifications/unread-count`` says 0.
"""

import contextvars
import hashlib
import logging
import time

from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, OperationalError, connections
from django.db.models import Model
from django.http import HttpRequest, HttpResponse

from cryptovault.middleware import _HybridMiddleware

logger = logging.getLogger(__name__)

REPLICA_DB_ALIAS = "replica"
# Market data is written only by the price poller and seeding, and read by everyone.
LAG_TOLERANT_APPS = frozenset({"markets"})
# A notification appearing a moment late in the list is harmless; its writes
# (mark read, delete) and the alerts that create it stay on the primary.
LAG_TOLERANT_MODELS = frozenset({"notifications.notification"})
# Longer than the replication lag we tolerate at all.
PIN_SECONDS = 10
# Where the middleware keeps the pin of this request (the WSGI environ, as middleware do).
PIN_META = "cryptovault.replica_pin"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_reads_pinned_to_primary = contextvars.ContextVar("cv_reads_pinned_to_primary", default=False)


def replica_configured() -> bool:
    return REPLICA_DB_ALIAS in connections.settings


class ReplicaRouter:
    """Django database router for one optional read replica.

    If the replica cannot be reached, reads fall back to the primary and the replica
    is tried again after ``retry_seconds`` (per process), so a standby outage degrades
    to "primary only" instead of failing requests.
    """

    retry_seconds = 30.0

    def __init__(self) -> None:
        self._replica_down_until = 0.0

    def db_for_read(self, model: type[Model], **hints) -> str:
        if not self._tolerates_lag(model) or not replica_configured():
            return DEFAULT_DB_ALIAS
        if _reads_pinned_to_primary.get():
            return DEFAULT_DB_ALIAS
        # Inside a transaction on the primary a read may need that transaction's own
        # writes (and must see one consistent snapshot), which no replica has.
        if connections[DEFAULT_DB_ALIAS].in_atomic_block:
            return DEFAULT_DB_ALIAS
        return REPLICA_DB_ALIAS if self._replica_reachable() else DEFAULT_DB_ALIAS

    def db_for_write(self, model: type[Model], **hints) -> str:
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Model, obj2: Model, **hints) -> bool | None:
        # The replica holds the same rows as the primary, so a coin read from the
        # replica may be attached to an order written to the primary.
        both = {obj1._state.db, obj2._state.db}
        return True if both <= {DEFAULT_DB_ALIAS, REPLICA_DB_ALIAS} else None

    def allow_migrate(self, db: str, app_label: str, model_name=None, **hints) -> bool:
        return db == DEFAULT_DB_ALIAS

    @staticmethod
    def _tolerates_lag(model: type[Model]) -> bool:
        meta = model._meta
        return meta.app_label in LAG_TOLERANT_APPS or meta.label_lower in LAG_TOLERANT_MODELS

    def _replica_reachable(self) -> bool:
        if time.monotonic() < self._replica_down_until:
            return False
        try:
            # Opens the connection the routed query would open anyway; a no-op when
            # it is already open.
            connections[REPLICA_DB_ALIAS].ensure_connection()
        except OperationalError as exc:
            self._replica_down_until = time.monotonic() + self.retry_seconds
            logger.warning(
                "read replica unreachable; reading from the primary",
                extra={"retry_seconds": self.retry_seconds, "error": str(exc)},
            )
            return False
        return True


def _pin_key(request: HttpRequest) -> str | None:
    credentials = request.headers.get("Authorization", "")
    if not credentials:
        return None
    return "db:pin:" + hashlib.sha256(credentials.encode()).hexdigest()[:32]


class ReplicaPinningMiddleware(_HybridMiddleware):
    """Read-your-writes for clients: pin a writer's reads to the primary for a while.

    Keyed on the request's credentials (the ``Authorization`` header, hashed), so it
    works for JWT clients without cookies. Does nothing when no replica is configured.
    """

    def before(self, request: HttpRequest) -> None:
        request.META[PIN_META] = None
        if not replica_configured():
            return None
        key = _pin_key(request)
        writing = request.method not in SAFE_METHODS
        if writing or (key is not None and cache.get(key)):
            request.META[PIN_META] = _reads_pinned_to_primary.set(True)
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        token = request.META.get(PIN_META)
        if token is None:
            return response
        _reads_pinned_to_primary.reset(token)
        key = _pin_key(request)
        if key is not None and request.method not in SAFE_METHODS and response.status_code < 400:
            cache.set(key, 1, PIN_SECONDS)
        return response
