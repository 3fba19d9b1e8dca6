"""Domain errors and the one place that turns every error into a DRF-shaped answer."""

from typing import Any, TypeVar

import redis.exceptions
from celery.exceptions import SoftTimeLimitExceeded
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from django_redis.exceptions import ConnectionInterrupted
from kombu.exceptions import OperationalError as BrokerOperationalError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

# A dependency (PostgreSQL, Redis, the broker) is unreachable or refused to finish in
# time: not the client's fault and not a bug, so a 503 to retry. PostgreSQL's own limits
# land here too: statement_timeout (QueryCanceled), lock_timeout (LockNotAvailable),
# idle_in_transaction_session_timeout (the connection is closed), deadlocks and
# serialization failures are all OperationalError subclasses in psycopg2. The worker's
# retry logic can catch the same tuple.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # Redis is up but refuses writes for now: full (maxmemory) or a replica after a
    # failover. django-redis wraps both in ConnectionInterrupted; raw clients do not.
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    ConnectionInterrupted,
    BrokerOperationalError,
)
# What a task retries with backoff instead of blaming its input: a dependency error, or
# the soft time limit (a run held up by a lock or a slow dependency). The one list the
# workers share; anything else is the task's own input at fault.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (*DEPENDENCY_ERRORS, SoftTimeLimitExceeded)
# What a best-effort status read (the dashboard, the minute sampler) survives: any Redis
# or socket error besides the outages above.
STATUS_READ_ERRORS: tuple[type[BaseException], ...] = (
    *DEPENDENCY_ERRORS,
    redis.exceptions.RedisError,
    OSError,
)
# Matches what nginx answers when no web instance is up (deploy/nginx.conf).
RETRY_AFTER_SECONDS = 5
SERVICE_UNAVAILABLE_DETAIL = "A service this request needs is unavailable."


def error_body(detail: Any, code: str, **extra: Any) -> dict[str, Any]:
    """The one error shape of the API (``{"detail", "code"}``, plus field errors), for
    every answer built outside DRF's exception handler as well as inside it."""
    return {"detail": detail, "code": code, **extra}


def error_response(
    status_code: int, detail: str, code: str, *, headers: dict[str, str] | None = None
) -> JsonResponse:
    """A plain Django view's or middleware's error answer, in the API's shape."""
    return JsonResponse(error_body(detail, code), status=status_code, headers=headers)


class ApplicationError(Exception):
    """A domain rule said no. Services raise it; the API layer maps it to HTTP.

    ``code`` is the machine-readable code clients switch on (``insufficient_funds``,
    ``email_not_verified`` ...); ``status_code`` defaults to 400. A subclass for one fixed
    refusal sets the defaults below rather than an ``__init__`` (as DRF's ``APIException``
    subclasses set ``default_detail``, ``default_code`` and ``status_code``).
    """

    default_message: str = "The request was refused."
    default_code: str = "error"
    default_status_code: int = status.HTTP_400_BAD_REQUEST

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        status_code: int | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = self.default_message if message is None else message
        super().__init__(message)
        self.message = message
        self.code = self.default_code if code is None else code
        self.status_code = self.default_status_code if status_code is None else status_code
        self.extra = extra or {}
        self.headers = headers or {}


class NotFoundError(ApplicationError):
    """What was asked for does not exist, or is not the caller's to see."""

    default_message = "Not found."
    default_code = "not_found"
    default_status_code = status.HTTP_404_NOT_FOUND


Found = TypeVar("Found")


def found_or_404(found: Found | None) -> Found:
    """``found``, or ``NotFoundError`` when a lookup found nothing (None)."""
    if found is None:
        raise NotFoundError()
    return found


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ApplicationError):
        body = error_body(exc.message, exc.code, **exc.extra)
        headers = dict(exc.headers)
        if exc.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
            headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
        return Response(body, status=exc.status_code, headers=headers)
    if isinstance(exc, DjangoValidationError):
        messages = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        exc = exceptions.ValidationError(messages)
    elif isinstance(exc, RequestDataTooBig):
        return Response(
            error_body("Request body is too large.", "request_too_large"),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.APIException) and isinstance(response.data, dict):
        detail = response.data.get("detail")
        if detail is not None and "code" not in response.data:
            response.data["code"] = getattr(detail, "code", None) or exc.default_code
    if isinstance(response.data, list):
        response.data = error_body(response.data, "invalid")
    return response


def service_unavailable_response() -> JsonResponse:
    return error_response(
        503,
        SERVICE_UNAVAILABLE_DETAIL,
        "service_unavailable",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def handler400(request, exception=None):
    return error_response(400, "Bad request.", "bad_request")


def handler403(request, exception=None):
    return error_response(403, "You do not have permission to perform this action.", "forbidden")


def handler404(request, exception=None):
    return error_response(404, "Not found.", "not_found")


def handler500(request):
    return error_response(500, "Internal server error.", "server_error")


def read_only_method_check(request) -> JsonResponse | None:
    """For plain (non-DRF) read-only views: a JSON 405 unless GET or HEAD.

    Such views are ``csrf_exempt`` so that an unsafe method reaches this answer
    rather than a CSRF 403 page.
    """
    if request.method in ("GET", "HEAD"):
        return None
    return error_response(
        405,
        f'Method "{request.method}" not allowed.',
        "method_not_allowed",
        headers={"Allow": "GET, HEAD"},
    )
