"""Cross-cutting HTTP middleware: request ids and limits on what a request may be.

Both work for sync and async views (the price endpoint is async), so neither
forces a thread hop on the hot path.
"""

import logging
import re
import secrets
import sys

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from csp.constants import HEADER as CSP_HEADER
from csp.middleware import CSPMiddleware
from csp.utils import build_policy
from django.conf import settings
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponse

from cryptovault.exceptions import (
    DEPENDENCY_ERRORS,
    error_response,
    handler404,
    handler500,
    service_unavailable_response,
)
from cryptovault.logging import request_id_var

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def request_id_from(candidate: str) -> str:
    """The client's X-Request-ID (``candidate``) when it is sane, else a fresh one."""
    if _SANE_REQUEST_ID.match(candidate):
        return candidate
    return secrets.token_hex(16)  # a uuid4's 128 random bits, without building a UUID


class HybridMiddleware:
    """Base for middleware that serves sync and async stacks without adaptation."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if iscoroutinefunction(self):
            return self._acall(request)
        early = self.before(request)
        response = early if early is not None else self.get_response(request)
        return self.after(request, response)

    async def _acall(self, request: HttpRequest):
        early = self.before(request)
        response = early if early is not None else await self.get_response(request)
        return self.after(request, response)

    def before(self, request: HttpRequest) -> HttpResponse | None:
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response


class RequestIdMiddleware(HybridMiddleware):
    def before(self, request: HttpRequest) -> None:
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER, ""))
        # Read back by the audit log (accounts.audit) from the request it is given.
        request.request_id = request_id  # type: ignore[attr-defined]
        request_id_var.set(request_id)

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response[REQUEST_ID_HEADER] = getattr(request, "request_id", "")
        return response


class RequestLimitsMiddleware(HybridMiddleware):
    """Refuse requests no view can serve, before any view or parser sees them.

    - A body over DATA_UPLOAD_MAX_MEMORY_SIZE, or a bad Content-Length: DRF parses
      from the raw stream, which bypasses Django's own size check.
    - A NUL in the path (``/coins/a%00b``): PostgreSQL text cannot hold one, so no
      resource is named with it; it would otherwise reach a query and fail there.
    """

    def before(self, request: HttpRequest) -> HttpResponse | None:
        if "\x00" in request.path:
            return handler404(request)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return error_response(400, "Invalid Content-Length header.", "bad_request")
        if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            return error_response(413, "Request body is too large.", "request_too_large")
        return None


def _remember_uncaught_exception(sender, request=None, **kwargs) -> None:
    # Sent by Django inside its ``except`` block, so sys.exc_info() is the exception.
    if request is not None:
        request.uncaught_exception = sys.exc_info()[1]


got_request_exception.connect(_remember_uncaught_exception, dispatch_uid="cv-uncaught-exception")


class DependencyOutageMiddleware(HybridMiddleware):
    """A dependency outage is a JSON 503 with Retry-After on every Django endpoint
    (DRF views, plain views, the admin), and no uncaught error is ever an HTML page,
    also with ``DEBUG`` on.

    Exceptions from a view (DRF re-raises what its handler does not know) reach
    ``process_exception``. Exceptions raised in a middleware below this one (sessions,
    replica pinning ...) never do: Django turns them into a 500 (its HTML debug page
    with ``DEBUG``) right where they happen; ``got_request_exception`` records them on
    the request and ``after`` replaces that answer. Programming errors stay 500, in
    JSON; their traceback is logged by Django as usual.
    """

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, DEPENDENCY_ERRORS):
            return None
        logger.warning(
            "dependency unavailable",
            extra={"path": request.path, "error": f"{type(exception).__name__}: {exception}"},
        )
        return service_unavailable_response()

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        exception = getattr(request, "uncaught_exception", None)
        if exception is None:
            return response
        if isinstance(exception, DEPENDENCY_ERRORS):
            return service_unavailable_response()
        return handler500(request)


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's policy (settings.CONTENT_SECURITY_POLICY, plus the view's decorators)
    on HTML pages; ``settings.CSP_API_POLICY`` on everything else. A JSON body or a static
    file never needs to load anything, and a JSON error keeps its policy even under
    DEBUG, where django-csp leaves 404/500 bare for Django's debug pages."""

    def process_response(self, request, response):
        if response.get("Content-Type", "").startswith("text/html"):
            return super().process_response(request, response)
        if CSP_HEADER not in response:
            response[CSP_HEADER] = build_policy(config=settings.CSP_API_POLICY)
        return response
