"""Account writes: signup, verification, login sessions, passwords, audit.

Sessions: a login creates a ``Session`` row (the truth) and its Redis cache key
(:mod:`accounts.session_store`); tokens carry the session id as ``sid``. Ending a
session revokes the row, then deletes the key, so its tokens stop working on the next
request.
"""

import functools
import hashlib
import hmac
import ipaddress
import secrets
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate, password_validation
from django.contrib.auth.hashers import make_password
from django.contrib.sessions.models import Session as DjangoSession
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage
from django.db import IntegrityError, models, transaction
from django.db.models import F
from django.utils import timezone
from django_redis import get_redis_connection
from rest_framework import status
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import RefreshToken

from accounts import emails, session_store
from accounts.crypto import token_digest
from accounts.models import AuditEvent, EmailVerification, PasswordResetToken, Session, User
from cryptovault.exceptions import ApplicationError
from cryptovault.logging import request_id_var
from cryptovault.net import client_ip

VERIFICATION_TTL = timedelta(hours=24)
VERIFICATION_MAX_ATTEMPTS = 5
PASSWORD_RESET_TTL = timedelta(hours=1)
# Lockout: this many failed logins for one identifier within the window lock it.
LOCKOUT_THRESHOLD = 10
LOCKOUT_WINDOW_SECONDS = 15 * 60
LOCKOUT_SECONDS = 15 * 60
_FAIL_KEY = "cv:accounts:login-fail:{}"
_LOCK_KEY = "cv:accounts:login-lock:{}"


# --- Audit -------------------------------------------------------------------------


def _request_ip(request) -> str | None:
    try:
        return str(ipaddress.ip_address(client_ip(request)))
    except ValueError:
        return None


def audit_record(
    *,
    action: str,
    actor: User | None = None,
    target: Any = None,
    request=None,
    data: dict | None = None,
) -> AuditEvent:
    """Append one security/operator event (who, what, from where, which request)."""
    event = AuditEvent(action=action, data=data or {}, request_id=request_id_var.get() or "")
    if actor is not None and getattr(actor, "is_authenticated", False):
        event.actor = actor
    if isinstance(target, models.Model):
        event.target_type = target._meta.label_lower
        event.target_id = str(target.pk)
        event.target_repr = str(target)[:200]
    elif target is not None:
        event.target_repr = str(target)[:200]
    if request is not None:
        event.ip = _request_ip(request)
        event.user_agent = request.META.get("HTTP_USER_AGENT", "")[:512]
        event.request_id = getattr(request, "request_id", None) or event.request_id
    event.save()
    return event


# --- Helpers -----------------------------------------------------------------------


def _code_digest(*, user_id: int, code: str) -> str:
    # A 6-digit code has too little entropy for a plain hash; keyed with SECRET_KEY a
    # leaked table does not give the codes away.
    message = f"email-code:{user_id}:{code}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def _normalize_email(email: str) -> str:
    return User.objects.normalize_email(email.strip()).lower()


def _password_validate(*, password: str, user: User, field: str) -> None:
    try:
        password_validation.validate_password(password, user)
    except ValidationError as exc:
        raise ValidationError({field: exc.messages}) from exc


@transaction.atomic
def user_role_set(*, user: User, role: str, actor: User | None = None, request=None) -> User:
    """Roles map onto Django's flags and groups (accounts.roles): operators and admins
    are staff and members of their role's group, and of no other role group."""
    from django.contrib.auth.models import Group

    from accounts.roles import ROLE_GROUPS

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
def user_lock(*, user: User, actor: User | None = None, request=None) -> User:
    """Operator lock: the account can no longer log in and its sessions end now."""
    user.is_active = False
    user.save(update_fields=["is_active"])
    user_sessions_revoke_all(user=user, reason="locked", actor=actor, request=request)
    audit_record(action="user_locked", actor=actor, target=user, request=request)
    return user


@transaction.atomic
def user_unlock(*, user: User, actor: User | None = None, request=None) -> User:
    """Undo an operator lock and any failed-login lockout."""
    user.is_active = True
    user.save(update_fields=["is_active"])
    login_failures_clear(user=user)
    audit_record(action="user_unlocked", actor=actor, target=user, request=request)
    return user


