"""Logging: request-id and task propagation (context variables, set per request or
task) and the redaction of tokens carried in query strings.

Every process (web, worker, beat, simulator) logs through the settings' ``LOGGING``:
one JSON object per line on stderr. uvicorn's own handlers (web) are dropped by that
``LOGGING`` and never installed by the simulator; the worker and beat keep it because
``cryptovault.celery`` answers Celery's ``setup_logging`` signal."""

import logging
import logging.config
import re
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote_plus

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# (task id, task name) while a Celery task runs (cryptovault.celery's task signals).
task_var: ContextVar[tuple[str, str] | None] = ContextVar("task", default=None)

# uvicorn logs through its own handlers, set up before it imports the application. Its
# WebSocket handshake lines ('"WebSocket /ws/user?token=..." [accepted]') are INFO on
# uvicorn.error, whatever --no-access-log says; uvicorn.access has the same paths.
UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access")

# One query parameter inside any text: a path, a request line, a request's repr.
_QUERY_PARAMETER = re.compile(r"(?P<name>[?&][^?&=\s\"'#<>]*)=(?P<value>[^&\s\"'#<>]*)")
REDACTED = "[redacted]"
_UNTOUCHED = (int, float, bool, type(None))
# Attributes every LogRecord has; anything else came with ``extra=`` (Django adds the
# request to django.request records, and its repr holds the full path with the query).
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _redact_parameter(match: re.Match) -> str:
    # The application decodes parameter names, so "%74oken" names a token as well.
    if "token" in unquote_plus(match["name"][1:]).lower():
        return f"{match['name']}={REDACTED}"
    return match[0]


def redact_tokens(text: str) -> str:
    """``text`` with the value of every query parameter whose name holds "token"
    (``token``, ``access_token`` ...) replaced by ``[redacted]``."""
    if "=" not in text:
        return text
    return _QUERY_PARAMETER.sub(_redact_parameter, text)


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return redact_tokens(value)
    if isinstance(value, _UNTOUCHED):
        return value
    try:
        text = str(value)
    except Exception:  # a log call must never fail on an odd argument
        return value
    redacted = redact_tokens(text)
    # Unchanged objects stay objects: formatters and handlers may want them as they are.
    return value if redacted == text else redacted


class TokenRedactionFilter(logging.Filter):
    """Redacts tokens in query strings from a record's message, its arguments and its
    extra attributes, before any handler formats it.

    Attached to the JSON console handler (every record that reaches the root logger) and
    to uvicorn's own loggers (:func:`configure`). The arguments keep their positions, as
    uvicorn's access formatter unpacks them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _scrubbed(record.msg)
        if isinstance(record.args, dict):
            record.args = {key: _scrubbed(value) for key, value in record.args.items()}
        elif record.args:
            record.args = tuple(_scrubbed(value) for value in record.args)
        for name, value in list(vars(record).items()):
            if name not in _RECORD_ATTRIBUTES:
                setattr(record, name, _scrubbed(value))
        return True


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class TaskFilter(logging.Filter):
    """``task_id`` and ``task_name`` on the records of a running task, absent elsewhere."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = task_var.get()
        if task is not None:
            record.task_id, record.task_name = task
        return True


def configure(config: dict) -> None:
    """Django's LOGGING_CONFIG: the settings' LOGGING, then the redaction on uvicorn's
    loggers themselves, for wherever uvicorn's own handlers are in place (a server
    started with its default log config, as the tests' servers are).

    uvicorn's ``--no-access-log`` is kept: uvicorn applies it by leaving
    ``uvicorn.access`` without handlers and not propagating, and writes an access line
    whenever that logger has a handler, its ancestors' included. ``dictConfig`` resets
    the children of the ``uvicorn`` entry to propagate, which would send every request's
    line to the JSON handler (a line per request, on every request, whatever the flag
    said)."""
    access = logging.getLogger("uvicorn.access")
    access_log_off = not access.propagate and not access.handlers
    logging.config.dictConfig(config)
    if access_log_off:
        access.propagate = False
    # Python's warnings (deprecations, Celery's SecurityWarning ...) as JSON lines too.
    logging.captureWarnings(True)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TokenRedactionFilter) for f in logger.filters):
            logger.addFilter(TokenRedactionFilter())
