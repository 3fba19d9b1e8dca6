"""Two-factor login: a TOTP authenticator (RFC 6238, pyotp), ten single-use recovery
codes, and the login challenge that a password (or Google) login must complete with a
code when 2FA is on.

Wrong codes count toward the per-account lockout (accounts.services.lockout) wherever
they are entered: the login challenge, the admin login, disabling 2FA, creating an API
key. A right password alone clears no failures while 2FA is on, so the password cannot
be used to reset the count of code guesses.
"""

import json
import secrets

import pyotp
import segno
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django_redis import get_redis_connection
from rest_framework import status

from accounts.audit import audit_record, audit_record_own
from accounts.crypto import token_digest
from accounts.models import AuditEvent, RecoveryCode, TwoFactor, User
from accounts.secret_box import secret_decrypt, secret_encrypt
from accounts.services.lockout import (
    lock_check,
    login_failed,
    login_failures_forget,
    user_lockout_key,
)
from cryptovault.exceptions import ApplicationError

ISSUER = "CryptoVault"
RECOVERY_CODE_COUNT = 10
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
LOGIN_CHALLENGE_TTL_SECONDS = 5 * 60
_CHALLENGE_KEY = "cv:accounts:login-challenge:{}"


class OtpRequired(ApplicationError):
    """The password was right; the login continues at ``login/otp`` with this challenge."""

    def __init__(self, challenge: str) -> None:
        super().__init__(
            "Enter the code from your authenticator app.",
            code="otp_required",
            status_code=status.HTTP_401_UNAUTHORIZED,
            extra={"challenge": challenge},
        )


class InvalidOtp(ApplicationError):
    def __init__(self, status_code: int = status.HTTP_400_BAD_REQUEST) -> None:
        super().__init__(
            "Invalid or already used code.", code="invalid_otp", status_code=status_code
        )


def two_factor_enabled(*, user: User) -> bool:
    return TwoFactor.objects.filter(user=user, enabled_at__isnull=False).exists()


def two_factor_setup(*, user: User) -> dict[str, str]:
    """A new secret, pending until ``two_factor_enable`` confirms a code from it."""
    if two_factor_enabled(user=user):
        raise ApplicationError(
            "Two-factor login is already on; disable it first.",
            code="two_factor_enabled",
            status_code=status.HTTP_409_CONFLICT,
        )
    secret = pyotp.random_base32()
    TwoFactor.objects.update_or_create(
        user=user,
        defaults={
            "secret_encrypted": secret_encrypt(secret),
            "created_at": timezone.now(),
            "last_used_step": 0,
        },
    )
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=ISSUER)
    return {"otpauth_uri": uri, "qr_svg": segno.make(uri, error="m").svg_inline(scale=4)}


def _totp_accept(*, device: TwoFactor, code: str, login: bool) -> bool:
    """A code of the current 30 s step or either neighbour (clock drift). A login spends
    the code (RFC 6238 section 5.2): its step is recorded and no login accepts it, or an
    older one, again. Confirmations by a logged-in user (enable, disable, key creation)
    come with the session and the password, so they only check it. ``device`` is locked
    by the caller."""
    totp = pyotp.TOTP(secret_decrypt(device.secret_encrypted))
    now_step = totp.timecode(timezone.now())
    for step in (now_step - 1, now_step, now_step + 1):
        if login and step <= device.last_used_step:
            continue
        if constant_time_compare(totp.generate_otp(step), code):
            if login:
                device.last_used_step = step
                device.save(update_fields=["last_used_step"])
            return True
    return False


