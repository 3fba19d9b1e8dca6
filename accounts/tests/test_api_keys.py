"""API keys: create/list/revoke, signed requests to the native API (HMAC and Ed25519),
the timestamp window, replays, IP allowlists, scopes, what stops a key, encryption at
rest and its rotation."""

import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts import services
from accounts.models import ApiKey, AuditEvent, User
from accounts.secret_box import secret_decrypt
from accounts.tests.factories import PASSWORD
from accounts.tests.test_passwords_profile import _reset_token
from accounts.tests.test_two_factor import fresh_code, two_factor_on
from orders.tests.factories import coins_and_prices
from orders.tests.factories import user_create as trader_create

pytestmark = pytest.mark.django_db

TRADER_PASSWORD = "correct horse battery staple"  # orders.tests.factories
ORDER = {
    "coin": "bitcoin",
    "side": "buy",
    "type": "limit",
    "quantity": "0.01",
    "limit_price": "100",
}


@pytest.fixture(autouse=True)
def _market():
    coins_and_prices({"bitcoin": "65000"})


@pytest.fixture
def trader():
    return trader_create(usd="10000")


@pytest.fixture
def access(api, trader):
    return api.login(trader.email, password=TRADER_PASSWORD)["access"]


def key_create(api, access, **body):
    body = {"label": "bot", "scopes": ["read", "trade"], "password": TRADER_PASSWORD, **body}
    response = api.post("api-keys", body, token=access)
    assert response.status_code == 201, response.content
    return response.json()


def signed(api, method, path, body=None, *, key, secret=None, private_key=None, **options):
    """A request signed as the contract says: timestamp + METHOD + path?query + body."""
    raw = json.dumps(body).encode() if body is not None else b""
    timestamp = str(options.pop("timestamp", int(time.time() * 1000)))
    message = timestamp.encode() + method.upper().encode() + path.encode() + raw
    if private_key is not None:
        signature = base64.b64encode(private_key.sign(message)).decode()
    else:
        signature = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    signature = options.pop("signature", signature)
    with api.capture(execute=True):
        return api.client.generic(
            method.upper(),
            path,
            raw,
            content_type="application/json",
            REMOTE_ADDR=options.pop("ip", "203.0.113.10"),
            HTTP_X_API_KEY=key,
            HTTP_X_API_TIMESTAMP=timestamp,
            HTTP_X_API_SIGNATURE=signature,
        )


def hmac_get(api, created, path="/api/v1/portfolio", **options):
    return signed(api, "GET", path, key=created["key"], secret=created["secret"], **options)


# --- Create, list, revoke ---------------------------------------------------------------


def test_create_shows_the_secret_once_and_the_list_never(api, trader, access):
    created = key_create(api, access, ip_allowlist=["203.0.113.0/24"])

    assert created["kind"] == "hmac" and len(created["secret"]) == 64
    assert created["scopes"] == ["read", "trade"]
    listed = api.get("api-keys", token=access).json()["results"]
    assert [k["key"] for k in listed] == [created["key"]]
    assert set(listed[0]) == {
        "id", "label", "key", "kind", "scopes", "ip_allowlist", "expires_at", "created_at",
        "last_used_at",
    }  # fmt: skip
    assert created["secret"] not in json.dumps(listed)
    # Encrypted at rest: the column is not the secret, and decrypts to it.
    stored = ApiKey.objects.get(key=created["key"])
    assert created["secret"] not in stored.secret_encrypted
    assert secret_decrypt(stored.secret_encrypted) == created["secret"]
    event = AuditEvent.objects.get(action="api_key_created", actor=trader)
    assert created["secret"] not in json.dumps(event.data)


def test_create_needs_the_password_and_valid_input(api, access):
    base = {"label": "bot", "scopes": ["read"]}
    wrong = api.post("api-keys", {**base, "password": "nope"}, token=access)
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_credentials"
    for bad in (
        {"scopes": []},
        {"scopes": ["admin"]},
        {"ip_allowlist": ["not-an-ip"]},
        {"expires_at": (timezone.now() - timedelta(days=1)).isoformat()},
        {"ed25519_public_key": "bm90IGEga2V5"},
    ):
        response = api.post("api-keys", {**base, "password": TRADER_PASSWORD, **bad}, token=access)
        assert response.status_code == 400, (bad, response.content)
    assert not ApiKey.objects.exists()


