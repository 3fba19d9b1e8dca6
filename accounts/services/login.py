"""The API login: a password check under the lockout, then a session."""

from django.contrib.auth.hashers import make_password
from django.db import transaction
from django.http import HttpRequest
from rest_framework import status

from accounts.audit import audit_record
from accounts.models import AuditEvent, Session, User
from accounts.services.lockout import lock_check, lockout_key, login_failed, login_failures_forget
from accounts.services.sessions import session_start
from accounts.services.two_factor import (
    login_challenge_issue,
    login_challenge_take,
    two_factor_enabled,
)
from cryptovault.exceptions import ApplicationError


def login_complete(
    *, user: User, action: str, request: HttpRequest | None = None
) -> dict[str, str]:
    """Start a session for a user who just proved who they are: audit and notify."""
    session, tokens = session_start(user=user, request=request)
    audit_record(
        action=action, actor=user, target=session, request=request, data={"session_id": session.pk}
    )
    _new_login_notify(user=user, session=session)
    return tokens


def _new_login_notify(*, user: User, session: Session) -> None:
    # Upward call: notifications and orders build on accounts (module-level would cycle).
    from notifications.services import notification_create

    where = session.ip or "an unknown address"
    notification_create(
        user=user,
        kind="new_login",
        title="New login",
        body=f"New sign-in from {where} ({session.user_agent or 'unknown device'}).",
        data={"session_id": session.pk, "ip": session.ip, "user_agent": session.user_agent},
    )


def user_login(
    *, identifier: str, password: str, request: HttpRequest | None = None
) -> tuple[User, dict[str, str]]:
    key, user = lockout_key(identifier)
    lock_check(key)
    if user is None:
        # Same work as a real check, so response time does not tell accounts apart.
        make_password(password)
        valid = False
    else:
        valid = user.check_password(password) and user.is_active
    if user is None or not valid:
        login_failed(key=key, identifier=identifier, user=user, request=request)
        raise ApplicationError(
            "Invalid credentials.",
            code="invalid_credentials",
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    if not user.is_email_verified:
        login_failures_forget(key)
        raise ApplicationError(
            "Verify your email address before logging in.",
            code="email_not_verified",
            status_code=status.HTTP_403_FORBIDDEN,
        )
    if two_factor_enabled(user=user):
        # The failures so far keep counting until the second factor passes too.
        raise login_challenge_issue(user=user, action=AuditEvent.Action.LOGIN)
    login_failures_forget(key)
    with transaction.atomic():
        tokens = login_complete(user=user, action=AuditEvent.Action.LOGIN, request=request)
    return user, tokens


def login_otp_complete(
    *, challenge: str, code: str, request: HttpRequest | None = None
) -> tuple[User, dict[str, str]]:
    """The second step of a login with 2FA on: the same tokens as a login without."""
    user, action = login_challenge_take(challenge=challenge, code=code, request=request)
    with transaction.atomic():
        tokens = login_complete(user=user, action=action, request=request)
    return user, tokens
