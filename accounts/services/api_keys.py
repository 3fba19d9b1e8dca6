"""API keys for bots: create, revoke, and check a signed request.

A key is a public id (``key``) plus either an HMAC-SHA256 secret, shown once and kept
Fernet-encrypted (accounts.secret_box), or an Ed25519 public key (then the server holds
no secret). ``api_key_authenticate`` is the one check every key-authenticated API builds
on: the native headers (accounts.authentication) and the Binance-compatible API, each
adding its own timestamp rule.

A key stops working at once when revoked or expired, when its user is deactivated
(operator lock), and when the user changes or resets the password (every key is revoked
then): each request reads the key and its user from PostgreSQL.
"""

import base64
import binascii
import hashlib
import hmac
import ipaddress
import string
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import get_random_string
from rest_framework import status

from accounts.audit import audit_record
from accounts.models import ApiKey, AuditEvent, TwoFactor, User
from accounts.secret_box import secret_decrypt, secret_encrypt, secret_rotate
from accounts.services.two_factor import credentials_confirm
from cryptovault.exceptions import ApplicationError

MAX_API_KEYS_PER_USER = 20
# last_used_at is written at most this often per key (not on every request).
LAST_USED_RESOLUTION = timedelta(minutes=1)
_KEY_ALPHABET = string.ascii_letters + string.digits


class InvalidApiKey(ApplicationError):
    default_message = "Invalid, revoked or expired API key."
    default_code = "invalid_api_key"
    default_status_code = status.HTTP_401_UNAUTHORIZED


class IpNotAllowed(ApplicationError):
    default_message = "This API key may not be used from this address."
    default_code = "ip_not_allowed"
    default_status_code = status.HTTP_403_FORBIDDEN


class InvalidSignature(ApplicationError):
    default_message = "Invalid request signature."
    default_code = "invalid_signature"
    default_status_code = status.HTTP_401_UNAUTHORIZED


def ed25519_public_key_parse(value: str) -> bytes:
    """The raw 32 bytes of an Ed25519 public key given as PEM, or base64 of the raw
    key or of its DER (SubjectPublicKeyInfo); ValueError otherwise."""
    value = value.strip()
    try:
        if "-----BEGIN" in value:
            key = serialization.load_pem_public_key(value.encode())
        else:
            raw = base64.b64decode(value, validate=True)
            if len(raw) == 32:
                return raw
            key = serialization.load_der_public_key(raw)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError("Not an Ed25519 public key (PEM or base64).") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("Not an Ed25519 public key (PEM or base64).")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def api_key_create(
    *,
    user: User,
    label: str,
    scopes: list[str],
    password: str,
    otp: str | None = None,
    ip_allowlist: list[str] | None = None,
    expires_at: datetime | None = None,
    ed25519_public_key: str | None = None,
    request: HttpRequest | None = None,
) -> tuple[ApiKey, str | None]:
    """(the key, its HMAC secret or None for an Ed25519 key). The secret is returned
    this once and stored only encrypted. Needs the password, and a code when 2FA is on."""
    public_raw = None
    if ed25519_public_key:
        try:
            public_raw = ed25519_public_key_parse(ed25519_public_key)
        except ValueError as exc:
            raise ApplicationError(str(exc), code="invalid_public_key") from exc
    # Outside the transaction: a failure's audit row and lockout count must stay.
    credentials_confirm(user=user, password=password, otp=otp, request=request)
    with transaction.atomic():
        # One at a time per user, so the limit holds under concurrent requests.
        User.objects.select_for_update().filter(pk=user.pk).first()
        if ApiKey.objects.filter(user=user, revoked_at__isnull=True).count() >= (
            MAX_API_KEYS_PER_USER
        ):
            raise ApplicationError(
                f"At most {MAX_API_KEYS_PER_USER} API keys; revoke one first.",
                code="too_many_api_keys",
            )
        secret = None if public_raw else get_random_string(64, _KEY_ALPHABET)
        api_key = ApiKey.objects.create(
            user=user,
            label=label,
            key=get_random_string(64, _KEY_ALPHABET),
            kind=ApiKey.Kind.ED25519 if public_raw else ApiKey.Kind.HMAC,
            scopes=sorted(set(scopes)),
            ip_allowlist=list(ip_allowlist or []),
            secret_encrypted=secret_encrypt(secret) if secret else "",
            public_key=base64.b64encode(public_raw).decode() if public_raw else "",
            expires_at=expires_at,
        )
        audit_record(
            action=AuditEvent.Action.API_KEY_CREATED,
            actor=user,
            target=api_key,
            request=request,
            data={
                "key": api_key.key,
                "kind": api_key.kind,
                "scopes": api_key.scopes,
                "ip_allowlist": api_key.ip_allowlist,
            },
        )
    return api_key, secret


