import base64

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from google.auth import exceptions as google_exceptions

from accounts import crypto
from accounts.models import Session, User
from accounts.tests.factories import PASSWORD, user_create
from orders.models import LedgerEntry

pytestmark = pytest.mark.django_db


def _encrypt(pem: str, password: str) -> str:
    public = serialization.load_pem_public_key(pem.encode())
    oaep = padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    )
    return base64.b64encode(public.encrypt(password.encode(), oaep)).decode()


def test_public_key_and_encrypted_password_for_signup_and_login(api, user):
    response = api.get("public-key")
    assert response.status_code == 200
    key = response.json()
    assert key["alg"] == "RSA-OAEP-256"
    assert key["pem"].startswith("-----BEGIN PUBLIC KEY-----")
    assert key["kid"]

    response = api.post(
        "signup",
        {"email": "sealed@example.com", "password_encrypted": _encrypt(key["pem"], PASSWORD)},
    )
    assert response.status_code == 201
    assert User.objects.get(email="sealed@example.com").check_password(PASSWORD)

    response = api.post(
        "login", {"email": user.email, "password_encrypted": _encrypt(key["pem"], PASSWORD)}
    )
    assert response.status_code == 200


@pytest.mark.parametrize("garbage", ["not base64 !!", base64.b64encode(b"x" * 256).decode(), ""])
def test_undecryptable_password_is_400(api, user, garbage):
    response = api.post("login", {"email": user.email, "password_encrypted": garbage})
    assert response.status_code == 400


def test_development_generates_the_key_file_once(settings, tmp_path):
    settings.RSA_PRIVATE_KEY = ""
    settings.RSA_PRIVATE_KEY_FILE = str(tmp_path / "keys" / "rsa.pem")
    settings.DEBUG = True
    first = crypto.public_key_info()
    assert (tmp_path / "keys" / "rsa.pem").stat().st_mode & 0o777 == 0o600
    crypto._load.cache_clear()
    assert crypto.public_key_info() == first


def test_production_never_generates_a_key(api, settings, tmp_path):
    settings.RSA_PRIVATE_KEY = ""
    settings.RSA_PRIVATE_KEY_FILE = str(tmp_path / "missing.pem")
    settings.DEBUG = False
    response = api.get("public-key")
    assert response.status_code == 503
    assert not (tmp_path / "missing.pem").exists()


# --- Google: only google-auth's verification (the network boundary) is replaced ---------

FAKE_ID_TOKEN = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.c2ln"


@pytest.fixture
def google(monkeypatch, settings):
    settings.GOOGLE_CLIENT_IDS = ["client-1.apps.googleusercontent.com"]
    seen = {}

    def set_claims(claims=None, error=None):
        def verify(token, request, audience=None, clock_skew_in_seconds=0):
            seen["audience"] = audience
            seen["timeout"] = request.keywords.get("timeout")
            if error:
                raise error
            return claims

        monkeypatch.setattr("google.oauth2.id_token.verify_oauth2_token", verify)

    set_claims.seen = seen
    return set_claims


def _google_claims(**extra):
    return {
        "iss": "https://accounts.google.com",
        "sub": "g-123",
        "email": "Gina@Example.com",
        "email_verified": True,
        "name": "Gina",
        **extra,
    }


def test_google_creates_a_verified_user_with_bonus(api, google):
    google(_google_claims())
    response = api.post("google", {"id_token": FAKE_ID_TOKEN})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["user"]["email"] == "gina@example.com"
    assert body["user"]["email_verified"] is True
    assert google.seen["audience"] == ["client-1.apps.googleusercontent.com"]
    # Google's certificate fetch is bounded (a request thread must not wait 120 s).
    assert google.seen["timeout"] == 5.0
    user = User.objects.get(email="gina@example.com")
    assert user.google_sub == "g-123"
    assert not user.has_usable_password()
    assert LedgerEntry.objects.filter(user=user, kind="signup_bonus").count() == 1
    assert api.get("me", token=body["access"]).status_code == 200

    # Second sign-in: same user, another session.
    again = api.post("google", {"id_token": FAKE_ID_TOKEN}).json()
    assert again["user"]["id"] == user.pk
    assert Session.objects.filter(user=user).count() == 2


def test_google_links_an_existing_account_by_verified_email(api, google):
    existing = user_create(email="gina@example.com")
    google(_google_claims())
    body = api.post("google", {"id_token": FAKE_ID_TOKEN}).json()
    assert body["user"]["id"] == existing.pk
    existing.refresh_from_db()
    assert existing.google_sub == "g-123"
    assert existing.check_password(PASSWORD)  # a verified owner keeps their password


def test_google_takes_over_an_unverified_squat(api, google):
    squat = user_create(email="gina@example.com", verified=False)
    google(_google_claims())
    assert api.post("google", {"id_token": FAKE_ID_TOKEN}).status_code == 200
    squat.refresh_from_db()
    assert squat.is_email_verified
    assert not squat.has_usable_password()


def test_google_refuses_unverified_emails_and_bad_tokens(api, google):
    google(_google_claims(email_verified=False))
    response = api.post("google", {"id_token": FAKE_ID_TOKEN})
    assert response.status_code == 400
    assert not User.objects.exists()

    google(error=ValueError("Token expired"))
    assert api.post("google", {"id_token": FAKE_ID_TOKEN}).status_code == 401
    google(error=google_exceptions.TransportError("down"))
    assert api.post("google", {"id_token": FAKE_ID_TOKEN}).status_code == 503
    assert api.post("google", {"id_token": "not-a-jwt"}).status_code == 401
    assert api.post("google", {}).status_code == 400


def test_google_unconfigured_is_503(api, settings):
    settings.GOOGLE_CLIENT_IDS = []
    assert api.post("google", {"id_token": FAKE_ID_TOKEN}).status_code == 503
