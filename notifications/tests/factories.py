import itertools

from django.utils import timezone

from accounts.models import User

_seq = itertools.count(1)


def user_create(**fields) -> User:
    n = next(_seq)
    fields.setdefault("email", f"user{n}@example.com")
    fields.setdefault("email_verified_at", timezone.now())
    return User.objects.create_user(password="Correct-Horse-9", **fields)
