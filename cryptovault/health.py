"""GET /health: is every dependency reachable, and how old are the prices?"""

import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django_redis import get_redis_connection

from cryptovault.exceptions import RETRY_AFTER_SECONDS, read_only_method_check
from markets.selectors import prices_age_seconds

logger = logging.getLogger(__name__)


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "ok"


def _check_redis() -> str:
    get_redis_connection("default").ping()
    return "ok"


@csrf_exempt
def health(request: HttpRequest) -> JsonResponse:
    # Load balancers probe with GET or HEAD.
    if (refused := read_only_method_check(request)) is not None:
        return refused
    checks: dict[str, object] = {}
    healthy = True
    for name, check in (("database", _check_database), ("redis", _check_redis)):
        try:
            checks[name] = check()
        except Exception as exc:  # any failure of a dependency means "down", never a 500
            logger.warning("health check failed", extra={"check": name, "error": str(exc)})
            checks[name] = "error"
            healthy = False
    age = None
    if checks["redis"] == "ok":
        try:
            age = prices_age_seconds()
        except Exception:  # noqa: BLE001 - a broken price snapshot is reported, not raised
            logger.warning("price age unavailable", exc_info=True)
    checks["prices"] = {"age_seconds": age}
    response = JsonResponse(
        {"status": "ok" if healthy else "error", "checks": checks},
        status=200 if healthy else 503,
    )
    if not healthy:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
