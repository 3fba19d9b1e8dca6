"""Email verification: codes and link tokens, the outbox's verification and welcome
emails, and the first verification's side effects (bonus, notification, welcome)."""

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F
from django.http import HttpRequest
from django.utils import timezone

from accounts import emails
from accounts.audit import audit_record
from accounts.crypto import token_digest
from accounts.models import AuditEvent, EmailVerification, User
from accounts.selectors import user_by_email
from accounts.services.signup import email_normalize
from cryptovault.exceptions import ApplicationError

if TYPE_CHECKING:  # notifications builds on accounts: no import at run time
    from notifications.models import OutboxEmail

VERIFICATION_TTL = timedelta(hours=24)
VERIFICATION_MAX_ATTEMPTS = 5


def _code_digest(*, user_id: int, code: str) -> str:
    # A 6-digit code has too little entropy for a plain hash; keyed with SECRET_KEY a
    # leaked table does not give the codes away.
    message = f"email-code:{user_id}:{code}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


@transaction.atomic
def email_verification_issue(*, user: User) -> tuple[EmailVerification, str, str]:
    """A fresh code and link token for ``user``; earlier unused ones stop working."""
    EmailVerification.objects.filter(user=user, used_at__isnull=True).delete()
    code = f"{secrets.randbelow(1_000_000):06d}"
    token = secrets.token_urlsafe(32)
    verification = EmailVerification.objects.create(
        user=user,
        code_hash=_code_digest(user_id=user.pk, code=code),
        token_hash=token_digest(token),
        expires_at=timezone.now() + VERIFICATION_TTL,
    )
    return verification, code, token


def verification_email_request(*, user: User) -> None:
    """Email ``user`` a fresh code and link (the earlier ones stop working when it goes)."""
    # Upward call: notifications and orders build on accounts (module-level would cycle).
    from notifications.outbox import outbox_email_add

    outbox_email_add(kind="verification", user=user)


def verification_email_message(*, outbox: "OutboxEmail") -> EmailMessage | None:
    """The outbox's verification email (notifications.outbox): a code and link issued
    now, when it is sent, unless the account is gone or already verified."""
    user = outbox.user or user_by_email(outbox.address)
    if user is None or not user.is_active or user.is_email_verified:
        return None
    _, code, token = email_verification_issue(user=user)
    return emails.verification_message(user=user, code=code, token=token)


def verification_resend_request(*, email: str) -> None:
    """Accept the resend whatever the email: the answer and its timing reveal nothing
    (the same outbox row either way; the drain finds the account, if any)."""
    # Upward call: notifications and orders build on accounts (module-level would cycle).
    from notifications.outbox import outbox_email_add

    outbox_email_add(kind="verification", address=email_normalize(email))


_INVALID_CODE = "Invalid verification code."


def email_verify(
    *,
    email: str | None = None,
    code: str | None = None,
    token: str | None = None,
    request: HttpRequest | None = None,
) -> User:
    """Verify by link token or by email + code. Repeating a successful verification is
    a no-op that succeeds again; the side effects happen once."""
    now = timezone.now()
    if token:
        verification = (
            EmailVerification.objects.select_related("user")
            .filter(token_hash=token_digest(token))
            .first()
        )
        if verification is None:
            raise ApplicationError("Invalid verification link.", code="invalid_token")
        user = verification.user
        if verification.used_at is not None or user.is_email_verified:
            return user
        if verification.expires_at <= now:
            raise ApplicationError("This verification link has expired.", code="expired")
    else:
        by_email = User.objects.filter(email__iexact=email_normalize(email or "")).first()
        verification = (
            by_email.email_verifications.order_by("-created_at").first() if by_email else None
        )
        if by_email is None or verification is None:
            raise ApplicationError(_INVALID_CODE, code="invalid_code")
        user = by_email
        expected = verification.code_hash
        given = _code_digest(user_id=user.pk, code=code or "")
        if verification.used_at is not None or user.is_email_verified:
            if hmac.compare_digest(expected, given):
                return user
            raise ApplicationError(_INVALID_CODE, code="invalid_code")
        if verification.expires_at <= now:
            raise ApplicationError("This code has expired; request a new one.", code="expired")
        # Reserve the attempt before comparing, so parallel guesses cannot exceed the cap.
        reserved = EmailVerification.objects.filter(
            pk=verification.pk, attempts__lt=VERIFICATION_MAX_ATTEMPTS
        ).update(attempts=F("attempts") + 1)
        if not reserved:
            raise ApplicationError(
                "Too many wrong codes; request a new one.", code="too_many_attempts"
            )
        if not hmac.compare_digest(expected, given):
            raise ApplicationError(_INVALID_CODE, code="invalid_code")
    user_email_mark_verified(user=user, request=request)
    return user


@transaction.atomic
def user_email_mark_verified(*, user: User, request: HttpRequest | None = None) -> bool:
    """Mark the email verified; the first call only credits the bonus, notifies and
    sends the welcome email. Returns whether this call did it."""
    # Upward call: notifications and orders build on accounts (module-level would cycle).
    from notifications.outbox import outbox_email_add
    from notifications.services import notification_create
    from orders.services import wallet_credit_signup_bonus

    locked = User.objects.select_for_update().get(pk=user.pk)
    if locked.email_verified_at is not None:
        user.email_verified_at = locked.email_verified_at
        return False
    now = timezone.now()
    locked.email_verified_at = user.email_verified_at = now
    locked.save(update_fields=["email_verified_at"])
    EmailVerification.objects.filter(user=locked, used_at__isnull=True).update(used_at=now)
    audit_record(
        action=AuditEvent.Action.EMAIL_VERIFIED, actor=locked, target=locked, request=request
    )
    wallet_credit_signup_bonus(user=locked)
    notification_create(
        user=locked,
        kind="email_verified",
        title="Email verified",
        body=f"Your email is verified; {settings.SIGNUP_BONUS_USD} USD were credited.",
    )
    # Written under the user's row lock, so once per account.
    outbox_email_add(kind="welcome", user=locked)
    return True


def welcome_email_message(*, outbox: "OutboxEmail") -> EmailMessage | None:
    user = outbox.user
    if user is None or not user.is_email_verified:
        return None
    return emails.welcome_message(user=user)
