import re

from django.core import mail


def mails_to(email: str, subject_part: str = ""):
    return [m for m in mail.outbox if email in m.to and subject_part in m.subject]


def code_and_token(message) -> tuple[str, str]:
    code = re.search(r"verification code is (\d{6})", message.body).group(1)
    token = re.search(r"/verify-email\?token=([A-Za-z0-9_-]+)", message.body).group(1)
    return code, token
