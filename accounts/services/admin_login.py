"""The admin console's password check, under the API login's rules."""

from django.contrib.auth import authenticate
from django.http import HttpRequest

from accounts.audit import audit_record, audit_record_own
from accounts.models import User
from accounts.services.lockout import (
    AccountLocked,
    lock_check,
    lockout_key,
    login_failed,
    login_failures_forget,
)
from accounts.services.two_factor import otp_verify, two_factor_enabled


class AdminLoginRefused(Exception):
    """Wrong credentials, or an account that may not use the console (same answer)."""


class AdminOtpRefused(AdminLoginRefused):
    """The password was right; the account's 2FA code is missing or wrong."""


def admin_login(
    *, identifier: str, password: str, otp: str = "", request: HttpRequest | None
) -> User:
    """The admin console's password check, under the API login's rules: the same
    per-account lockout (failures here and at ``user_login`` add up), the same second
    factor when 2FA is on (``otp``: a TOTP or recovery code) and the same audit
    (``admin_login`` / ``admin_login_failed``, ``lockout``). Returns the staff user to
    log in; raises AccountLocked, AdminOtpRefused or AdminLoginRefused."""
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
    if not user.is_staff:
        login_failures_forget(key)
        # The right password of a regular account: not a guess, so not counted.
        audit_record(
            action="admin_login_failed",
            target=user,
            request=request,
            data={"identifier": identifier[:254], "reason": "not_staff"},
        )
        raise AdminLoginRefused
    if two_factor_enabled(user=user):
        if not otp.strip():
            # Not a guess: the form asks for the code. Failures so far keep counting.
            raise AdminOtpRefused
        if not otp_verify(user=user, code=otp, login=True, request=request):
            login_failed(
                key=key,
                identifier=identifier,
                user=user,
                request=request,
                action="admin_login_failed",
            )
            raise AdminOtpRefused
    login_failures_forget(key)
    audit_record_own(action="admin_login", user=user, request=request)
    return user
