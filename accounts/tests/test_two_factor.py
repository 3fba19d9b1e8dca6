"""Two-factor login: setup, enable, the login challenge, recovery codes, the lockout,
disable, Google sign-in and the admin login."""

from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from django.test import Client
from django.urls import reverse

from accounts import services
from accounts.models import AuditEvent, RecoveryCode, TwoFactor, User
from accounts.services import LOCKOUT_THRESHOLD
from accounts.tests.factories import PASSWORD, user_create
from accounts.tests.test_crypto_google import FAKE_ID_TOKEN, _google_claims, google  # noqa: F401

pytestmark = pytest.mark.django_db


def fresh_code(user: User, secret: str) -> str:
    """The current code, as if the last accepted code's 30 s step had passed (each step's
    code is accepted once)."""
    TwoFactor.objects.filter(user=user).update(last_used_step=0)
    return pyotp.TOTP(secret).now()


def two_factor_on(api, user: User) -> tuple[str, list[str]]:
    """(the TOTP secret, the recovery codes) after setup and enable through the API."""
    access = api.login(user.email)["access"]
    setup = api.post("2fa/setup", token=access)
    assert setup.status_code == 200, setup.content
    secret = parse_qs(urlsplit(setup.json()["otpauth_uri"]).query)["secret"][0]
    enable = api.post("2fa/enable", {"code": pyotp.TOTP(secret).now()}, token=access)
    assert enable.status_code == 200, enable.content
    return secret, enable.json()["recovery_codes"]


def challenge_of(api, user: User) -> str:
    response = api.post("login", {"email": user.email, "password": PASSWORD})
    assert response.status_code == 401, response.content
    assert response.json()["code"] == "otp_required"
    return response.json()["challenge"]


def test_setup_gives_an_otpauth_uri_and_a_qr_svg_and_enable_gives_ten_recovery_codes(api, user):
    access = api.login(user.email)["access"]
    setup = api.post("2fa/setup", token=access).json()
    uri = urlsplit(setup["otpauth_uri"])
    assert uri.scheme == "otpauth" and uri.netloc == "totp"
    query = parse_qs(uri.query)
    assert query["issuer"] == ["CryptoVault"]
    assert setup["qr_svg"].startswith("<svg") and "</svg>" in setup["qr_svg"]
    secret = query["secret"][0]

    wrong = api.post("2fa/enable", {"code": "000000"}, token=access)
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_otp"
    enable = api.post("2fa/enable", {"code": pyotp.TOTP(secret).now()}, token=access)

    assert enable.status_code == 200
    codes = enable.json()["recovery_codes"]
    assert len(codes) == len(set(codes)) == 10
    # Stored hashed, the TOTP secret encrypted.
    stored = set(RecoveryCode.objects.filter(user=user).values_list("code_hash", flat=True))
    assert len(stored) == 10 and not stored & {c.replace("-", "") for c in codes}
    assert secret not in TwoFactor.objects.get(user=user).secret_encrypted
    assert AuditEvent.objects.filter(action="two_factor_enabled", actor=user).exists()
    # On: a new setup would replace the secret, so it is refused.
    again = api.post("2fa/setup", token=access)
    assert again.status_code == 409 and again.json()["code"] == "two_factor_enabled"


def test_login_answers_otp_required_and_login_otp_completes_it_once(api, user):
    secret, _ = two_factor_on(api, user)
    challenge = challenge_of(api, user)

    response = api.post("login/otp", {"challenge": challenge, "code": fresh_code(user, secret)})

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"access", "refresh", "user"} and body["user"]["email"] == user.email
    assert api.get("me", token=body["access"]).status_code == 200
    # Single use, even with another good code.
    reused = api.post("login/otp", {"challenge": challenge, "code": fresh_code(user, secret)})
    assert reused.status_code == 401 and reused.json()["code"] == "invalid_challenge"
    unknown = api.post("login/otp", {"challenge": "nope", "code": "123456"})
    assert unknown.status_code == 401 and unknown.json()["code"] == "invalid_challenge"


def test_a_totp_code_is_accepted_once(api, user):
    secret, _ = two_factor_on(api, user)
    code = fresh_code(user, secret)
    first = api.post("login/otp", {"challenge": challenge_of(api, user), "code": code})
    assert first.status_code == 200

    replay = api.post("login/otp", {"challenge": challenge_of(api, user), "code": code})

    assert replay.status_code == 401 and replay.json()["code"] == "invalid_otp"


def test_one_code_confirms_enable_and_then_logs_in(api, user):
    access = api.login(user.email)["access"]
    uri = api.post("2fa/setup", token=access).json()["otpauth_uri"]
    code = pyotp.parse_uri(uri).now()
    assert api.post("2fa/enable", {"code": code}, token=access).status_code == 200

    response = api.post("login/otp", {"challenge": challenge_of(api, user), "code": code})

    assert response.status_code == 200


def test_a_recovery_code_logs_in_once(api, user):
    _, codes = two_factor_on(api, user)

    first = api.post("login/otp", {"challenge": challenge_of(api, user), "code": codes[0]})
    again = api.post("login/otp", {"challenge": challenge_of(api, user), "code": codes[0]})
    # Case, spaces and the dash do not matter.
    other = codes[1].upper().replace("-", " ")
    third = api.post("login/otp", {"challenge": challenge_of(api, user), "code": other})

    assert first.status_code == 200
    assert again.status_code == 401 and again.json()["code"] == "invalid_otp"
    assert third.status_code == 200
    assert RecoveryCode.objects.filter(user=user, used_at__isnull=True).count() == 8
    assert AuditEvent.objects.filter(action="recovery_code_used", actor=user).count() == 2


