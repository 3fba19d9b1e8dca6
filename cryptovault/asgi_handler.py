"""Django's ASGI handler on a fixed set of request threads, so connections persist.

Django's own ``ASGIHandler`` runs each request's sync code (middleware, DRF views) in
a thread made for that request (``ThreadSensitiveContext()``). Database connections
are thread-local, so every request opened a new PostgreSQL backend, and with
``CONN_MAX_AGE > 0`` the dying threads leaked theirs (Django ticket #33497; Django's
fix is psycopg 3's pool, and our driver is psycopg2).

Here each request borrows one of ``threads`` long-lived single-thread executors for
its whole life (asgiref's ``ThreadSensitiveContext(executor=...)``) and gives it back
when the response is sent. A thread's connection then lives and is recycled exactly
as under a threaded WSGI server: ``request_started``/``request_finished`` run
``close_old_connections`` on that thread, honouring ``CONN_MAX_AGE`` and
``CONN_HEALTH_CHECKS``. At most ``threads`` requests per process run sync code at
once (the GIL allows one running anyway); the others wait for a free thread, so a
view waiting on slow I/O (an outside API, a row lock) holds one of them: such waits
need timeouts, as the market-data and Google clients have.

The middleware chain is Django's sync one, run with the view in one hop to the
request's thread. Django's async chain adapts each sync-only hook of
``MiddlewareMixin`` (security, sessions, CSRF, auth, messages, ...) with its own
``sync_to_async`` hop: a dozen thread switches per request.
Async views still work: Django runs them with ``async_to_sync`` on the server's loop.
"""

import asyncio
import weakref
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.http import FileResponse


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self, *, threads: int) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        super().__init__()
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"django-request-{i}")
            for i in range(threads)
        ]
        # One queue of idle executors per event loop (a queue belongs to one loop;
        # tests may serve from several loops in turn).
        self._idle: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Queue] = (
            weakref.WeakKeyDictionary()
        )

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def run_get_response(self, request):
        response = await sync_to_async(self.get_response, thread_sensitive=True)(request)
        response._handler_class = self.__class__
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        return response

    def _idle_executors(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        idle = self._idle.get(loop)
        if idle is None:
            idle = self._idle[loop] = asyncio.Queue()
            for executor in self._executors:
                idle.put_nowait(executor)
        return idle

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        idle = self._idle_executors()
        executor = await idle.get()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            # A request cancelled mid-view may leave its sync call running; the next
            # request on this executor simply queues behind it on the same thread.
            idle.put_nowait(executor)
