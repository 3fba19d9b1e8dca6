"""Passwords: reset by emailed link, change while logged in."""

import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from accounts import emails
from accounts.audit import audit_record_own
from accounts.crypto import token_digest
from accounts.models import AuditEvent, PasswordResetToken, Session, User
from accounts.selectors import user_by_email
from accounts.services.api_keys import api_keys_revoke_all
from accounts.services.lockout import login_failures_clear
from accounts.services.sessions import session_start, session_tokens_issue, user_sessions_revoke_all
from accounts.services.signup import email_normalize
from cryptovault.exceptions import ApplicationError

if TYPE_CHECKING:  # notifications builds on accounts: no import at run time
    from notifications.models import OutboxEmail

PASSWORD_RESET_TTL = timedelta(hours=1)


def _password_validate(*, password: str, user: User, field: str) -> None:
    try:
        password_validation.validate_password(password, user)
    except ValidationError as exc:
        raise ValidationError({field: exc.messages}) from exc


def password_reset_request(*, email: str) -> None:
    """Accept the reset email whatever the address: no enumeration, same timing (the
    same outbox row either way; the drain finds the account, if any)."""
    # Upward call: notifications and orders build on accounts (module-level would cycle).
    from notifications.outbox import outbox_email_add

    outbox_email_add(kind="password_reset", address=email_normalize(email))


def password_reset_email_message(*, outbox: "OutboxEmail") -> EmailMessage | None:
    """The outbox's reset email (notifications.outbox): the link is issued when it is
    sent, so the token exists only as its hash in the database."""
    user = user_by_email(outbox.address)
    if user is None or not user.is_active:
        return None
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        PasswordResetToken.objects.create(
            user=user,
            token_hash=token_digest(token),
            expires_at=timezone.now() + PASSWORD_RESET_TTL,
        )
        audit_record_own(action=AuditEvent.Action.PASSWORD_RESET_REQUESTED, user=user)
    return emails.password_reset_message(user=user, token=token)


@transaction.atomic
def password_reset(*, token: str, new_password: str, request: HttpRequest | None = None) -> User:
    reset = (
        PasswordResetToken.objects.select_for_update()
        .select_related("user")
        .filter(token_hash=token_digest(token), used_at__isnull=True, expires_at__gt=timezone.now())
        .first()
    )
    if reset is None or not reset.user.is_active:
        raise ApplicationError("Invalid or expired reset token.", code="invalid_token")
    user = reset.user
    _password_validate(password=new_password, user=user, field="new_password")
    user.set_password(new_password)
    user.save(update_fields=["password"])
    # Single use, and every other outstanding link dies with it.
    PasswordResetToken.objects.filter(user=user, used_at__isnull=True).update(
        used_at=timezone.now()
    )
    user_sessions_revoke_all(user=user, reason="password_reset", actor=user, request=request)
    api_keys_revoke_all(user=user, reason="password_reset", actor=user, request=request)
    login_failures_clear(user=user)
    audit_record_own(action=AuditEvent.Action.PASSWORD_RESET, user=user, request=request)
    return user


@transaction.atomic
def user_password_change(
    *,
    user: User,
    session_id: str | None,
    current_password: str,
    new_password: str,
    request: HttpRequest | None = None,
) -> dict[str, str]:
    """Change the password; every other session ends and this one gets fresh tokens."""
    if not user.check_password(current_password):
        raise ValidationError({"current_password": ["The current password is incorrect."]})
    if current_password == new_password:
        raise ValidationError(
            {"new_password": ["The new password must differ from the current one."]}
        )
    _password_validate(password=new_password, user=user, field="new_password")
    user.set_password(new_password)
    user.save(update_fields=["password"])
    user_sessions_revoke_all(
        user=user,
        except_session_id=session_id,
        reason="password_changed",
        actor=user,
        request=request,
    )
    api_keys_revoke_all(user=user, reason="password_changed", actor=user, request=request)
    audit_record_own(action=AuditEvent.Action.PASSWORD_CHANGED, user=user, request=request)
    session = Session.objects.select_related("user").filter(pk=session_id).first()
    if session is None:  # not authenticated through a session: open a fresh one
        return session_start(user=user, request=request)[1]
    return session_tokens_issue(session=session)
