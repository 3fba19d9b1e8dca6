from django.db import transaction
from django.utils import timezone

from accounts.models import User


@transaction.atomic
def user_ensure_demo(*, email: str, password: str) -> tuple[User, bool]:
    """A verified demo account; the password is only set when the user is created."""
    user = User.objects.filter(email__iexact=email).first()
    if user is not None:
        return user, False
    user = User.objects.create_user(
        email=email, password=password, email_verified_at=timezone.now()
    )
    return user, True
