"""Account reads, including the per-request session check."""

from django.db.models import QuerySet
from django.utils import timezone
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import AccessToken, Token

from accounts import session_store
from accounts.crypto import token_digest
from accounts.models import PasswordResetToken, Session, User


def session_user_get(*, token: Token) -> User | None:
    """The user of a validated access token while its session is alive, else None.

    On a cache hit: one Redis round trip (which also slides the idle TTL) plus the user
    row; the idle deadline and last_seen reach PostgreSQL at most once per
    ``session_store.persist_seconds()``. On a miss the session row decides.
    """
    from accounts.services import session_resume, session_seen

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
        validated = AccessToken(token)
    except TokenError:
        return None
    return session_user_get(token=validated)


def _live_sessions() -> QuerySet[Session]:
    return Session.objects.filter(revoked_at__isnull=True, idle_expires_at__gt=timezone.now())


def session_is_live(*, session_id: str) -> bool:
    """Whether the session is still alive (without sliding its idle deadline)."""
    return session_store.cached(session_id) or _live_sessions().filter(pk=session_id).exists()


def session_list(*, user: User) -> list[Session]:
    """The user's live sessions, newest first."""
    return list(_live_sessions().filter(user=user).order_by("-created_at", "-pk"))


def session_get(*, user: User, session_id: str) -> Session | None:
    return _live_sessions().filter(pk=session_id, user=user).first()


def password_reset_token_is_valid(*, token: str) -> bool:
    return PasswordResetToken.objects.filter(
        token_hash=token_digest(token),
        used_at__isnull=True,
        expires_at__gt=timezone.now(),
        user__is_active=True,
    ).exists()