def test_create_with_two_factor_on_needs_a_code(api):
    user = trader_create(usd="0")
    user.set_password(PASSWORD)
    user.save()
    secret, _ = two_factor_on(api, user)
    challenge = api.post("login", {"email": user.email, "password": PASSWORD}).json()["challenge"]
    login = api.post("login/otp", {"challenge": challenge, "code": fresh_code(user, secret)})
    access = login.json()["access"]
    body = {"label": "bot", "scopes": ["read"], "password": PASSWORD}

    missing = api.post("api-keys", body, token=access)
    wrong = api.post("api-keys", {**body, "otp": "000000"}, token=access)
    right = api.post("api-keys", {**body, "otp": fresh_code(user, secret)}, token=access)

    assert missing.status_code == 400 and missing.json()["code"] == "otp_required"
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_otp"
    assert right.status_code == 201


def test_revoke_stops_the_key_at_once(api, trader, access):
    created = key_create(api, access)
    assert hmac_get(api, created).status_code == 200

    assert api.delete(f"api-keys/{created['id']}", token=access).status_code == 204

    response = hmac_get(api, created)
    assert response.status_code == 401 and response.json()["code"] == "invalid_api_key"
    assert api.get("api-keys", token=access).json()["results"] == []
    assert api.delete(f"api-keys/{created['id']}", token=access).status_code == 404
    assert AuditEvent.objects.filter(action="api_key_revoked", actor=trader).exists()


def test_another_users_key_cannot_be_revoked(api, access):
    other = trader_create(usd="0")
    other_access = api.login(other.email, password=TRADER_PASSWORD)["access"]
    created = key_create(api, other_access)

    assert api.delete(f"api-keys/{created['id']}", token=access).status_code == 404
    assert hmac_get(api, created).status_code == 200


# --- Signed requests ---------------------------------------------------------------------


def test_hmac_key_reads_and_trades_with_scopes(api, trader, access):
    reader = key_create(api, access, scopes=["read"])
    both = key_create(api, access, scopes=["read", "trade"])

    portfolio = hmac_get(api, reader)
    listed = hmac_get(api, reader, "/api/v1/orders?status=pending&coin=bitcoin")
    refused = signed(
        api, "POST", "/api/v1/orders", ORDER, key=reader["key"], secret=reader["secret"]
    )
    placed = signed(api, "POST", "/api/v1/orders", ORDER, key=both["key"], secret=both["secret"])

    assert portfolio.status_code == 200 and portfolio.json()["total_value_usd"]
    assert listed.status_code == 200
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient_scope"
    assert placed.status_code == 201, placed.content
    order_id = placed.json()["id"]
    cancel = f"/api/v1/orders/{order_id}/cancel"
    assert (
        signed(api, "POST", cancel, key=reader["key"], secret=reader["secret"]).status_code == 403
    )
    assert signed(api, "POST", cancel, key=both["key"], secret=both["secret"]).status_code == 200
    assert ApiKey.objects.get(key=reader["key"]).last_used_at is not None


def test_a_trade_only_key_cannot_read(api, access):
    trade_only = key_create(api, access, scopes=["trade"])
    response = hmac_get(api, trade_only)
    assert response.status_code == 403 and response.json()["code"] == "insufficient_scope"


@pytest.mark.parametrize("encoding", ["pem", "raw"])
def test_ed25519_key_signs_without_a_stored_secret(api, access, encoding):
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    if encoding == "pem":
        given = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    else:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        given = base64.b64encode(raw).decode()
    created = key_create(api, access, ed25519_public_key=given)

    assert created["kind"] == "ed25519" and created["secret"] is None
    assert ApiKey.objects.get(key=created["key"]).secret_encrypted == ""
    ok = signed(api, "GET", "/api/v1/portfolio", key=created["key"], private_key=private)
    placed = signed(api, "POST", "/api/v1/orders", ORDER, key=created["key"], private_key=private)
    forged = signed(
        api,
        "GET",
        "/api/v1/portfolio",
        key=created["key"],
        private_key=Ed25519PrivateKey.generate(),
    )
    assert ok.status_code == 200
    assert placed.status_code == 201
    assert forged.status_code == 401 and forged.json()["code"] == "invalid_signature"


