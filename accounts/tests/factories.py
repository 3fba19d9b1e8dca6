import itertools

from django.utils import timezone

from accounts.models import User

PASSWORD = "Tr4ding-Sparrow-77"
_seq = itertools.count(1)


def user_create(*, verified: bool = True, password: str = PASSWORD, **fields) -> User:
    fields.setdefault("email", f"user{next(_seq)}@example.com")
    if verified:
        fields.setdefault("email_verified_at", timezone.now())
    return User.objects.create_user(password=password, **fields)
