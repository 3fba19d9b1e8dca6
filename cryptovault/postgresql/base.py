"""Django's PostgreSQL backend, connecting with retries (``cryptovault.reconnect``).

``get_new_connection`` is the backend's documented hook for opening a connection; a
refused or starting-up server ("the database system is starting up") answers at once,
so a restart of a second or two is absorbed by ``DATABASE_CONNECT_RETRY_SECONDS``."""

from functools import partial

import psycopg2
from django.conf import settings
from django.db.backends.postgresql import base

from cryptovault.reconnect import connect_with_retry


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        return connect_with_retry(
            partial(super().get_new_connection, conn_params),
            errors=(psycopg2.OperationalError,),
            seconds=settings.DATABASE_CONNECT_RETRY_SECONDS,
        )
