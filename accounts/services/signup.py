"""Signup, and the demo account: an email normalised once, a user, its audit row."""

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from accounts.audit import audit_record_own
from accounts.models import AuditEvent, User


def email_normalize(email: str) -> str:
    return User.objects.normalize_email(email.strip()).lower()


@transaction.atomic
def user_signup(
    *,
    email: str,
    password: str,
    username: str | None = None,
    name: str = "",
    request: HttpRequest | None = None,
) -> User:
    # Upward call: notifications and orders build on accounts (module-level would cycle).
    from notifications.outbox import outbox_email_add

    email = email_normalize(email)
    user = User(email=email, username=username or None, name=name)
    errors: dict[str, list[str]] = {}
    if User.objects.filter(email__iexact=email).exists():
        errors["email"] = ["A user with this email already exists."]
    if user.username and User.objects.filter(username__iexact=user.username).exists():
        errors["username"] = ["This username is taken."]
    try:
        password_validation.validate_password(password, user)
    except ValidationError as exc:
        errors["password"] = exc.messages
    if errors:
        raise ValidationError(errors)
    user.set_password(password)
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError as exc:  # a concurrent signup won the race
        raise ValidationError({"email": ["A user with this email already exists."]}) from exc
    audit_record_own(action=AuditEvent.Action.SIGNUP, user=user, request=request)
    outbox_email_add(kind="verification", user=user)
    return user


@transaction.atomic
def user_ensure_demo(*, email: str, password: str) -> tuple[User, bool]:
    """A verified demo account with its signup bonus; the password is only set when the
    user is created."""
    # Upward call: notifications and orders build on accounts (module-level would cycle).
    from orders.services import wallet_credit_signup_bonus

    user = User.objects.filter(email__iexact=email).first()
    created = user is None
    if user is None:
        user = User.objects.create_user(
            email=email, password=password, email_verified_at=timezone.now()
        )
    wallet_credit_signup_bonus(user=user)
    return user, created
