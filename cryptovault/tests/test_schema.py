"""The OpenAPI document describes what the API really answers."""

import pytest

pytestmark = pytest.mark.django_db

LISTS = {
    "/api/v1/coins": {"count", "next", "previous", "results"},
    "/api/v1/auth/sessions": {"count", "next", "previous", "results"},
    "/api/v1/orders": {"next", "previous", "results"},
    "/api/v1/transactions": {"next", "previous", "results"},
    "/api/v1/notifications": {"next", "previous", "results"},
    "/api/v1/alerts": {"next", "previous", "results"},
}


@pytest.fixture(scope="module")
def schema(django_db_setup, django_db_blocker):
    from django.test import Client

    with django_db_blocker.unblock():
        return Client().get("/api/schema/?format=json").json()


def _resolve(schema: dict, ref: dict) -> dict:
    return schema["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]


@pytest.mark.parametrize("path", LISTS)
def test_list_endpoints_are_documented_as_pages(schema, path):
    operation = schema["paths"][path]["get"]
    body = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(_resolve(schema, body)["properties"]) == LISTS[path]
    parameters = {p["name"] for p in operation["parameters"]}
    assert "page_size" in parameters
    assert ("page" if "count" in LISTS[path] else "cursor") in parameters


def test_nullable_fields_are_documented_nullable(schema):
    alert = schema["components"]["schemas"]["PriceAlert"]["properties"]
    assert alert["triggered_price"].get("nullable") is True


def test_decimal_inputs_document_their_bounds(schema):
    order = schema["components"]["schemas"]["OrderPlaceRequest"]["properties"]
    assert order["quantity"]["maximum"] == 1_000_000_000_000
    assert order["limit_price"]["maximum"] == 1_000_000_000
    for name, places in (("quantity", 8), ("limit_price", 12)):
        assert order[name]["exclusiveMinimum"] is True and order[name]["minimum"] == 0
        assert order[name]["pattern"].endswith(f"{{1,{places}}})?$")
    alert = schema["components"]["schemas"]["PriceAlertInputRequest"]["properties"]["price"]
    assert alert["maximum"] == 1_000_000_000