# --- Signup and verification -------------------------------------------------------


@transaction.atomic
def user_signup(
    *, email: str, password: str, username: str | None = None, name: str = "", request=None
) -> User:
    from notifications.outbox import outbox_email_add

    email = _normalize_email(email)
    user = User(email=email, username=username or None, name=name)
    errors: dict[str, list[str]] = {}
    if User.objects.filter(email__iexact=email).exists():
        errors["email"] = ["A user with this email already exists."]
    if user.username and User.objects.filter(username__iexact=user.username).exists():
        errors["username"] = ["This username is taken."]
    try:
        password_validation.validate_password(password, user)
    except ValidationError as exc:
        errors["password"] = exc.messages
    if errors:
        raise ValidationError(errors)
    user.set_password(password)
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError as exc:  # a concurrent signup won the race
        raise ValidationError({"email": ["A user with this email already exists."]}) from exc
    audit_record(action=AuditEvent.Action.SIGNUP, actor=user, target=user, request=request)
    outbox_email_add(kind="verification", user=user)
    return user


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
    from notifications.outbox import outbox_email_add

    outbox_email_add(kind="verification", user=user)


def verification_email_message(*, outbox) -> EmailMessage | None:
    """The outbox's verification email (notifications.outbox): a code and link issued
    now, when it is sent, unless the account is gone or already verified."""
    user = outbox.user or _user_by_email(outbox.address)
    if user is None or not user.is_active or user.is_email_verified:
        return None
    _, code, token = email_verification_issue(user=user)
    return emails.verification_message(user=user, code=code, token=token)


def _user_by_email(email: str) -> User | None:
    return User.objects.filter(email__iexact=email).first() if email else None


def verification_resend_request(*, email: str) -> None:
    """Accept the resend whatever the email: the answer and its timing reveal nothing
    (the same outbox row either way; the drain finds the account, if any)."""
    from notifications.outbox import outbox_email_add

    outbox_email_add(kind="verification", address=_normalize_email(email))


_INVALID_CODE = "Invalid verification code."


