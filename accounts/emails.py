"""The account emails. Plain text: they carry a code or a link, nothing else.

Built, not sent: the outbox drain (notifications.outbox) sends them."""

from django.conf import settings
from django.core.mail import EmailMessage

from accounts.models import User


def verification_message(*, user: User, code: str, token: str) -> EmailMessage:
    link = f"{settings.APP_URL}/verify-email?token={token}"
    body = (
        "Welcome to CryptoVault.\n\n"
        f"Your verification code is {code}\n\n"
        f"Or open this link to verify your email address:\n{link}\n\n"
        "The code and the link expire in 24 hours. If you did not sign up, ignore this email."
    )
    return EmailMessage(
        f"Your CryptoVault verification code: {code}",
        body,
        settings.DEFAULT_FROM_EMAIL,
        [user.email],
    )


def welcome_message(*, user: User) -> EmailMessage:
    bonus = settings.SIGNUP_BONUS_USD
    body = (
        f"Hello {user.name or user.username or user.email},\n\n"
        "Your email address is verified and your CryptoVault account is ready.\n"
        f"Your paper wallet has been credited with {bonus} USD to trade with.\n"
    )
    return EmailMessage("Welcome to CryptoVault", body, settings.DEFAULT_FROM_EMAIL, [user.email])


def password_reset_message(*, user: User, token: str) -> EmailMessage:
    link = f"{settings.APP_URL}/reset-password?token={token}"
    body = (
        "Someone asked to reset the password of your CryptoVault account.\n\n"
        f"Open this link within one hour to choose a new password:\n{link}\n\n"
        f"Reset token: {token}\n\n"
        "If it was not you, ignore this email: your password stays unchanged."
    )
    return EmailMessage(
        "Reset your CryptoVault password", body, settings.DEFAULT_FROM_EMAIL, [user.email]
    )