def test_timestamp_outside_the_window_is_401(api, access):
    created = key_create(api, access)
    now = int(time.time() * 1000)
    for timestamp in (now - 11_000, now + 11_000, "soon"):
        response = hmac_get(api, created, timestamp=timestamp)
        assert response.status_code == 401
        assert response.json()["code"] == "timestamp_out_of_window"
    assert hmac_get(api, created, timestamp=now - 8_000).status_code == 200


def test_a_replayed_signature_is_401(api, access):
    created = key_create(api, access)
    timestamp = int(time.time() * 1000)

    first = hmac_get(api, created, timestamp=timestamp)
    replay = hmac_get(api, created, timestamp=timestamp)

    assert first.status_code == 200
    assert replay.status_code == 401 and replay.json()["code"] == "replayed_request"


def test_bad_signature_unknown_key_and_missing_headers_are_401(api, access):
    created = key_create(api, access)
    bad = hmac_get(api, created, signature="0" * 64)
    unknown = hmac_get(api, {**created, "key": "x" * 64})
    with api.capture(execute=True):
        missing = api.client.get("/api/v1/portfolio", HTTP_X_API_KEY=created["key"])
    # The body is signed: the same signature over another body fails.
    tampered_ts = int(time.time() * 1000)
    message = f"{tampered_ts}POST/api/v1/orders".encode() + json.dumps(ORDER).encode()
    signature = hmac.new(created["secret"].encode(), message, hashlib.sha256).hexdigest()
    tampered = signed(
        api,
        "POST",
        "/api/v1/orders",
        {**ORDER, "quantity": "0.02"},
        key=created["key"],
        secret=created["secret"],
        timestamp=tampered_ts,
        signature=signature,
    )

    assert bad.status_code == 401 and bad.json()["code"] == "invalid_signature"
    assert unknown.status_code == 401 and unknown.json()["code"] == "invalid_api_key"
    assert missing.status_code == 401 and missing.json()["code"] == "signature_required"
    assert tampered.status_code == 401 and tampered.json()["code"] == "invalid_signature"


def test_ip_allowlist(api, access):
    created = key_create(api, access, ip_allowlist=["198.51.100.0/24", "2001:db8::1"])

    inside = hmac_get(api, created, ip="198.51.100.77")
    outside = hmac_get(api, created, ip="203.0.113.10")

    assert inside.status_code == 200
    assert outside.status_code == 403 and outside.json()["code"] == "ip_not_allowed"
    listed = api.get("api-keys", token=access).json()["results"][0]
    assert listed["ip_allowlist"] == ["198.51.100.0/24", "2001:db8::1/128"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/auth/api-keys", None),
        ("POST", "/api/v1/auth/api-keys", {"label": "x", "scopes": ["read"], "password": "x"}),
        ("GET", "/api/v1/auth/sessions", None),
        ("GET", "/api/v1/auth/me", None),
        ("PATCH", "/api/v1/auth/me", {"name": "bot"}),
        ("POST", "/api/v1/auth/me/password", {"current_password": "x", "new_password": "y"}),
        ("POST", "/api/v1/auth/2fa/setup", None),
        ("PATCH", "/api/v1/notifications/preferences", {}),
    ],
)
def test_a_key_cannot_manage_keys_sessions_profile_password_or_2fa(api, access, method, path, body):
    created = key_create(api, access)
    response = signed(api, method, path, body, key=created["key"], secret=created["secret"])
    assert response.status_code == 403, response.content
    assert response.json()["code"] == "api_key_not_allowed"


# --- What stops a key ------------------------------------------------------------------