def email_verify(
    *, email: str | None = None, code: str | None = None, token: str | None = None, request=None
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
        user = User.objects.filter(email__iexact=_normalize_email(email or "")).first()
        verification = (
            user.email_verifications.order_by("-created_at").first() if user is not None else None
        )
        if verification is None:
            raise ApplicationError(_INVALID_CODE, code="invalid_code")
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
def user_email_mark_verified(*, user: User, request=None) -> bool:
    """Mark the email verified; the first call only credits the bonus, notifies and
    sends the welcome email. Returns whether this call did it."""
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


def welcome_email_message(*, outbox) -> EmailMessage | None:
    user = outbox.user
    if user is None or not user.is_email_verified:
        return None
    return emails.welcome_message(user=user)


@transaction.atomic
def user_ensure_demo(*, email: str, password: str) -> tuple[User, bool]:
    """A verified demo account with its signup bonus; the password is only set when the
    user is created."""
    from orders.services import wallet_credit_signup_bonus

    user = User.objects.filter(email__iexact=email).first()
    created = user is None
    if created:
        user = User.objects.create_user(
            email=email, password=password, email_verified_at=timezone.now()
        )
    wallet_credit_signup_bonus(user=user)
    return user, created


# --- Sessions and tokens -----------------------------------------------------------


class InvalidToken(ApplicationError):
    def __init__(
        self, message: str = "Token is invalid or expired.", code: str = "token_not_valid"
    ):
        super().__init__(message, code=code, status_code=status.HTTP_401_UNAUTHORIZED)


def session_tokens_issue(*, session: Session) -> dict[str, str]:
    """A new refresh/access pair for ``session``; any older refresh token of the session
    becomes a reused one."""
    refresh = RefreshToken.for_user(session.user)
    refresh["sid"] = session.id
    session.refresh_jti = refresh[jwt_settings.JTI_CLAIM]
    session.save(update_fields=["refresh_jti"])
    return {"access": str(refresh.access_token), "refresh": str(refresh)}


def _idle_deadline(now):
    return now + timedelta(seconds=settings.SESSION_IDLE_SECONDS + session_store.persist_seconds())


@transaction.atomic
def _sessions_end(*, session_ids: list[str], reason: str) -> list[str]:
    """End these sessions; returns the ids that were still open in PostgreSQL."""
    if not session_ids:
        return []
    from notifications.services import sessions_revoked_push

    open_ids = list(
        Session.objects.select_for_update()
        .filter(pk__in=session_ids, revoked_at__isnull=True)
        .values_list("pk", flat=True)
    )
    Session.objects.filter(pk__in=open_ids).update(revoked_at=timezone.now(), revoked_reason=reason)
    # After the rows are locked: a cache rebuild (session_resume) either wrote its key
    # before this delete or waits for the lock and sees the revocation. A failed delete
    # rolls the revocation back, so the cache never outlives it.
    session_store.delete(session_ids)
    sessions_revoked_push(session_ids=session_ids)
    return open_ids


def sessions_expired_close(*, user: User) -> list[str]:
    """Close the user's rows whose idle deadline passed; returns the live ids, oldest
    first."""
    now = timezone.now()
    open_rows = Session.objects.filter(user=user, revoked_at__isnull=True)
    open_rows.filter(idle_expires_at__lte=now).update(revoked_at=now, revoked_reason="expired")
    return list(
        open_rows.filter(idle_expires_at__gt=now)
        .order_by("created_at", "pk")
        .values_list("pk", flat=True)
    )


@transaction.atomic
def session_start(*, user: User, request=None) -> tuple[Session, dict[str, str]]:
    """Open a login session (evicting the oldest beyond MAX_SESSIONS_PER_USER) and issue
    its tokens."""
    # The user row lock serialises concurrent logins, so eviction counts are right.
    User.objects.select_for_update().filter(pk=user.pk).first()
    session = Session.objects.create(
        id=uuid.uuid4().hex,
        user=user,
        ip=_request_ip(request) if request is not None else None,
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:512] if request is not None else "",
        idle_expires_at=_idle_deadline(timezone.now()),
    )
    session_store.store(session_id=session.id, user_id=user.pk)
    live = sessions_expired_close(user=user)
    excess = len(live) - settings.MAX_SESSIONS_PER_USER
    if excess > 0:
        for sid in _sessions_end(session_ids=live[:excess], reason="evicted"):
            audit_record(
                action=AuditEvent.Action.SESSION_REVOKED,
                actor=user,
                target=f"session {sid}",
                request=request,
                data={"session_id": sid, "user_id": user.pk, "reason": "evicted"},
            )
    return session, session_tokens_issue(session=session)


def session_seen(*, session_id: str) -> None:
    """Persist activity: the idle deadline moves ahead of the cache's by persist_seconds."""
    now = timezone.now()
    Session.objects.filter(pk=session_id, revoked_at__isnull=True).update(
        last_seen_at=now, idle_expires_at=_idle_deadline(now)
    )


@transaction.atomic
def session_resume(*, session_id: str, user_id: Any) -> User | None:
    """A cache miss: the session row decides; a live session is slid and cached again
    (same tokens), so losing Redis logs nobody out."""
    session = (
        Session.objects.select_for_update(of=("self",))
        .select_related("user")
        .filter(
            pk=session_id,
            user_id=user_id,
            user__is_active=True,
            revoked_at__isnull=True,
            idle_expires_at__gt=timezone.now(),
        )
        .first()
    )
    if session is None:
        return None
    session_seen(session_id=session_id)
    # Under the row lock: a concurrent revocation deletes this key after it (_sessions_end).
    session_store.store(session_id=session_id, user_id=session.user_id)
    return session.user


