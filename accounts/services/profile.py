"""Profile edits: username and display name."""

from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest

from accounts.audit import audit_record_own
from accounts.models import AuditEvent, User

_UNSET: Any = object()


@transaction.atomic
def user_profile_update(
    *,
    user: User,
    username: str | None = _UNSET,
    name: str = _UNSET,
    request: HttpRequest | None = None,
) -> User:
    fields = []
    if username is not _UNSET:
        username = username or None
        if username and User.objects.filter(username__iexact=username).exclude(pk=user.pk).exists():
            raise ValidationError({"username": ["This username is taken."]})
        user.username = username
        fields.append("username")
    if name is not _UNSET:
        user.name = name
        fields.append("name")
    if fields:
        try:
            with transaction.atomic():
                user.save(update_fields=fields)
        except IntegrityError as exc:
            raise ValidationError({"username": ["This username is taken."]}) from exc
        audit_record_own(
            action=AuditEvent.Action.PROFILE_UPDATED,
            user=user,
            request=request,
            data={"fields": fields},
        )
    return user
