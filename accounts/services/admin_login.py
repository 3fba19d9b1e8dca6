"""The admin console's password check, under the API login's rules."""

from django.contrib.auth import authenticate
from django.http import HttpRequest

from accounts.audit import audit_record
from accounts.models import User
from accounts.services.lockout import (
    AccountLocked,
    lock_check,
    lockout_key,
    login_failed,
    login_failures_forget,
)


class AdminLoginRefused(Exception):
    """Wrong credentials, or an account that may not use the console (same answer)."""


def admin_login(*, identifier: str, password: str, request: HttpRequest | None) -> User:
    """The admin console's password check, under the API login's rules: the same
    per-account lockout (failures here and at ``user_login`` add up) and the same audit
    (``admin_login`` / ``admin_login_failed``, ``lockout``). Returns the staff user to
    log in; raises AccountLocked or AdminLoginRefused."""
    key, account = lockout_key(identifier)
    try:
        lock_check(key)
    except AccountLocked:
        audit_record(
            action="admin_login_failed",
            target=account,
            request=request,
            data={"identifier": identifier[:254], "reason": "locked"},
        )
        raise
    # Django's backends (the admin's usual check); an inactive account gets None.
    user = authenticate(request, username=identifier, password=password)
    if user is None:
        login_failed(
            key=key,
            identifier=identifier,
            user=account,
            request=request,
            action="admin_login_failed",
        )
        raise AdminLoginRefused
    login_failures_forget(key)
    if not user.is_staff:
        # The right password of a regular account: not a guess, so not counted.
        audit_record(
            action="admin_login_failed",
            target=user,
            request=request,
            data={"identifier": identifier[:254], "reason": "not_staff"},
        )
        raise AdminLoginRefused
    audit_record(action="admin_login", actor=user, target=user, request=request)
    return user