def session_revoke(
    *, session_id: str, reason: str = "revoked", actor: User | None = None, request=None
) -> bool:
    """End one session now (its access and refresh tokens stop working)."""
    session = Session.objects.filter(pk=session_id).first()
    if session is None:
        return False
    ended = bool(_sessions_end(session_ids=[session_id], reason=reason))
    if ended:
        audit_record(
            action=AuditEvent.Action.SESSION_REVOKED,
            actor=actor,
            target=session,
            request=request,
            data={"session_id": session_id, "user_id": session.user_id, "reason": reason},
        )
    return ended


def user_sessions_revoke_all(
    *,
    user: User,
    except_session_id: str | None = None,
    reason: str = "revoked_all",
    actor: User | None = None,
    request=None,
) -> int:
    """End every session of ``user`` (but ``except_session_id``) and every admin session
    of theirs; returns how many (API) sessions ended."""
    # A new epoch changes the user's session auth hash: their Django sessions (the
    # admin's) fail it on their next request and are flushed (User.get_session_auth_hash).
    User.objects.filter(pk=user.pk).update(sessions_epoch=F("sessions_epoch") + 1)
    # The caller's instance must not write the old epoch back on a later save().
    user.refresh_from_db(fields=["sessions_epoch"])
    ids = list(
        Session.objects.filter(user=user, revoked_at__isnull=True)
        .exclude(pk=except_session_id)
        .values_list("pk", flat=True)
    )
    ended = _sessions_end(session_ids=ids, reason=reason)
    if ended:
        audit_record(
            action=AuditEvent.Action.SESSION_REVOKED,
            actor=actor,
            target=user,
            request=request,
            data={"session_ids": ended, "user_id": user.pk, "reason": reason},
        )
    return len(ended)


def _refresh_decode(raw: str) -> RefreshToken:
    try:
        token = RefreshToken(raw)
    except TokenError as exc:
        raise InvalidToken() from exc
    if not token.get("sid"):
        raise InvalidToken()
    return token


def session_refresh(*, refresh_token: str, request=None) -> dict[str, str]:
    """Rotate: a new pair for the session. A refresh token that was already rotated
    means it leaked (or a client raced itself): the whole session is revoked."""
    token = _refresh_decode(refresh_token)
    sid = token["sid"]
    reused = expired = False
    tokens: dict[str, str] = {}
    with transaction.atomic():
        session = (
            Session.objects.select_for_update()
            .select_related("user")
            .filter(pk=sid, user_id=token.get(jwt_settings.USER_ID_CLAIM))
            .first()
        )
        if session is None or session.is_revoked:
            raise InvalidToken("Session has ended.", code="session_revoked")
        if session.refresh_jti != token[jwt_settings.JTI_CLAIM]:
            reused = True
            _sessions_end(session_ids=[sid], reason="refresh_reused")
            audit_record(
                action=AuditEvent.Action.REFRESH_REUSED,
                actor=session.user,
                target=session,
                request=request,
                data={"session_id": sid},
            )
        else:
            uid, _ = session_store.touch(session_id=sid)
            if uid is None and session_resume(session_id=sid, user_id=session.user_id):
                uid = str(session.user_id)
            if uid is None or not session.user.is_active:
                _sessions_end(session_ids=[sid], reason="expired")
                expired = True
            else:
                tokens = session_tokens_issue(session=session)
    if reused:
        raise InvalidToken(
            "Refresh token was already used; the session has been revoked.", code="token_reused"
        )
    if expired:
        raise InvalidToken("Session has ended.", code="session_revoked")
    return tokens


def session_logout(*, refresh_token: str, request=None) -> None:
    token = _refresh_decode(refresh_token)
    session = Session.objects.select_related("user").filter(pk=token["sid"]).first()
    if session is None or str(session.user_id) != str(token.get(jwt_settings.USER_ID_CLAIM)):
        raise InvalidToken()
    if _sessions_end(session_ids=[session.pk], reason="logout"):
        audit_record(
            action=AuditEvent.Action.LOGOUT,
            actor=session.user,
            target=session,
            request=request,
            data={"session_id": session.pk},
        )


# --- Login and lockout -------------------------------------------------------------


