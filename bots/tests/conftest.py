from dataclasses import dataclass
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.utils import timezone

from accounts.services import api_key_create
from markets.services import coins_seed, prices_record

USER_PASSWORD = "correct horse battery staple"  # orders.tests.factories.user_create's
PRICES = {"bitcoin": Decimal("65000"), "ethereum": Decimal("3000")}


@pytest.fixture
def priced(db):
    """BTCUSD and ETHUSD with a real, current price (bitcoin +2.5 % over 24 h)."""
    coins_seed(coin_ids=list(PRICES))
    prices_record(
        prices=PRICES,
        as_of=timezone.now(),
        extra={"bitcoin": {"change_24h_pct": Decimal("2.5"), "volume_24h": Decimal("650000000")}},
    )


@dataclass(frozen=True)
class Credentials:
    """An API key as a bot holds it: the key, and the HMAC secret or the Ed25519
    private key (PKCS#8 PEM, as ccxt and python-binance take one)."""

    key: str
    secret: str
    private_key: Ed25519PrivateKey | None = None


def credentials_create(user, *, scopes=("read", "trade"), ed25519=False, **options) -> Credentials:
    """An API key of ``user`` through the accounts service (the password is the
    factories' one)."""
    private_key = Ed25519PrivateKey.generate() if ed25519 else None
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
        if private_key
        else None
    )
    api_key, secret = api_key_create(
        user=user,
        label="bot",
        scopes=list(scopes),
        password=USER_PASSWORD,
        ed25519_public_key=public_pem,
        **options,
    )
    if private_key is None:
        assert secret is not None
        return Credentials(key=api_key.key, secret=secret)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return Credentials(key=api_key.key, secret=pem, private_key=private_key)
