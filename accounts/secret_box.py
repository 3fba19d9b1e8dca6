"""Secrets the platform must read back (API key HMAC secrets, TOTP secrets), encrypted at
rest with ``cryptography``'s MultiFernet under ``API_KEY_ENCRYPTION_KEYS``.

The first key encrypts, every key decrypts: to rotate, put a new key first, run
``manage.py secrets_reencrypt`` (every stored secret is re-encrypted under the first
key), then drop the old key.
"""

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from cryptovault.exceptions import ApplicationError


class SecretBoxUnavailable(ApplicationError):
    def __init__(self) -> None:
        super().__init__(
            "Secret encryption is not configured.", code="key_unavailable", status_code=503
        )


@lru_cache(maxsize=4)
def _box(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key.strip()) for key in keys])
    except ValueError as exc:  # no keys, or one that is not a Fernet key
        raise SecretBoxUnavailable() from exc


def box() -> MultiFernet:
    return _box(tuple(settings.API_KEY_ENCRYPTION_KEYS))


def secret_encrypt(plaintext: str) -> str:
    return box().encrypt(plaintext.encode()).decode()


def secret_decrypt(token: str) -> str:
    """The plaintext; SecretBoxUnavailable when no configured key opens it."""
    try:
        return box().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretBoxUnavailable() from exc


def secret_rotate(token: str) -> str:
    """The same secret, encrypted under the first key."""
    try:
        return box().rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretBoxUnavailable() from exc
