"""What staff do to an account: its role, an operator lock and unlock."""

from django.contrib.auth.models import Group
from django.db import transaction
from django.http import HttpRequest

from accounts.audit import audit_record
from accounts.models import User
from accounts.roles import ROLE_GROUPS
from accounts.services.lockout import login_failures_clear
from accounts.services.sessions import user_sessions_revoke_all
from cryptovault.exceptions import ApplicationError


@transaction.atomic
def user_role_set(
    *, user: User, role: str, actor: User | None = None, request: HttpRequest | None = None
) -> User:
    """Roles map onto Django's flags and groups (accounts.roles): operators and admins
    are staff and members of their role's group, and of no other role group."""
    if role not in User.Role.values:
        raise ApplicationError(f"Unknown role {role!r}.", code="invalid_role")
    previous = user.role
    user.role = role
    user.is_staff = role in (User.Role.OPERATOR, User.Role.ADMIN) or user.is_superuser
    user.save(update_fields=["role", "is_staff"])
    wanted = ROLE_GROUPS.get(role)
    user.groups.remove(*Group.objects.filter(name__in=ROLE_GROUPS.values()).exclude(name=wanted))
    if wanted:
        user.groups.add(Group.objects.get_or_create(name=wanted)[0])
    audit_record(
        action="role_set",
        actor=actor,
        target=user,
        request=request,
        data={"role": role, "previous": previous},
    )
    return user


@transaction.atomic
def user_lock(*, user: User, actor: User | None = None, request: HttpRequest | None = None) -> User:
    """Operator lock: the account can no longer log in and its sessions end now."""
    user.is_active = False
    user.save(update_fields=["is_active"])
    user_sessions_revoke_all(user=user, reason="locked", actor=actor, request=request)
    audit_record(action="user_locked", actor=actor, target=user, request=request)
    return user


@transaction.atomic
def user_unlock(
    *, user: User, actor: User | None = None, request: HttpRequest | None = None
) -> User:
    """Undo an operator lock and any failed-login lockout."""
    user.is_active = True
    user.save(update_fields=["is_active"])
    login_failures_clear(user=user)
    audit_record(action="user_unlocked", actor=actor, target=user, request=request)
    return user
