"""Housekeeping: rows nobody can use any more."""

from datetime import timedelta

from django.contrib.sessions.models import Session as DjangoSession
from django.utils import timezone

from accounts.models import EmailVerification, PasswordResetToken, Session

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
