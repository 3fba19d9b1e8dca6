"""Account reads. (The per-request session check slides the idle deadline, so it is a
write: ``accounts.services.sessions.session_user_get``.)"""

from django.db.models import QuerySet
from django.utils import timezone

from accounts import session_store
from accounts.crypto import token_digest
from accounts.models import ApiKey, PasswordResetToken, Session, User


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


def user_by_email(email: str) -> User | None:
    return User.objects.filter(email__iexact=email).first() if email else None


def api_key_list(*, user: User) -> list[ApiKey]:
    """The user's keys not revoked (expired ones too: their expiry says why they fail),
    newest first."""
    return list(
        ApiKey.objects.filter(user=user, revoked_at__isnull=True).order_by("-created_at", "-pk")
    )


def api_key_get(*, user: User, key_id: int) -> ApiKey | None:
    return ApiKey.objects.filter(pk=key_id, user=user, revoked_at__isnull=True).first()
