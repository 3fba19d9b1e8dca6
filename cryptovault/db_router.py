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
"""

import logging
import time

from django.db import DEFAULT_DB_ALIAS, OperationalError, connections
from django.db.models import Model

logger = logging.getLogger(__name__)

REPLICA_DB_ALIAS = "replica"
# Market data is written only by the price poller and seeding, and read by everyone.
LAG_TOLERANT_APPS = frozenset({"markets"})
# A notification appearing a moment late in the list is harmless; its writes
# (mark read, delete) and the alerts that create it stay on the primary.
LAG_TOLERANT_MODELS = frozenset({"notifications.notification"})


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
        if not self._tolerates_lag(model):
            return DEFAULT_DB_ALIAS
        if REPLICA_DB_ALIAS not in connections.settings:
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
