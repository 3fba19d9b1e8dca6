import pytest
from django_redis import get_redis_connection

from accounts.models import AuditEvent
from accounts.services import LOCKOUT_THRESHOLD
from accounts.tests.factories import PASSWORD, user_create

pytestmark = pytest.mark.django_db

LIMITS = [
    ("signup", 5, {"email": "bad"}),
    ("login", 10, {"email": "nobody@example.com", "password": "x"}),
    ("verify-email", 10, {"email": "nobody@example.com", "code": "123456"}),
    ("resend-verification", 3, {"email": "nobody@example.com"}),
    ("forgot-password", 3, {"email": "nobody@example.com"}),
    ("reset-password", 5, {"token": "t", "new_password": "x"}),
]


@pytest.mark.parametrize("path, limit, payload", LIMITS)
def test_per_ip_limits_answer_429_with_retry_after(api, path, limit, payload):
    # The limits count in fixed windows: a slow burst can straddle a window's end and
    # start over. That can happen once, not twice in a row, so one retry on a fresh count.
    for _attempt in range(2):
        get_redis_connection("default").flushdb()
        for i in range(limit):
            # Login attempts rotate identifiers so the lockout stays out of the way.
            data = {**payload, "email": f"n{i}@example.com"} if path == "login" else payload
            assert api.post(path, data).status_code != 429, i
        response = api.post(path, payload)
        if response.status_code == 429:
            break
    assert response.status_code == 429
    assert response.json()["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60
    # Another client address has its own budget.
    assert api.post(path, payload, ip="198.51.100.99").status_code != 429


def test_limits_are_off_when_disabled(api, settings):
    settings.RATELIMIT_ENABLE = False
    for _ in range(5):
        assert api.post("forgot-password", {"email": "a@example.com"}).status_code == 202


def test_limit_state_is_the_flushed_redis_db(api):
    for _ in range(3):
        api.post("forgot-password", {"email": "a@example.com"})
    assert api.post("forgot-password", {"email": "a@example.com"}).status_code == 429
    get_redis_connection("default").flushdb()
    assert api.post("forgot-password", {"email": "a@example.com"}).status_code == 202


def _fail(api, email, n):
    # Spread over addresses: this is about the account, not the IP limit.
    for i in range(n):
        response = api.post(
            "login", {"email": email, "password": "Wrong-pass-1"}, ip=f"192.0.2.{i + 1}"
        )
        assert response.status_code == 401


def test_repeated_failures_lock_the_account_even_for_the_right_password(api):
    user = user_create()
    _fail(api, user.email, LOCKOUT_THRESHOLD)
    response = api.post("login", {"email": user.email, "password": PASSWORD}, ip="192.0.2.200")
    assert response.status_code == 429
    assert response.json()["code"] == "account_locked"
    assert int(response["Retry-After"]) > 60
    assert AuditEvent.objects.filter(action="lockout").count() == 1
    # Another account is unaffected.
    other = user_create()
    api.login(other.email, ip="192.0.2.201")


def _fail_as(api, identifier: dict, n, *, first_ip=1):
    for i in range(n):
        data = {**identifier, "password": "Wrong-pass-1"}
        assert api.post("login", data, ip=f"192.0.2.{first_ip + i}").status_code == 401


def test_email_and_username_share_one_lockout(api):
    user = user_create(username="Trader.Joe")
    # Failures count against the account whichever name they use...
    _fail_as(api, {"email": user.email}, LOCKOUT_THRESHOLD // 2)
    _fail_as(
        api, {"username": "trader.joe"}, LOCKOUT_THRESHOLD - LOCKOUT_THRESHOLD // 2, first_ip=100
    )
    # ...and the lock holds for both.
    for identifier in ({"username": "Trader.Joe"}, {"email": user.email.upper()}):
        response = api.post("login", {**identifier, "password": PASSWORD}, ip="192.0.2.230")
        assert response.status_code == 429, identifier
        assert response.json()["code"] == "account_locked"


def test_lockout_does_not_reveal_whether_the_email_exists(api):
    user_create(email="real@example.com")
    _fail(api, "real@example.com", LOCKOUT_THRESHOLD)
    _fail(api, "ghost@example.com", LOCKOUT_THRESHOLD)
    real = api.post("login", {"email": "real@example.com", "password": "x"}, ip="192.0.2.210")
    ghost = api.post("login", {"email": "ghost@example.com", "password": "x"}, ip="192.0.2.211")
    assert real.status_code == ghost.status_code == 429
    assert real.json() == ghost.json()


def test_success_resets_the_failure_count(api):
    user = user_create()
    _fail(api, user.email, LOCKOUT_THRESHOLD - 1)
    api.login(user.email, ip="192.0.2.220")
    _fail(api, user.email, LOCKOUT_THRESHOLD - 1)
    api.login(user.email, ip="192.0.2.221")


def test_locked_account_answers_locked_even_past_the_ip_limit(api):
    user = user_create()
    for _ in range(LOCKOUT_THRESHOLD):
        api.post("login", {"email": user.email, "password": "Wrong-pass-1"})
    response = api.post("login", {"email": user.email, "password": PASSWORD})
    assert response.json()["code"] == "account_locked"