def test_an_expired_key_stops(api, access):
    created = key_create(api, access, expires_at=(timezone.now() + timedelta(hours=1)).isoformat())
    assert hmac_get(api, created).status_code == 200

    ApiKey.objects.filter(key=created["key"]).update(expires_at=timezone.now())

    assert hmac_get(api, created).json()["code"] == "invalid_api_key"


def test_a_password_change_stops_every_key(api, trader, access):
    created = key_create(api, access)
    response = api.post(
        "me/password",
        {"current_password": TRADER_PASSWORD, "new_password": "Another-Sparrow-88"},
        token=access,
    )
    assert response.status_code == 200

    assert hmac_get(api, created).status_code == 401
    assert ApiKey.objects.get(key=created["key"]).revoked_reason == "password_changed"


def test_a_password_reset_stops_every_key(api, trader, access):
    created = key_create(api, access)
    token = _reset_token(api, trader.email)
    reset = api.post("reset-password", {"token": token, "new_password": "Another-Sparrow-88"})
    assert reset.status_code == 200

    assert hmac_get(api, created).status_code == 401
    assert ApiKey.objects.get(key=created["key"]).revoked_reason == "password_reset"


def test_an_operator_lock_stops_keys_and_unlock_restores_them(api, trader, access):
    created = key_create(api, access)
    services.user_lock(user=trader)
    assert hmac_get(api, created).json()["code"] == "invalid_api_key"

    services.user_unlock(user=trader)
    assert hmac_get(api, created).status_code == 200


# --- Encryption at rest and rotation ---------------------------------------------------


def test_rotation_reencrypts_under_the_new_key_and_keys_keep_working(api, access, settings):
    created = key_create(api, access)
    old_key = settings.API_KEY_ENCRYPTION_KEYS[0]
    before = ApiKey.objects.get(key=created["key"]).secret_encrypted
    new_key = Fernet.generate_key().decode()
    settings.API_KEY_ENCRYPTION_KEYS = [new_key, old_key]
    assert hmac_get(api, created).status_code == 200  # the old key still decrypts

    out = StringIO()
    call_command("secrets_reencrypt", stdout=out)

    assert "api keys: 1/1" in out.getvalue()
    after = ApiKey.objects.get(key=created["key"]).secret_encrypted
    assert after != before
    assert Fernet(new_key.encode()).decrypt(after.encode()).decode() == created["secret"]
    settings.API_KEY_ENCRYPTION_KEYS = [new_key]  # the old key dropped
    assert hmac_get(api, created).status_code == 200


# --- Admin and schema ------------------------------------------------------------------


def test_admin_lists_keys_without_secrets_and_revokes(api, access):
    created = key_create(api, access)
    admin = services.user_role_set(user=trader_create(usd="0"), role=User.Role.ADMIN)
    client = Client()
    client.force_login(admin)
    changelist = reverse("admin:accounts_apikey_changelist")

    page = client.get(changelist)
    detail = client.get(reverse("admin:accounts_apikey_change", args=[created["id"]]))
    revoked = client.post(changelist, {"action": "revoke", "_selected_action": [created["id"]]})

    assert page.status_code == 200 and created["key"] in page.content.decode()
    stored = ApiKey.objects.get(key=created["key"]).secret_encrypted
    for response in (page, detail):
        assert created["secret"] not in response.content.decode()
        assert stored not in response.content.decode()
    assert revoked.status_code == 302
    assert hmac_get(api, created).status_code == 401


def test_the_schema_documents_the_key_headers_where_keys_work(api):
    schema = api.client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    schemes = schema["components"]["securitySchemes"]
    assert {schemes[n]["name"] for n in ("xApiKey", "xApiTimestamp", "xApiSignature")} == {
        "X-API-Key",
        "X-API-Timestamp",
        "X-API-Signature",
    }
    portfolio = schema["paths"]["/api/v1/portfolio"]["get"]["security"]
    me = schema["paths"]["/api/v1/auth/me"]["get"]["security"]
    assert {"xApiKey": [], "xApiTimestamp": [], "xApiSignature": []} in portfolio
    assert not any("xApiKey" in requirement for requirement in me)
