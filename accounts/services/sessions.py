"""Login sessions and their tokens.

Sessions: a login creates a ``Session`` row (the truth) and its Redis cache key
(:mod:`accounts.session_store`); tokens carry the session id as ``sid``. Ending a
session revokes the row, then deletes the key, so its tokens stop working on the next
request.
"""

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.http import HttpRequest
from django.utils import timezone
from rest_framework import status
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken, Token

from accounts import session_store
from accounts.audit import audit_record, request_ip
from accounts.models import AuditEvent, Session, User
from cryptovault.exceptions import ApplicationError


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


def _idle_deadline(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.SESSION_IDLE_SECONDS + session_store.persist_seconds())


@transaction.atomic
def _sessions_end(*, session_ids: list[str], reason: str) -> list[str]:
    """End these sessions; returns the ids that were still open in PostgreSQL."""
    # Upward call: notifications and orders build on accounts (module-level would cycle).
    from notifications.services import sessions_revoked_push

    if not session_ids:
        return []

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


def _revoked_audit(
    *, target: Any, actor: User | None, request: HttpRequest | None, data: dict
) -> None:
    """The audit row of sessions ended by eviction, revocation or revoke-all (``data``
    names them, the user and the reason)."""
    audit_record(
        action=AuditEvent.Action.SESSION_REVOKED,
        actor=actor,
        target=target,
        request=request,
        data=data,
    )


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
def session_start(
    *, user: User, request: HttpRequest | None = None
) -> tuple[Session, dict[str, str]]:
    """Open a login session (evicting the oldest beyond MAX_SESSIONS_PER_USER) and issue
    its tokens."""
    # The user row lock serialises concurrent logins, so eviction counts are right.
    User.objects.select_for_update().filter(pk=user.pk).first()
    session = Session.objects.create(
        id=uuid.uuid4().hex,
        user=user,
        ip=request_ip(request) if request is not None else None,
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:512] if request is not None else "",
        idle_expires_at=_idle_deadline(timezone.now()),
    )
    session_store.store(session_id=session.id, user_id=user.pk)
    live = sessions_expired_close(user=user)
    excess = len(live) - settings.MAX_SESSIONS_PER_USER
    if excess > 0:
        for sid in _sessions_end(session_ids=live[:excess], reason="evicted"):
            data = {"session_id": sid, "user_id": user.pk, "reason": "evicted"}
            _revoked_audit(target=f"session {sid}", actor=user, request=request, data=data)
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
    *,
    session_id: str,
    reason: str = "revoked",
    actor: User | None = None,
    request: HttpRequest | None = None,
) -> bool:
    """End one session now (its access and refresh tokens stop working)."""
    session = Session.objects.filter(pk=session_id).first()
    if session is None:
        return False
    ended = bool(_sessions_end(session_ids=[session_id], reason=reason))
    if ended:
        data = {"session_id": session_id, "user_id": session.user_id, "reason": reason}
        _revoked_audit(target=session, actor=actor, request=request, data=data)
    return ended


def user_sessions_revoke_all(
    *,
    user: User,
    except_session_id: str | None = None,
    reason: str = "revoked_all",
    actor: User | None = None,
    request: HttpRequest | None = None,
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
        data = {"session_ids": ended, "user_id": user.pk, "reason": reason}
        _revoked_audit(target=user, actor=actor, request=request, data=data)
    return len(ended)


def _refresh_decode(raw: str) -> RefreshToken:
    try:
        token = RefreshToken(raw)  # type: ignore[arg-type]  # simplejwt: it takes the encoded token
    except TokenError as exc:
        raise InvalidToken() from exc
    if not token.get("sid"):
        raise InvalidToken()
    return token


def session_refresh(*, refresh_token: str, request: HttpRequest | None = None) -> dict[str, str]:
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


def session_logout(*, refresh_token: str, request: HttpRequest | None = None) -> None:
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


def session_user_get(*, token: Token) -> User | None:
    """The user of a validated access token while its session is alive, else None.

    On a cache hit: one Redis round trip (which also slides the idle TTL) plus the user
    row; the idle deadline and last_seen reach PostgreSQL at most once per
    ``session_store.persist_seconds()``. On a miss the session row decides.
    """
    sid = token.get("sid")
    user_id = token.get(jwt_settings.USER_ID_CLAIM)
    if not sid or user_id is None:
        return None
    session_user_id, seen_due = session_store.touch(session_id=str(sid))
    if session_user_id is None:
        return session_resume(session_id=str(sid), user_id=user_id)
    if session_user_id != str(user_id):
        return None
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is not None and seen_due:
        session_seen(session_id=str(sid))
    return user


def user_from_access_token(*, token: str) -> User | None:
    """For the WebSocket middleware: None for a forged, expired or revoked token."""
    try:
        validated = AccessToken(token)  # type: ignore[arg-type]  # simplejwt: it takes the encoded token
    except TokenError:
        return None
    return session_user_get(token=validated)
