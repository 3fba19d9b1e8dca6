"""The account emails, rendered from ``templates/emails/`` (cryptovault.emails).

Built, not sent: the outbox drain (notifications.outbox) sends them."""

from django.conf import settings
from django.core.mail import EmailMultiAlternatives

from accounts.models import User
from cryptovault.emails import email_render


def _greeting_name(user: User) -> str:
    return user.name or user.username or user.email


def verification_message(*, user: User, code: str, token: str) -> EmailMultiAlternatives:
    return email_render(
        template="verification",
        subject=f"Your CryptoVault verification code: {code}",
        to=[user.email],
        context={
            "code": code,
            "link": f"{settings.APP_URL}/verify-email?token={token}",
            "ttl_hours": 24,
        },
    )


def welcome_message(*, user: User) -> EmailMultiAlternatives:
    return email_render(
        template="welcome",
        subject="Welcome to CryptoVault",
        to=[user.email],
        context={"name": _greeting_name(user), "bonus": settings.SIGNUP_BONUS_USD},
    )


def password_reset_message(*, user: User, token: str) -> EmailMultiAlternatives:
    return email_render(
        template="password_reset",
        subject="Reset your CryptoVault password",
        to=[user.email],
        context={"link": f"{settings.APP_URL}/reset-password?token={token}", "token": token},
    )