class AccountLocked(ApplicationError):
    def __init__(self, retry_after: int) -> None:
        retry_after = max(1, retry_after)
        self.retry_after = retry_after
        super().__init__(
            "Too many failed logins; try again later.",
            code="account_locked",
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(retry_after)},
        )


def _lockout_key(identifier: str) -> tuple[str, User | None]:
    """(the lockout key, the account) for a login identifier.

    An account has one key whether it is named by email or by username, so neither
    gets its own budget of attempts. An identifier naming no account is counted too,
    hashed (no emails in Redis keys), so a lockout reveals nothing about which emails
    are registered.
    """
    user = _user_by_identifier(identifier)
    if user is not None:
        return f"user:{user.pk}", user
    return "id:" + hashlib.sha256(identifier.strip().lower().encode()).hexdigest(), None


def _lock_check(key: str) -> None:
    ttl = get_redis_connection("default").ttl(_LOCK_KEY.format(key))
    if ttl and ttl > 0:
        raise AccountLocked(ttl)


def login_lock_check(*, identifier: str) -> None:
    _lock_check(_lockout_key(identifier)[0])


def _login_failed(
    *,
    key: str,
    identifier: str,
    user: User | None,
    request,
    action: str = AuditEvent.Action.LOGIN_FAILED,
) -> None:
    redis = get_redis_connection("default")
    pipe = redis.pipeline()
    pipe.incr(_FAIL_KEY.format(key))
    pipe.expire(_FAIL_KEY.format(key), LOCKOUT_WINDOW_SECONDS, nx=True)
    failures = pipe.execute()[0]
    audit_record(
        action=action,
        target=user,
        request=request,
        data={"identifier": identifier[:254], "failures": failures},
    )
    if failures >= LOCKOUT_THRESHOLD:
        redis.set(_LOCK_KEY.format(key), 1, ex=LOCKOUT_SECONDS)
        redis.delete(_FAIL_KEY.format(key))
        audit_record(
            action=AuditEvent.Action.LOCKOUT,
            target=user,
            request=request,
            data={"identifier": identifier[:254], "seconds": LOCKOUT_SECONDS},
        )


def login_failures_clear(*, user: User) -> None:
    key = f"user:{user.pk}"
    get_redis_connection("default").delete(_FAIL_KEY.format(key), _LOCK_KEY.format(key))


def _user_by_identifier(identifier: str) -> User | None:
    identifier = identifier.strip()
    if not identifier:
        return None
    if "@" in identifier:
        return User.objects.filter(email__iexact=_normalize_email(identifier)).first()
    return User.objects.filter(username__iexact=identifier).first()


def _login_complete(*, user: User, action: str, request=None) -> dict[str, str]:
    """Start a session for a user who just proved who they are: audit and notify."""
    session, tokens = session_start(user=user, request=request)
    audit_record(
        action=action, actor=user, target=session, request=request, data={"session_id": session.pk}
    )
    _new_login_notify(user=user, session=session)
    return tokens


def _new_login_notify(*, user: User, session: Session) -> None:
    from notifications.services import notification_create

    where = session.ip or "an unknown address"
    notification_create(
        user=user,
        kind="new_login",
        title="New login",
        body=f"New sign-in from {where} ({session.user_agent or 'unknown device'}).",
        data={"session_id": session.pk, "ip": session.ip, "user_agent": session.user_agent},
    )


