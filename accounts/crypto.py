"""RSA-OAEP-SHA256 password transport.

Clients may encrypt a password with the public key from ``GET auth/public-key`` and
send it base64-encoded as ``password_encrypted``. The private key comes from
``RSA_PRIVATE_KEY`` (PEM) or ``RSA_PRIVATE_KEY_FILE``; only in development (``DEBUG``)
is a missing file generated, so production never runs on a throwaway key.
"""

import base64
import binascii
import hashlib
import os
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from django.conf import settings

from cryptovault.exceptions import ApplicationError

ALGORITHM = "RSA-OAEP-256"
_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


class KeyUnavailable(ApplicationError):
    def __init__(self) -> None:
        super().__init__(
            "Password encryption is not configured.", code="key_unavailable", status_code=503
        )


def token_digest(secret: str) -> str:
    """Lookup hash for high-entropy secrets (emailed link tokens): stored instead of them."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _generate_into(path: Path) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: when several workers start at once, the first writer wins.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return pem


@lru_cache(maxsize=4)
def _load(pem_setting: str, file_setting: str, debug: bool) -> rsa.RSAPrivateKey:
    if pem_setting:
        # Environments often carry PEMs on one line with literal "\n".
        pem = pem_setting.replace("\\n", "\n").encode()
    else:
        path = Path(file_setting)
        if path.is_file() and path.stat().st_size:
            pem = path.read_bytes()
        elif debug and file_setting:
            pem = _generate_into(path)
        else:
            raise KeyUnavailable()
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyUnavailable() from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyUnavailable()
    return key


def private_key() -> rsa.RSAPrivateKey:
    return _load(settings.RSA_PRIVATE_KEY, settings.RSA_PRIVATE_KEY_FILE, settings.DEBUG)


def public_key_info() -> dict[str, str]:
    public = private_key().public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {"kid": hashlib.sha256(der).hexdigest()[:16], "alg": ALGORITHM, "pem": pem.decode()}


def decrypt_password(ciphertext_b64: str) -> str:
    """The plaintext password, or ValueError when it cannot be decrypted."""
    text = ciphertext_b64.strip()
    padded = text + "=" * (-len(text) % 4)
    # Standard base64 per the contract; the URL-safe alphabet is accepted too.
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        raw = base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc
    try:
        return private_key().decrypt(raw, _OAEP).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("cannot decrypt") from exc
