"""Per-IP (or per-key) rate limits on django-ratelimit, answered 429 with Retry-After.

django-ratelimit's own decorator answers 403; the API wants 429 with ``code:
rate_limited``, so views call :func:`rate_limit` first thing and the exception handler
renders the ApplicationError. ``RATELIMIT_ENABLE=false`` turns every limit off.
"""

from collections.abc import Callable

import orjson
from django_ratelimit.core import get_usage
from rest_framework import status

from cryptovault.exceptions import ApplicationError, error_body
from cryptovault.net import ratelimit_key_ip

# The contract's limits, per client IP.
LIMITS = {
    "signup": "5/m",
    "login": "10/m",
    "login-otp": "10/m",
    "verify-email": "10/m",
    "resend-verification": "3/m",
    "forgot-password": "3/m",
    "reset-password": "5/m",
}


def rate_limited_message(retry_after: int) -> str:
    return f"Too many requests. Try again in {retry_after} seconds."


def rate_limited_body(retry_after: int) -> bytes:
    """The 429 body, for lanes answering outside DRF's exception handler."""
    return orjson.dumps(error_body(rate_limited_message(retry_after), "rate_limited"))


class RateLimited(ApplicationError):
    def __init__(self, retry_after: int) -> None:
        retry_after = max(1, retry_after)
        super().__init__(
            rate_limited_message(retry_after),
            code="rate_limited",
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(retry_after)},
        )


def rate_limit(
    request,
    *,
    group: str,
    rate: str | None = None,
    key: str | Callable = ratelimit_key_ip,
) -> None:
    """Count this request against ``group`` and raise RateLimited when over the rate."""
    # Limits live in Redis: without it the request cannot be judged, so it is not served
    # (no failing open). The cache's error is one of DEPENDENCY_ERRORS, which
    # DependencyOutageMiddleware answers as a JSON 503 with Retry-After.
    usage = get_usage(request, group=group, key=key, rate=rate or LIMITS[group], increment=True)
    if usage is not None and usage["should_limit"]:
        raise RateLimited(usage["time_left"])
