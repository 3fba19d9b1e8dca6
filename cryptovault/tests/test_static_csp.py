"""Static files as a browser gets them (hashed, compressed, cached for good), the API
docs' schema, and the Content-Security-Policy each kind of response carries."""

import httpx
import pytest
from django.core.management import call_command
from django.test import Client

from cryptovault.asgi import application
from cryptovault.testing import uvicorn_in_thread

API_POLICY = {"default-src 'none'", "frame-ancestors 'none'"}


def directives(header: str) -> set[str]:
    return {part.strip() for part in header.split(";")}


@pytest.fixture
def collected(settings, tmp_path):
    """collectstatic into a fresh STATIC_ROOT (the admin's files only: quick)."""
    settings.STATIC_ROOT = tmp_path
    ignore = ["drf_spectacular_sidecar", "rest_framework"]
    call_command("collectstatic", interactive=False, verbosity=0, ignore_patterns=ignore)
    return tmp_path


@pytest.mark.django_db
def test_collected_static_files_are_hashed_compressed_and_immutable(collected):
    client = Client()
    page = client.get("/admin/login/").content.decode()
    href = next(part for part in page.split('"') if "/admin/css/base." in part)
    assert href != "/static/admin/css/base.css"  # a hashed name

    response = client.get(href, HTTP_ACCEPT_ENCODING="br, gzip")
    assert response.status_code == 200
    assert response["Content-Encoding"] == "br"
    assert "immutable" in response["Cache-Control"]
    assert "max-age=315360000" in response["Cache-Control"]
    assert directives(response["Content-Security-Policy"]) == API_POLICY
    assert response["X-Content-Type-Options"] == "nosniff"


@pytest.mark.django_db
def test_pages_get_a_same_origin_policy_and_json_the_empty_one(client):
    login = client.get("/admin/login/")
    assert {"default-src 'self'", "frame-ancestors 'none'"} <= directives(
        login["Content-Security-Policy"]
    )
    assert "unsafe-inline" not in login["Content-Security-Policy"]

    docs = client.get("/api/docs/")
    policy = docs["Content-Security-Policy"]
    assert "style-src 'self' 'nonce-" in policy
    assert "script-src" not in policy  # scripts: 'self' only, from default-src
    nonce = policy.split("'nonce-")[1].split("'")[0]
    assert f'<style nonce="{nonce}">' in docs.content.decode()
    assert "cdn" not in docs.content.decode().lower()

    redoc = client.get("/api/redoc/")
    assert "worker-src blob:" in redoc["Content-Security-Policy"]
    assert "googleapis" not in redoc.content.decode()

    for path in ("/api/v1/coins", "/api/v1/nope", "/health", "/api/schema/"):
        assert directives(client.get(path)["Content-Security-Policy"]) == API_POLICY, path


@pytest.mark.django_db(transaction=True)  # an empty price store is refilled from PostgreSQL
def test_the_prices_fast_lane_carries_the_api_policy():
    with uvicorn_in_thread(application) as address:
        response = httpx.get(f"http://{address}/api/v1/prices")
    assert response.status_code in (200, 429)
    assert directives(response.headers["Content-Security-Policy"]) == API_POLICY


@pytest.mark.django_db
def test_the_schema_offers_bearer_auth_and_uses_it(client):
    schema = client.get("/api/schema/?format=json").json()
    schemes = schema["components"]["securitySchemes"]
    name, scheme = next(iter(schemes.items()))
    assert scheme == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert {name: []} in schema["paths"]["/api/v1/portfolio"]["get"]["security"]
