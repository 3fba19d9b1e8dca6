"""Account emails, sent by the worker. Each task takes ids (or the email, the user's
natural key) and is safe to run twice."""

from smtplib import SMTPException

from celery import shared_task

from accounts import services

_EMAIL_TASK = {
    "acks_late": True,
    "autoretry_for": (SMTPException, ConnectionError, TimeoutError),
    "retry_backoff": True,
    "max_retries": 5,
    "soft_time_limit": 30,
    "time_limit": 60,
}


@shared_task(name="accounts.verification_email_send", **_EMAIL_TASK)
def verification_email_send(user_id: int) -> bool:
    return services.verification_email_send(user_id=user_id)


@shared_task(name="accounts.verification_email_resend", **_EMAIL_TASK)
def verification_email_resend(email: str) -> bool:
    return services.verification_email_resend(email=email)


@shared_task(name="accounts.welcome_email_send", **_EMAIL_TASK)
def welcome_email_send(user_id: int) -> bool:
    return services.welcome_email_send(user_id=user_id)


@shared_task(name="accounts.password_reset_email_send", **_EMAIL_TASK)
def password_reset_email_send(email: str) -> bool:
    return services.password_reset_email_send(email=email)


@shared_task(name="accounts.prune", acks_late=True, soft_time_limit=600, time_limit=660)
def prune() -> dict[str, int]:
    return services.accounts_prune()
