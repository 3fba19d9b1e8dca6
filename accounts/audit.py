"""The security and operator audit log, written by every app (accounts, orders, the
admin console).

It lives next to ``AuditEvent`` (an accounts model: its rows name users) rather than in
``cryptovault/``: the project package is what the apps build on, so it imports no app's
models for its own writes, and every app that audits already depends on accounts.
"""

import ipaddress
from typing import Any

from django.db import models
from django.http import HttpRequest

from accounts.models import AuditEvent, User
from cryptovault.logging import request_id_var
from cryptovault.net import client_ip


def request_ip(request: HttpRequest) -> str | None:
    """The client address of ``request`` as an IP field stores it, or None."""
    try:
        return str(ipaddress.ip_address(client_ip(request)))
    except ValueError:
        return None


def audit_record(
    *,
    action: str,
    actor: User | None = None,
    target: Any = None,
    request: HttpRequest | None = None,
    data: dict | None = None,
) -> AuditEvent:
    """Append one security/operator event (who, what, from where, which request)."""
    event = AuditEvent(action=action, data=data or {}, request_id=request_id_var.get() or "")
    if actor is not None and getattr(actor, "is_authenticated", False):
        event.actor = actor
    if isinstance(target, models.Model):
        event.target_type = target._meta.label_lower
        event.target_id = str(target.pk)
        event.target_repr = str(target)[:200]
    elif target is not None:
        event.target_repr = str(target)[:200]
    if request is not None:
        event.ip = request_ip(request)
        event.user_agent = request.META.get("HTTP_USER_AGENT", "")[:512]
        event.request_id = getattr(request, "request_id", None) or event.request_id
    event.save()
    return event


def audit_record_own(
    *, action: str, user: User, request: HttpRequest | None = None, data: dict | None = None
) -> AuditEvent:
    """Append an event a user caused to their own account (its actor and its target)."""
    return audit_record(action=action, actor=user, target=user, request=request, data=data)
