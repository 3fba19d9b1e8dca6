"""Account reads, including the per-request session check."""

from django.utils import timezone
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import AccessToken, Token

from accounts import session_store
from accounts.crypto import token_digest
from accounts.models import PasswordResetToken, Session, User


def session_user_get(*, token: Token) -> User | None:
    """The user of a validated access token while its session is alive, else None.

    One Redis round trip (which also slides the idle TTL) plus the user row; the
    session's last_seen reaches PostgreSQL at most once a minute.
    """
    sid = token.get("sid")
    user_id = token.get(jwt_settings.USER_ID_CLAIM)
    if not sid or user_id is None:
        return None
    session_user_id, seen_due = session_store.touch(session_id=str(sid))
    if session_user_id is None or session_user_id != str(user_id):
        return None
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is not None and seen_due:
        from accounts.services import session_seen

        session_seen(session_id=str(sid))
    return user


def user_from_access_token(*, token: str) -> User | None:
    """For the WebSocket middleware: None for a forged, expired or revoked token."""
    try:
        validated = AccessToken(token)
    except TokenError:
        return None
    return session_user_get(token=validated)


def session_is_live(*, session_id: str) -> bool:
    """Whether the session still exists (without sliding its idle TTL)."""
    return bool(session_store.live([session_id]))


def session_list(*, user: User) -> list[Session]:
    """The user's live sessions, newest first: open rows whose Redis key still exists."""
    sessions = list(
        Session.objects.filter(user=user, revoked_at__isnull=True).order_by("-created_at", "-pk")
    )
    live = session_store.live(s.pk for s in sessions)
    return [s for s in sessions if s.pk in live]


def session_get(*, user: User, session_id: str) -> Session | None:
    session = Session.objects.filter(pk=session_id, user=user, revoked_at__isnull=True).first()
    if session is None or not session_is_live(session_id=session.pk):
        return None
    return session


def password_reset_token_is_valid(*, token: str) -> bool:
    return PasswordResetToken.objects.filter(
        token_hash=token_digest(token),
        used_at__isnull=True,
        expires_at__gt=timezone.now(),
        user__is_active=True,
    ).exists()