def user_login(*, identifier: str, password: str, request=None) -> tuple[User, dict[str, str]]:
    key, user = _lockout_key(identifier)
    _lock_check(key)
    if user is None:
        # Same work as a real check, so response time does not tell accounts apart.
        make_password(password)
        valid = False
    else:
        valid = user.check_password(password) and user.is_active
    if not valid:
        _login_failed(key=key, identifier=identifier, user=user, request=request)
        raise ApplicationError(
            "Invalid credentials.",
            code="invalid_credentials",
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    get_redis_connection("default").delete(_FAIL_KEY.format(key))
    if not user.is_email_verified:
        raise ApplicationError(
            "Verify your email address before logging in.",
            code="email_not_verified",
            status_code=status.HTTP_403_FORBIDDEN,
        )
    with transaction.atomic():
        tokens = _login_complete(user=user, action=AuditEvent.Action.LOGIN, request=request)
    return user, tokens


class AdminLoginRefused(Exception):
    """Wrong credentials, or an account that may not use the console (same answer)."""


def admin_login(*, identifier: str, password: str, request) -> User:
    """The admin console's password check, under the API login's rules: the same
    per-account lockout (failures here and at ``user_login`` add up) and the same audit
    (``admin_login`` / ``admin_login_failed``, ``lockout``). Returns the staff user to
    log in; raises AccountLocked or AdminLoginRefused."""
    key, account = _lockout_key(identifier)
    try:
        _lock_check(key)
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
        _login_failed(
            key=key,
            identifier=identifier,
            user=account,
            request=request,
            action="admin_login_failed",
        )
        raise AdminLoginRefused
    get_redis_connection("default").delete(_FAIL_KEY.format(key))
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


# --- Google sign-in ----------------------------------------------------------------

GOOGLE_CERTS_TIMEOUT = 5.0


def _google_claims(id_token: str) -> dict:
    import jwt as pyjwt
    from google.auth import exceptions as google_exceptions
    from google.auth.transport import requests as google_requests
    from google.oauth2 import id_token as google_id_token

    try:
        # Reject what is not even a JWT before any network call.
        pyjwt.get_unverified_header(id_token)
    except pyjwt.PyJWTError as exc:
        raise InvalidToken("Invalid Google ID token.", code="invalid_token") from exc
    if not settings.GOOGLE_CLIENT_IDS:
        raise ApplicationError(
            "Google sign-in is not configured.",
            code="google_not_configured",
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    # google-auth waits up to 120 s for Google's certificates by default; a request
    # thread (cryptovault/asgi_handler.py) should not.
    request = functools.partial(google_requests.Request(), timeout=GOOGLE_CERTS_TIMEOUT)
    try:
        return google_id_token.verify_oauth2_token(
            id_token, request, audience=list(settings.GOOGLE_CLIENT_IDS)
        )
    except google_exceptions.TransportError as exc:
        raise ApplicationError(
            "Google is unreachable.",
            code="google_unavailable",
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        ) from exc
    except (ValueError, google_exceptions.GoogleAuthError) as exc:
        raise InvalidToken("Invalid Google ID token.", code="invalid_token") from exc


def google_sign_in(*, id_token: str, request=None) -> tuple[User, dict[str, str]]:
    """Sign in with a Google ID token: the account linked to the Google subject, else
    the account with that (Google-verified) email, else a new verified account."""
    claims = _google_claims(id_token)
    sub = str(claims.get("sub") or "")
    email = _normalize_email(str(claims.get("email") or ""))
    if not sub or not email or claims.get("email_verified") not in (True, "true"):
        raise ApplicationError(
            "The Google account has no verified email.", code="google_email_not_verified"
        )
    with transaction.atomic():
        user = User.objects.select_for_update().filter(google_sub=sub).first()
        if user is None:
            user = User.objects.select_for_update().filter(email__iexact=email).first()
            if user is None:
                user = User.objects.create_user(
                    email=email,
                    password=None,
                    name=str(claims.get("name") or "")[:150],
                    google_sub=sub,
                )
                audit_record(
                    action=AuditEvent.Action.SIGNUP,
                    actor=user,
                    target=user,
                    request=request,
                    data={"provider": "google"},
                )
            elif user.google_sub:
                raise ApplicationError(
                    "This email is linked to another Google account.",
                    code="google_account_conflict",
                    status_code=status.HTTP_409_CONFLICT,
                )
            else:
                if not user.is_email_verified:
                    # Whoever registered this unverified address may not be its owner:
                    # their password must not survive the owner's first sign-in.
                    user.set_unusable_password()
                user.google_sub = sub
                user.save(update_fields=["google_sub", "password"])
        if not user.is_active:
            raise ApplicationError(
                "This account is disabled.", code="account_disabled", status_code=403
            )
        user_email_mark_verified(user=user, request=request)
        tokens = _login_complete(user=user, action=AuditEvent.Action.GOOGLE_LOGIN, request=request)
    return user, tokens


# --- Passwords ---------------------------------------------------------------------


def password_reset_request(*, email: str) -> None:
    """Accept the reset email whatever the address: no enumeration, same timing (the
    same outbox row either way; the drain finds the account, if any)."""
    from notifications.outbox import outbox_email_add

    outbox_email_add(kind="password_reset", address=_normalize_email(email))


def password_reset_email_message(*, outbox) -> EmailMessage | None:
    """The outbox's reset email (notifications.outbox): the link is issued when it is
    sent, so the token exists only as its hash in the database."""
    user = _user_by_email(outbox.address)
    if user is None or not user.is_active:
        return None
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        PasswordResetToken.objects.create(
            user=user,
            token_hash=token_digest(token),
            expires_at=timezone.now() + PASSWORD_RESET_TTL,
        )
        audit_record(action=AuditEvent.Action.PASSWORD_RESET_REQUESTED, actor=user, target=user)
    return emails.password_reset_message(user=user, token=token)


@transaction.atomic
def password_reset(*, token: str, new_password: str, request=None) -> User:
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
    login_failures_clear(user=user)
    audit_record(action=AuditEvent.Action.PASSWORD_RESET, actor=user, target=user, request=request)
    return user


@transaction.atomic
def user_password_change(
    *, user: User, session_id: str | None, current_password: str, new_password: str, request=None
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
    audit_record(
        action=AuditEvent.Action.PASSWORD_CHANGED, actor=user, target=user, request=request
    )
    session = Session.objects.select_related("user").filter(pk=session_id).first()
    if session is None:  # not authenticated through a session: open a fresh one
        return session_start(user=user, request=request)[1]
    return session_tokens_issue(session=session)


# --- Profile -----------------------------------------------------------------------


_UNSET: Any = object()


@transaction.atomic
def user_profile_update(
    *, user: User, username: str | None = _UNSET, name: str = _UNSET, request=None
) -> User:
    fields = []
    if username is not _UNSET:
        username = username or None
        if username and User.objects.filter(username__iexact=username).exclude(pk=user.pk).exists():
            raise ValidationError({"username": ["This username is taken."]})
        user.username = username
        fields.append("username")
    if name is not _UNSET:
        user.name = name
        fields.append("name")
    if fields:
        try:
            with transaction.atomic():
                user.save(update_fields=fields)
        except IntegrityError as exc:
            raise ValidationError({"username": ["This username is taken."]}) from exc
        audit_record(
            action=AuditEvent.Action.PROFILE_UPDATED,
            actor=user,
            target=user,
            request=request,
            data={"fields": fields},
        )
    return user


# --- Housekeeping ------------------------------------------------------------------

SESSION_ROW_RETENTION = timedelta(days=30)
VERIFICATION_ROW_RETENTION = timedelta(days=7)
RESET_ROW_RETENTION = timedelta(days=1)


def accounts_prune() -> dict[str, int]:
    """Close session rows whose idle deadline passed, and delete rows nobody can use
    any more (ended sessions after 30 days, expired admin sessions, expired codes and
    reset links). The audit log is kept."""
    now = timezone.now()
    closed = Session.objects.filter(revoked_at__isnull=True, idle_expires_at__lte=now).update(
        revoked_at=now, revoked_reason="expired"
    )
    return {
        "sessions_closed": closed,
        "sessions_deleted": Session.objects.filter(
            revoked_at__lt=now - SESSION_ROW_RETENTION
        ).delete()[0],
        # Django's own sessions (the admin's) are never read past expire_date.
        "admin_sessions_deleted": DjangoSession.objects.filter(expire_date__lt=now).delete()[0],
        "verifications_deleted": EmailVerification.objects.filter(
            expires_at__lt=now - VERIFICATION_ROW_RETENTION
        ).delete()[0],
        "resets_deleted": PasswordResetToken.objects.filter(
            expires_at__lt=now - RESET_ROW_RETENTION
        ).delete()[0],
    }
