"""Failed-login counting and the per-account lockout, shared by the API login and the
admin console's."""

import hashlib

from django.http import HttpRequest
from django_redis import get_redis_connection
from rest_framework import status

from accounts.audit import audit_record
from accounts.models import AuditEvent, User
from accounts.services.signup import email_normalize
from cryptovault.exceptions import ApplicationError

# Lockout: this many failed logins for one identifier within the window lock it.
LOCKOUT_THRESHOLD = 10
LOCKOUT_WINDOW_SECONDS = 15 * 60
LOCKOUT_SECONDS = 15 * 60
_FAIL_KEY = "cv:accounts:login-fail:{}"
_LOCK_KEY = "cv:accounts:login-lock:{}"


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


def user_lockout_key(user: User) -> str:
    return f"user:{user.pk}"


def lockout_key(identifier: str) -> tuple[str, User | None]:
    """(the lockout key, the account) for a login identifier.

    An account has one key whether it is named by email or by username, so neither
    gets its own budget of attempts. An identifier naming no account is counted too,
    hashed (no emails in Redis keys), so a lockout reveals nothing about which emails
    are registered.
    """
    user = _user_by_identifier(identifier)
    if user is not None:
        return user_lockout_key(user), user
    return "id:" + hashlib.sha256(identifier.strip().lower().encode()).hexdigest(), None


def lock_check(key: str) -> None:
    ttl = get_redis_connection("default").ttl(_LOCK_KEY.format(key))
    if ttl and ttl > 0:
        raise AccountLocked(ttl)


def login_lock_check(*, identifier: str) -> None:
    lock_check(lockout_key(identifier)[0])


def login_failed(
    *,
    key: str,
    identifier: str,
    user: User | None,
    request: HttpRequest | None,
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


def login_failures_forget(key: str) -> None:
    """A right password: the failures so far stop counting (a running lock stays)."""
    get_redis_connection("default").delete(_FAIL_KEY.format(key))


def login_failures_clear(*, user: User) -> None:
    key = user_lockout_key(user)
    get_redis_connection("default").delete(_FAIL_KEY.format(key), _LOCK_KEY.format(key))


def _user_by_identifier(identifier: str) -> User | None:
    identifier = identifier.strip()
    if not identifier:
        return None
    if "@" in identifier:
        return User.objects.filter(email__iexact=email_normalize(identifier)).first()
    return User.objects.filter(username__iexact=identifier).first()
