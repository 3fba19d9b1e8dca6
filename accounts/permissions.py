"""DRF permissions by role. Superusers pass every role check."""

from rest_framework.exceptions import NotAuthenticated
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts.models import User


def user_has_role(user, *roles: str) -> bool:
    if not (user and user.is_authenticated and user.is_active):
        return False
    return user.is_superuser or user.role in roles


class IsOperator(BasePermission):
    """Operators and admins (staff work: support, limited admin actions)."""

    def has_permission(self, request, view) -> bool:
        return user_has_role(request.user, User.Role.OPERATOR, User.Role.ADMIN)


class IsAdmin(BasePermission):
    def has_permission(self, request, view) -> bool:
        return user_has_role(request.user, User.Role.ADMIN)


def authenticated_user(request: Request) -> User:
    """The user of a request that passed ``IsAuthenticated``, typed as such."""
    user = request.user
    if not isinstance(user, User):
        raise NotAuthenticated()
    return user