def test_wrong_codes_count_toward_the_lockout_and_the_password_does_not_reset_them(api, user):
    two_factor_on(api, user)
    challenge = challenge_of(api, user)
    # Each guess from its own address: the per-account lock is what stops an attacker
    # who spreads guesses past the per-IP limit.
    for n in range(LOCKOUT_THRESHOLD - 1):
        wrong = api.post("login/otp", {"challenge": challenge, "code": "000000"}, ip=f"192.0.2.{n}")
        assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_otp"
    # The right password again: the code failures keep counting.
    challenge = challenge_of(api, user)

    last = api.post("login/otp", {"challenge": challenge, "code": "000000"}, ip="192.0.2.100")
    locked = api.post("login/otp", {"challenge": challenge, "code": "000000"}, ip="192.0.2.101")

    assert last.status_code == 401
    assert locked.status_code == 429 and locked.json()["code"] == "account_locked"
    login = api.post("login", {"email": user.email, "password": PASSWORD})
    assert login.status_code == 429 and login.json()["code"] == "account_locked"
    assert AuditEvent.objects.filter(action="login_otp_failed").count() == LOCKOUT_THRESHOLD
    assert AuditEvent.objects.filter(action="lockout").exists()


def test_disable_needs_the_password_and_a_code(api, user):
    secret, _ = two_factor_on(api, user)
    login = api.post(
        "login/otp", {"challenge": challenge_of(api, user), "code": fresh_code(user, secret)}
    )
    access = login.json()["access"]

    wrong_password = api.post(
        "2fa/disable", {"password": "nope", "code": fresh_code(user, secret)}, token=access
    )
    wrong_code = api.post("2fa/disable", {"password": PASSWORD, "code": "000000"}, token=access)
    missing = api.post("2fa/disable", {"password": PASSWORD}, token=access)
    assert wrong_password.status_code == 400
    assert wrong_password.json()["code"] == "invalid_credentials"
    assert wrong_code.status_code == 400 and wrong_code.json()["code"] == "invalid_otp"
    assert missing.status_code == 400
    assert services.two_factor_enabled(user=user)

    done = api.post(
        "2fa/disable", {"password": PASSWORD, "code": fresh_code(user, secret)}, token=access
    )

    assert done.status_code == 200
    assert not TwoFactor.objects.filter(user=user).exists()
    assert not RecoveryCode.objects.filter(user=user).exists()
    assert api.login(user.email)["access"]
    assert AuditEvent.objects.filter(action="two_factor_disabled", actor=user).exists()


def test_google_sign_in_also_asks_for_the_second_factor(api, google):  # noqa: F811
    user = user_create(email="gina@example.com")
    secret, _ = two_factor_on(api, user)
    google(_google_claims())

    response = api.post("google", {"id_token": FAKE_ID_TOKEN})

    assert response.status_code == 401 and response.json()["code"] == "otp_required"
    done = api.post(
        "login/otp",
        {"challenge": response.json()["challenge"], "code": fresh_code(user, secret)},
    )
    assert done.status_code == 200
    assert AuditEvent.objects.filter(action="google_login", actor=user).exists()
    user.refresh_from_db()
    assert user.google_sub == "g-123"


# --- Admin login ---------------------------------------------------------------------

ADMIN_LOGIN = "/admin/login/"


def admin_post(client, email, password, otp=None):
    data = {"username": email, "password": password}
    if otp is not None:
        data["otp"] = otp
    return client.post(ADMIN_LOGIN, data, REMOTE_ADDR="198.51.100.7")


def test_staff_with_two_factor_on_give_a_code_at_the_admin_login(api):
    operator = services.user_role_set(user=user_create(), role=User.Role.OPERATOR)
    secret, _ = two_factor_on(api, operator)
    client = Client()

    page = client.get(ADMIN_LOGIN)
    no_code = admin_post(client, operator.email, PASSWORD)
    wrong = admin_post(client, operator.email, PASSWORD, otp="000000")
    right = admin_post(client, operator.email, PASSWORD, otp=fresh_code(operator, secret))

    assert b'name="otp"' in page.content
    assert no_code.status_code == 200 and "two-factor" in no_code.content.decode()
    assert wrong.status_code == 200
    assert right.status_code == 302
    assert client.get("/admin/").status_code == 200
    failed = AuditEvent.objects.filter(action="admin_login_failed", target_id=str(operator.pk))
    assert failed.count() == 1  # the wrong code; a missing one is not a guess
    assert AuditEvent.objects.filter(action="admin_login", actor=operator).exists()


def test_an_admin_turns_two_factor_off_for_a_lost_device(api, user):
    two_factor_on(api, user)
    admin_user = services.user_role_set(user=user_create(), role=User.Role.ADMIN)
    client = Client()
    client.force_login(admin_user)
    device = TwoFactor.objects.get(user=user)

    response = client.post(
        reverse("admin:accounts_twofactor_changelist"),
        {"action": "reset", "_selected_action": [device.pk]},
    )

    assert response.status_code == 302
    assert not services.two_factor_enabled(user=user)
    assert api.login(user.email)["access"]
    assert AuditEvent.objects.filter(
        action="two_factor_reset_by_operator", actor=admin_user, target_id=str(user.pk)
    ).exists()


def test_staff_without_two_factor_log_in_to_the_admin_with_the_password(api):
    operator = services.user_role_set(user=user_create(), role=User.Role.OPERATOR)
    assert admin_post(Client(), operator.email, PASSWORD).status_code == 302
