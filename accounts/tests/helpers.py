import re
from datetime import timedelta

from django.core import mail
from django.utils import timezone

from accounts import session_store
from accounts.models import Session


def mails_to(email: str, subject_part: str = ""):
    return [m for m in mail.outbox if email in m.to and subject_part in m.subject]


def code_and_token(message) -> tuple[str, str]:
    code = re.search(r"verification code is (\d{6})", message.body).group(1)
    token = re.search(r"/verify-email\?token=([A-Za-z0-9_-]+)", message.body).group(1)
    return code, token


def session_idle_out(session_id: str) -> None:
    """What SESSION_IDLE_SECONDS without a request does: the row's idle deadline
    passes and the cache key expires."""
    Session.objects.filter(pk=session_id).update(
        idle_expires_at=timezone.now() - timedelta(seconds=1)
    )
    session_store.delete([session_id])
