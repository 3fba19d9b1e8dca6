"""Safe defaults: without DEBUG the settings module is production and refuses to start
on anything a developer machine would make up. Each case starts a fresh interpreter
with a clean environment (nothing inherited but PATH), as a deploy would."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
DEV_SECRET_KEY = "django-insecure-dev-only-key-never-use-in-production"
DEV_FERNET_KEY = "ZGV2LW9ubHktYXBpLWtleS1lbmNyeXB0aW9uLWtleSE="
SETUP = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"


@pytest.fixture
def production(rsa_pem, tmp_path) -> dict[str, str]:
    """A complete production configuration; each test takes one piece away."""
    return {
        "SECRET_KEY": "a-long-random-production-secret-" + "x7Qp2" * 10,
        "ALLOWED_HOSTS": "api.example.com",
        "RSA_PRIVATE_KEY": rsa_pem,
        "API_KEY_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        # The checkout's dev key (.keys/rsa.pem, made by `make run`) must not count.
        "RSA_PRIVATE_KEY_FILE": str(tmp_path / "absent.pem"),
    }


def run_python(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "cryptovault.settings"}
    return subprocess.run(  # noqa: S603 - fixed interpreter and arguments
        [sys.executable, *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def django_setup(**env: str) -> subprocess.CompletedProcess:
    return run_python(["-c", SETUP], **env)


def test_debug_defaults_to_off_and_production_starts_when_everything_is_given(production):
    result = django_setup(**production)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SECRET_KEY": None}, "SECRET_KEY must be set"),
        ({"SECRET_KEY": DEV_SECRET_KEY}, "SECRET_KEY must be set"),
        ({"ALLOWED_HOSTS": None}, "ALLOWED_HOSTS must be set"),
        ({"RSA_PRIVATE_KEY": None}, "RSA_PRIVATE_KEY (PEM) or RSA_PRIVATE_KEY_FILE"),
        ({"JWT_SIGNING_KEY": DEV_SECRET_KEY}, "JWT_SIGNING_KEY must be a secret of your own"),
        ({"JWT_SIGNING_KEY": ""}, "JWT_SIGNING_KEY must be a secret of your own"),
        ({"API_KEY_ENCRYPTION_KEYS": None}, "API_KEY_ENCRYPTION_KEYS must be set"),
        ({"API_KEY_ENCRYPTION_KEYS": DEV_FERNET_KEY}, "API_KEY_ENCRYPTION_KEYS must be set"),
        ({"API_KEY_ENCRYPTION_KEYS": "not-a-fernet-key"}, "API_KEY_ENCRYPTION_KEYS must be set"),
    ],
    ids=[
        "no-secret-key",
        "dev-secret-key",
        "no-hosts",
        "no-rsa-key",
        "dev-jwt-key",
        "empty-jwt",
        "no-api-key-encryption-keys",
        "dev-api-key-encryption-key",
        "bad-api-key-encryption-key",
    ],
)
def test_production_refuses_to_start_without_each_required_setting(production, change, message):
    env = {**production, **change}
    result = django_setup(**{k: v for k, v in env.items() if v is not None})

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr
    assert "DEBUG is off (production)" in result.stderr


def test_production_accepts_an_existing_rsa_key_file(production, rsa_pem, tmp_path):
    key_file = tmp_path / "rsa.pem"
    key_file.write_text(rsa_pem)
    env = {**production, "RSA_PRIVATE_KEY_FILE": str(key_file)}
    del env["RSA_PRIVATE_KEY"]

    assert django_setup(**env).returncode == 0


def test_production_lists_everything_missing_at_once():
    result = django_setup(RSA_PRIVATE_KEY_FILE="/nonexistent/rsa.pem")

    assert result.returncode != 0
    for message in ("SECRET_KEY must be set", "ALLOWED_HOSTS must be set", "RSA_PRIVATE_KEY"):
        assert message in result.stderr


def test_check_deploy_is_clean_for_a_production_config(production):
    result = run_python(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], HTTPS="true", **production
    )

    assert result.returncode == 0, result.stderr + result.stdout


def test_development_mode_starts_without_configuration(tmp_path):
    result = django_setup(DEBUG="true", RSA_PRIVATE_KEY_FILE=str(tmp_path / "dev.pem"))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
