import pytest
from django.test import override_settings

pytestmark = [pytest.mark.django_db, pytest.mark.urls("cryptovault.tests.urls")]


def post(client, body, content_type="application/json"):
    return client.post("/echo", data=body, content_type=content_type)


def test_valid_body_passes(client):
    response = post(client, '{"amount": "1.5"}')

    assert response.status_code == 200
    assert response.json() == {"amount": "1.50000000"}


def test_domain_error_is_mapped_with_code(client):
    response = post(client, '{"amount": "1", "refuse": true}')

    assert response.status_code == 400
    assert response.json() == {"detail": "Not enough money.", "code": "insufficient_funds"}


@pytest.mark.parametrize("body", ['{"amount": ', "not json at all", "\x00\x01", '{"a": NaN'])
def test_malformed_json_is_400(client, body):
    response = post(client, body)

    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


def test_wrong_content_type_is_415(client):
    response = post(client, "amount=1", content_type="application/x-www-form-urlencoded")

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


@pytest.mark.parametrize("body", ["[1, 2, 3]", '"a string"', "42", "null", "true"])
def test_non_object_body_is_400(client, body):
    response = post(client, body)

    assert response.status_code == 400
    assert "non_field_errors" in response.json() or "detail" in response.json()


@pytest.mark.parametrize("amount", ['"abc"', '"1e400"', "[]", "{}", '"Infinity"'])
def test_wrong_field_types_are_field_errors(client, amount):
    response = post(client, f'{{"amount": {amount}}}')

    assert response.status_code == 400
    assert "amount" in response.json()


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1024)
def test_oversized_body_is_413(client):
    response = post(client, '{"amount": "1", "pad": "%s"}' % ("x" * 4096))

    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"
    # Refused before any view, still with the security headers.
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"


def test_deeply_nested_json_is_400(client):
    response = post(client, '{"amount": "1", "pad": %s}' % ("[" * 100_000 + "]" * 100_000))

    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


@pytest.mark.parametrize(
    "body", [r'{"amount": "1", "note": "\ud800"}', r'{"amount": "1", "\udfff": ["x"]}']
)
def test_unpaired_surrogate_is_400(client, body):
    # Valid JSON, but not text: it would fail wherever it is encoded.
    response = post(client, body)

    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


def test_escaped_surrogate_pair_is_text(client):
    response = post(client, r'{"amount": "1", "note": "\ud83d\ude00 caf\u00e9"}')

    assert response.status_code == 200
