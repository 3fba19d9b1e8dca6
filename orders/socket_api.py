"""Orders placed and cancelled on ``/ws/user``: the socket's counterpart of ``apis.py``.

Each call does what the REST view does, in the same order and with the same pieces:
the session and user checks of the REST authentication, the per-user rate limit
(orders.limits, one counter with REST), the REST view's input serializer, the service,
the output serializer. They run in a worker thread (the consumer wraps them in
``database_sync_to_async``) and raise what REST would answer with an error; the
consumer turns that into an ``error`` frame with :func:`error_frame`.
"""

from typing import Any

from rest_framework import serializers

from accounts.models import User
from accounts.selectors import session_is_live
from cryptovault.exceptions import ApplicationError, NotFoundError
from cryptovault.ratelimit import RateLimited
from orders import services
from orders.apis import order_input
from orders.limits import order_create_rate_limit
from orders.serializers import order_output

MAX_ORDER_ID = 2**63 - 1


class SessionEnded(Exception):
    """The socket's login session was revoked or idled out, or its user locked: REST
    would answer 401, the socket is closed with 4401."""


def _trader(*, user_id: int, session_id: str) -> User:
    # The cheap check the consumer's periodic session check makes (a Redis GET on a
    # cache hit); a revocation's push may not have closed the socket yet.
    if not session_is_live(session_id=session_id):
        raise SessionEnded
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        raise SessionEnded
    return user


def order_place_message(*, user_id: int, session_id: str, body: Any) -> dict:
    """The order as REST shows it; a repeated ``client_order_id`` gives the first order."""
    user = _trader(user_id=user_id, session_id=session_id)
    order_create_rate_limit(user=user)
    data = order_input(body)
    order, _ = services.order_place(
        user=user,
        coin_id=data["coin"],
        side=data["side"],
        type=data["type"],
        quantity=data["quantity"],
        limit_price=data.get("limit_price"),
        client_order_id=data.get("client_order_id"),
    )
    return order_output(order)


def order_cancel_message(*, user_id: int, session_id: str, order_id: int) -> dict:
    user = _trader(user_id=user_id, session_id=session_id)
    if not 1 <= order_id <= MAX_ORDER_ID:
        # Not an id any order can have (and beyond PostgreSQL's bigint).
        raise NotFoundError()
    return order_output(services.order_cancel(order_id=order_id, user=user))


def error_frame(exc: Exception, *, request_id: Any) -> dict:
    """The ``error`` frame for what REST would answer 4xx: the REST code and detail;
    field errors under ``errors`` (as REST's body has them), ``retry_after`` when
    rate limited, and an ApplicationError's extra fields."""
    frame: dict[str, Any]
    if isinstance(exc, serializers.ValidationError):
        frame = {"code": "invalid", "detail": "Invalid input."}
        errors = exc.detail
        frame["errors"] = errors if isinstance(errors, dict) else {"non_field_errors": errors}
    elif isinstance(exc, ApplicationError):
        frame = {**exc.extra, "code": exc.code, "detail": exc.message}
        if isinstance(exc, RateLimited):
            frame["retry_after"] = int(exc.headers["Retry-After"])
    else:
        raise TypeError(f"not a client error: {exc!r}")
    return {"type": "error", "request_id": request_id, **frame}
