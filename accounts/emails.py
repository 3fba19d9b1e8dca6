"""The account emails. Plain text: they carry a code or a link, nothing else."""

from django.conf import settings
from django.core.mail import send_mail

from accounts.models import User


def send_verification_email(*, user: User, code: str, token: str) -> None:
    link = f"{settings.APP_URL}/verify-email?token={token}"
    body = (
        "Welcome to CryptoVault.\n\n"
        f"Your verification code is {code}\n\n"
        f"Or open this link to verify your email address:\n{link}\n\n"
        "The code and the link expire in 24 hours. If you did not sign up, ignore this email."
    )
    send_mail(
        f"Your CryptoVault verification code: {code}",
        body,
        settings.DEFAULT_FROM_EMAIL,
        [user.email],
    )


def send_welcome_email(*, user: User) -> None:
    bonus = settings.SIGNUP_BONUS_USD
    body = (
        f"Hello {user.name or user.username or user.email},\n\n"
        "Your email address is verified and your CryptoVault account is ready.\n"
        f"Your paper wallet has been credited with {bonus} USD to trade with.\n"
    )
    send_mail("Welcome to CryptoVault", body, settings.DEFAULT_FROM_EMAIL, [user.email])


def send_password_reset_email(*, user: User, token: str) -> None:
    link = f"{settings.APP_URL}/reset-password?token={token}"
    body = (
        "Someone asked to reset the password of your CryptoVault account.\n\n"
        f"Open this link within one hour to choose a new password:\n{link}\n\n"
        f"Reset token: {token}\n\n"
        "If it was not you, ignore this email: your password stays unchanged."
    )
    send_mail("Reset your CryptoVault password", body, settings.DEFAULT_FROM_EMAIL, [user.email])
