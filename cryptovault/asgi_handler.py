"""Django's WSGI handler served over ASGI on a fixed set of threads, so DB connections
persist.

Django's own ``ASGIHandler`` runs each request's sync code (middleware, DRF views) in
a thread made for that request (``ThreadSensitiveContext()``). Database connections
are thread-local, so every request opened a new PostgreSQL backend, and with
``CONN_MAX_AGE > 0`` the dying threads leaked theirs (Django ticket #33497; Django's
fix is psycopg 3's pool, and our driver is psycopg2).

Here each request runs whole, in one hop, on one of ``threads`` long-lived threads
(asgiref's ``sync_to_async(thread_sensitive=False, executor=...)``): Django's
``WSGIHandler`` builds the request, runs the sync middleware chain and the view, and the
response is closed on that same thread. A thread's connection then lives and is recycled
exactly as under a threaded WSGI server: ``request_started``/``request_finished`` run
``close_old_connections`` on that thread, honouring ``CONN_MAX_AGE`` and
``CONN_HEALTH_CHECKS``. At most ``threads`` requests per process run sync code at once
(the GIL allows one running anyway); the others wait for a free thread, so a view
waiting on slow I/O (an outside API, a row lock) holds one of them: such waits need
timeouts, as the market-data and Google clients have.

Django's async middleware chain would instead adapt each sync-only hook of
``MiddlewareMixin`` (security, sessions, CSRF, auth, messages, ...) with its own
``sync_to_async`` hop: a dozen thread switches per request. Async views still work:
Django runs them with ``async_to_sync``, which from a ``sync_to_async`` thread runs them
on the server's loop.

The ASGI side is this module's: it reads the body, builds the WSGI environ from the
scope as a WSGI server would, and sends the response; a streaming response is sent chunk
by chunk from its thread as it is produced.

Django's caches (``django.core.cache.caches``) also live as under a threaded WSGI server:
one set per thread, kept across its requests. ``caches`` keeps them in an asgiref
``Local``, in a context variable whose value only the thread that set it sees; each
request runs in a copy of its server task's context, set by the loop's thread, so without
this every request built its own ``RedisCache`` and redis-py client (django-redis's
``get_redis_connection``), a cost the Django test client, which runs every request in one
thread and context, never shows. Each thread builds them once, in a context of its own,
and every request starts with that context's values (what a request sets stays with it).
"""

import contextvars
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from tempfile import SpooledTemporaryFile
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.core.handlers.wsgi import WSGIHandler

Headers = list[tuple[bytes, bytes]]


def wsgi_environ(scope: dict, body) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) of an ASGI HTTP scope: strings carry bytes as latin-1."""
    script_name = scope.get("root_path", "")
    path = scope["path"]
    path_info = path[len(script_name) :] if script_name and path.startswith(script_name) else path
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": script_name.encode().decode("latin-1"),
        "PATH_INFO": path_info.encode().decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1] or 0),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if scope.get("client"):
        environ["REMOTE_ADDR"] = scope["client"][0]
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name not in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            name = f"HTTP_{name}"
        value = raw_value.decode("latin-1")
        if name in environ:
            # Repeated headers fold into one, cookies with their own separator.
            value = f"{environ[name]}{'; ' if name == 'HTTP_COOKIE' else ','}{value}"
        environ[name] = value
    return environ


class PooledThreadsASGIHandler:
    """An ASGI HTTP app running Django on ``threads`` long-lived threads."""

    def __init__(self, *, threads: int) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.threads = threads
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="django-request")
        # The WSGI app each request runs (Django's; a test may wrap it).
        self.wsgi_app: Callable = WSGIHandler()
        self._run = sync_to_async(self._respond, thread_sensitive=False, executor=self.executor)
        self._thread = threading.local()

    def _thread_context(self) -> contextvars.Context:
        """This thread's own context, holding what it keeps across its requests (its
        caches), built on its first request."""
        context = getattr(self._thread, "context", None)
        if context is None:
            context = contextvars.Context()
            context.run(caches.all)
            self._thread.context = context
        return context

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        with SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE) as body:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # the client left before sending its request whole
                body.write(message.get("body", b""))
                if not message.get("more_body"):
                    break
            length = body.tell()
            body.seek(0)
            answered = await self._run(scope, body, length, send)
        if answered is not None:
            status, headers, content = answered
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})

    def _respond(self, scope: dict, body, length: int, send) -> tuple[int, Headers, bytes] | None:
        """On a request thread: run Django and close its response (``request_finished``).
        A whole response comes back to be sent from the loop; a streaming one is sent
        from here, each chunk as it is produced (then this returns None)."""
        started: list = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None) -> None:
            started[:] = [
                int(status.split(" ", 1)[0]),
                [(k.lower().encode("latin-1"), v.strip().encode("latin-1")) for k, v in headers],
            ]

        # Runs in a copy of the request's context (sync_to_async's): what is set here
        # stays with this request.
        for var, value in self._thread_context().items():
            var.set(value)
        environ = wsgi_environ(scope, body)
        # What was read, whatever the client declared (a chunked body declares nothing,
        # and Django reads no further than CONTENT_LENGTH).
        environ["CONTENT_LENGTH"] = str(length)
        # No write() callable comes back from start_response: Django never calls it.
        result = self.wsgi_app(environ, start_response)
        try:
            if not getattr(result, "streaming", False):
                return started[0], started[1], b"".join(result)
            send_now: Callable = async_to_sync(send)
            send_now({"type": "http.response.start", "status": started[0], "headers": started[1]})
            for chunk in result:
                send_now({"type": "http.response.body", "body": chunk, "more_body": True})
            send_now({"type": "http.response.body", "body": b""})
            return None
        finally:
            result.close()