def _recovery_normalize(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def _recovery_codes_issue(*, user: User) -> list[str]:
    RecoveryCode.objects.filter(user=user).delete()
    codes = [
        "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(10))
        for _ in range(RECOVERY_CODE_COUNT)
    ]
    RecoveryCode.objects.bulk_create(
        RecoveryCode(user=user, code_hash=token_digest(code)) for code in codes
    )
    return [f"{code[:5]}-{code[5:]}" for code in codes]


@transaction.atomic
def two_factor_enable(*, user: User, code: str, request: HttpRequest | None = None) -> list[str]:
    """Confirm the pending secret with a code; returns the ten recovery codes (shown
    once: only their hashes are kept)."""
    device = TwoFactor.objects.select_for_update().filter(user=user).first()
    if device is None or device.is_enabled:
        raise ApplicationError(
            "Start with 2fa/setup." if device is None else "Two-factor login is already on.",
            code="two_factor_not_pending",
            status_code=status.HTTP_409_CONFLICT,
        )
    if not _totp_accept(device=device, code=code.strip(), login=False):
        raise InvalidOtp()
    device.enabled_at = timezone.now()
    device.save(update_fields=["enabled_at"])
    codes = _recovery_codes_issue(user=user)
    audit_record_own(action=AuditEvent.Action.TWO_FACTOR_ENABLED, user=user, request=request)
    return codes


def otp_verify(*, user: User, code: str, login: bool, request: HttpRequest | None = None) -> bool:
    """Whether ``code`` is a good TOTP code or an unused recovery code of ``user``. A
    recovery code is then spent, and so is a TOTP code for a ``login``. False also when
    2FA is off."""
    code = code.strip()
    with transaction.atomic():
        device = (
            TwoFactor.objects.select_for_update()
            .filter(user=user, enabled_at__isnull=False)
            .first()
        )
        if device is None:
            return False
        if len(code) == 6 and code.isdigit():
            return _totp_accept(device=device, code=code, login=login)
        spent = RecoveryCode.objects.filter(
            user=user, code_hash=token_digest(_recovery_normalize(code)), used_at__isnull=True
        ).update(used_at=timezone.now())
        if spent:
            left = RecoveryCode.objects.filter(user=user, used_at__isnull=True).count()
            audit_record_own(
                action=AuditEvent.Action.RECOVERY_CODE_USED,
                user=user,
                request=request,
                data={"left": left},
            )
        return bool(spent)


def second_factor_check(
    *, user: User, code: str, request: HttpRequest | None = None, action: str
) -> None:
    """A code where 2FA is on, under the lockout: a wrong one counts as a failed login
    (audited as ``action``); raises AccountLocked or InvalidOtp."""
    key = user_lockout_key(user)
    lock_check(key)
    if not otp_verify(user=user, code=code, login=True, request=request):
        login_failed(key=key, identifier=user.email, user=user, request=request, action=action)
        raise InvalidOtp(status.HTTP_401_UNAUTHORIZED)


def credentials_confirm(
    *, user: User, password: str, otp: str | None, request: HttpRequest | None = None
) -> None:
    """Re-authentication for sensitive changes (disable 2FA, create an API key): the
    password and, when 2FA is on, a code. Failures count toward the lockout."""
    key = user_lockout_key(user)
    lock_check(key)
    if not user.check_password(password):
        login_failed(key=key, identifier=user.email, user=user, request=request)
        raise ApplicationError(
            "The password is incorrect.",
            code="invalid_credentials",
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    if two_factor_enabled(user=user):
        if not otp:
            raise ApplicationError(
                "Two-factor login is on: send the code as otp.", code="otp_required"
            )
        if not otp_verify(user=user, code=otp, login=False, request=request):
            login_failed(
                key=key,
                identifier=user.email,
                user=user,
                request=request,
                action=AuditEvent.Action.LOGIN_OTP_FAILED,
            )
            raise InvalidOtp()
    login_failures_forget(key)


def two_factor_disable(
    *, user: User, password: str, code: str, request: HttpRequest | None = None
) -> None:
    if not two_factor_enabled(user=user):
        raise ApplicationError(
            "Two-factor login is off.",
            code="two_factor_disabled",
            status_code=status.HTTP_409_CONFLICT,
        )
    # Outside the transaction: a failure's audit row and count must stay.
    credentials_confirm(user=user, password=password, otp=code, request=request)
    with transaction.atomic():
        TwoFactor.objects.filter(user=user).delete()
        RecoveryCode.objects.filter(user=user).delete()
        audit_record_own(action=AuditEvent.Action.TWO_FACTOR_DISABLED, user=user, request=request)


def two_factor_reset(
    *, user: User, actor: User | None = None, request: HttpRequest | None = None
) -> bool:
    """Staff turn 2FA off for a user who lost the device and the recovery codes."""
    with transaction.atomic():
        deleted, _ = TwoFactor.objects.filter(user=user).delete()
        RecoveryCode.objects.filter(user=user).delete()
        if deleted:
            audit_record(
                action="two_factor_reset_by_operator", actor=actor, target=user, request=request
            )
    return bool(deleted)


def login_challenge_issue(*, user: User, action: str) -> OtpRequired:
    """The answer to a login whose first factor passed: a short-lived, single-use
    challenge to complete at ``login/otp``."""
    challenge = secrets.token_urlsafe(32)
    get_redis_connection("default").set(
        _CHALLENGE_KEY.format(token_digest(challenge)),
        json.dumps({"user_id": user.pk, "action": action}),
        ex=LOGIN_CHALLENGE_TTL_SECONDS,
    )
    return OtpRequired(challenge)


def login_challenge_take(
    *, challenge: str, code: str, request: HttpRequest | None = None
) -> tuple[User, str]:
    """(the user, the login's audit action) for a challenge and a good code; the
    challenge is then spent. It survives a wrong code (a typo) until it expires; the
    lockout bounds the guesses."""
    redis = get_redis_connection("default")
    redis_key = _CHALLENGE_KEY.format(token_digest(challenge))
    raw = redis.get(redis_key)
    invalid = ApplicationError(
        "Invalid or expired login challenge; log in again.",
        code="invalid_challenge",
        status_code=status.HTTP_401_UNAUTHORIZED,
    )
    pending = json.loads(raw) if raw is not None else {}
    user_id = pending.get("user_id")
    user = User.objects.filter(pk=user_id, is_active=True).first() if user_id else None
    if user is None:
        raise invalid
    second_factor_check(
        user=user, code=code, request=request, action=AuditEvent.Action.LOGIN_OTP_FAILED
    )
    # Single use: of two requests racing with good codes, one deletes the challenge.
    if not redis.delete(redis_key):
        raise invalid
    login_failures_forget(user_lockout_key(user))
    return user, pending["action"]
