"""The per-user order rate limit, one counter for every way of placing orders (REST,
``/ws/user``)."""

from typing import NamedTuple

from accounts.models import User
from cryptovault.ratelimit import rate_limit

ORDER_CREATE_RATE = "20/m"


class _UserRequest(NamedTuple):
    """What the limit's key reads of a request: its user (a socket has no request)."""

    user: User


def _order_rate_key(group: str, request) -> str:
    return str(request.user.pk)


def order_create_rate_limit(*, user: User) -> None:
    """Count one order placed by ``user``; RateLimited (429) beyond the rate."""
    rate_limit(
        _UserRequest(user), group="order-create", rate=ORDER_CREATE_RATE, key=_order_rate_key
    )
