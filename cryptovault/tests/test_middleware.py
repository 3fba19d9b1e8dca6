import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db


def test_fresh_request_id_on_every_response(client):
    first = client.get("/health")["X-Request-ID"]
    second = client.get("/health")["X-Request-ID"]

    assert first and second and first != second


def test_sane_client_request_id_is_echoed(client):
    response = client.get("/health", HTTP_X_REQUEST_ID="abc-123_def.9")

    assert response["X-Request-ID"] == "abc-123_def.9"


@pytest.mark.parametrize(
    "hostile",
    ["x" * 129, "has space", "semi;colon", "<script>", "new\\nline", ""],
)
def test_insane_client_request_id_is_replaced(client, hostile):
    response = client.get("/health", HTTP_X_REQUEST_ID=hostile)

    assert response["X-Request-ID"] != hostile
    assert len(response["X-Request-ID"]) == 32


def test_request_id_is_on_error_responses_too(client):
    response = client.get("/api/v1/does-not-exist", HTTP_X_REQUEST_ID="trace-me")

    assert response.status_code == 404
    assert response["X-Request-ID"] == "trace-me"
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize("path", ["/api/v1/coins/a%00b", "/api/v1/auth/sessions/%00"])
def test_nul_in_the_path_is_404_before_any_query(client, path):
    response = client.get(path)

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_security_headers(client):
    response = client.get("/health")

    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert "Strict-Transport-Security" not in response


@override_settings(SECURE_HSTS_SECONDS=31536000, SECURE_SSL_REDIRECT=False)
def test_hsts_on_secure_requests_when_https(client):
    response = client.get("/health", secure=True)

    assert response["Strict-Transport-Security"].startswith("max-age=31536000")


def test_request_id_reaches_log_records(client, caplog):
    import logging

    from cryptovault.logging import RequestIdFilter

    handler_filter = RequestIdFilter()
    records = []

    class Capture(logging.Handler):
        def emit(self, record):
            handler_filter.filter(record)
            records.append(record)

    capture = Capture()
    logging.getLogger("cryptovault.health").addHandler(capture)
    try:
        with override_settings(
            CACHES={
                "default": {
                    "BACKEND": "django_redis.cache.RedisCache",
                    "LOCATION": "redis://127.0.0.1:1/0",
                    "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5},
                }
            }
        ):
            client.get("/health", HTTP_X_REQUEST_ID="log-me-1")
    finally:
        logging.getLogger("cryptovault.health").removeHandler(capture)

    assert records and all(r.request_id == "log-me-1" for r in records)