def api_key_revoke(
    *,
    api_key: ApiKey,
    reason: str,
    actor: User | None = None,
    request: HttpRequest | None = None,
) -> bool:
    """Revoke one key now, for ``reason`` (the caller says why: the user, an operator, a
    new password); False when it already was."""
    revoked = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_reason=reason
    )
    if revoked:
        audit_record(
            action=AuditEvent.Action.API_KEY_REVOKED,
            actor=actor,
            target=api_key,
            request=request,
            data={"key": api_key.key, "reason": reason},
        )
    return bool(revoked)


def api_keys_revoke_all(
    *, user: User, reason: str, actor: User | None = None, request: HttpRequest | None = None
) -> int:
    """Revoke every live key of ``user`` (a new password: whoever had the old one may
    have made keys)."""
    keys = list(ApiKey.objects.filter(user=user, revoked_at__isnull=True))
    return sum(
        api_key_revoke(api_key=key, reason=reason, actor=actor, request=request) for key in keys
    )


def _signature_valid(api_key: ApiKey, message: bytes, signature: str) -> bool:
    if api_key.kind == ApiKey.Kind.ED25519:
        try:
            text = signature.strip()
            # Standard base64; the URL-safe alphabet is accepted too.
            altchars = b"-_" if ("-" in text or "_" in text) else None
            raw = base64.b64decode(text, altchars=altchars, validate=True)
            public = Ed25519PublicKey.from_public_bytes(base64.b64decode(api_key.public_key))
            public.verify(raw, message)
        except (ValueError, binascii.Error, CryptoInvalidSignature):
            return False
        return True
    secret = secret_decrypt(api_key.secret_encrypted).encode()
    expected = hmac.new(secret, message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.strip().lower())


def _ip_allowed(api_key: ApiKey, client_ip: str | None) -> bool:
    if not api_key.ip_allowlist:
        return True
    try:
        address = ipaddress.ip_address(client_ip or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(cidr) for cidr in api_key.ip_allowlist)


def api_key_authenticate(
    *, key: str, message: bytes, signature: str, client_ip: str | None
) -> ApiKey:
    """The live key ``key`` whose owner signed ``message``: HMAC keys with the hex
    HMAC-SHA256 of it, Ed25519 keys with a base64 signature. Raises InvalidApiKey
    (unknown, revoked, expired, user inactive), IpNotAllowed or InvalidSignature.
    Timestamps and replays are the caller's rule."""
    now = timezone.now()
    api_key = (
        ApiKey.objects.select_related("user").filter(key=key[:64], revoked_at__isnull=True).first()
    )
    if (
        api_key is None
        or not api_key.user.is_active
        or (api_key.expires_at is not None and api_key.expires_at <= now)
    ):
        raise InvalidApiKey()
    if not _ip_allowed(api_key, client_ip):
        raise IpNotAllowed()
    if not _signature_valid(api_key, message, signature):
        raise InvalidSignature()
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key


def api_key_has_scope(api_key: ApiKey, scope: str) -> bool:
    return scope in api_key.scopes


def stored_secrets_reencrypt(*, batch_size: int = 500) -> Iterator[tuple[str, int, int]]:
    """Re-encrypt every stored secret (API key secrets, TOTP secrets) under the first of
    ``API_KEY_ENCRYPTION_KEYS``; yields (what, done, total) after each batch. Rows are
    updated one batch per transaction, each row locked while it is rewritten, so keys
    keep working throughout and a rerun after an interruption finishes the job."""
    # Any: both models have ``secret_encrypted``; mypy sees no common base with it.
    stores: tuple[tuple[Any, str], ...] = (
        (ApiKey, "api keys"),
        (TwoFactor, "two-factor secrets"),
    )
    for model, label in stores:
        rows = model.objects.exclude(secret_encrypted="").order_by("pk")
        total, done, last_pk = rows.count(), 0, 0
        while True:
            with transaction.atomic():
                batch = list(
                    rows.filter(pk__gt=last_pk)
                    .select_for_update()[:batch_size]
                    .only("pk", "secret_encrypted")
                )
                for row in batch:
                    row.secret_encrypted = secret_rotate(row.secret_encrypted)
                model.objects.bulk_update(batch, ["secret_encrypted"])
            if not batch:
                break
            done += len(batch)
            last_pk = batch[-1].pk
            yield label, done, total
