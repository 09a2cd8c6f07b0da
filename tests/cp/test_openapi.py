"""The API's OpenAPI document: every route in it, valid OpenAPI 3.1, served to anyone."""

from __future__ import annotations

from conftest import WSGIClient
from openapi_spec_validator import OpenAPIV31SpecValidator

from docklet.common.status import Access
from docklet.cp.http import openapi
from docklet.cp.http.api import ROUTES
from docklet.cp.http.openapi import _PARAM


def test_every_route_is_in_the_document_with_its_access_level() -> None:
    doc = openapi.document(ROUTES)
    for route in ROUTES:
        path = _PARAM.sub(r"{\1}", route.path)
        operation = doc["paths"][path][route.method.lower()]
        assert operation["x-docklet-access"] == route.access.value, route
        anyone = operation["security"] == [] or {} in operation["security"]
        assert anyone == (route.access in (Access.PUBLIC, Access.NODES_STATE, Access.JOIN))
        assert any(s.startswith("2") for s in operation["responses"]), route
    count = sum(len(item) for item in doc["paths"].values())
    assert count == len(ROUTES)


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi.document(ROUTES)
    assert doc["openapi"].startswith("3.1")
    OpenAPIV31SpecValidator(doc).validate()


def test_the_node_list_takes_no_credential_or_a_token() -> None:
    nodes = openapi.document(ROUTES)["paths"]["/api/state/nodes"]["get"]
    assert nodes["security"] == [{}, {"bearer": []}]
    assert nodes["x-docklet-access"] == "nodes_state"


def test_bodies_and_answers_come_from_the_models() -> None:
    doc = openapi.document(ROUTES)
    schemas = doc["components"]["schemas"]
    register = doc["paths"]["/api/agents/register"]["post"]
    assert register["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Registration"
    }
    assert register["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RegistrationReply"
    }
    assert schemas["Registration"]["properties"]["name"]["pattern"]  # the model's own bound
    assert schemas["AppCreate"]["required"] == ["image"]
    assert "replicas" in schemas["AppUpdate"]["properties"]
    create = doc["paths"]["/api/apps"]["post"]
    assert "201" in create["responses"] and "415" in create["responses"]


def test_errors_have_the_one_shape_and_the_schemes_are_documented() -> None:
    doc = openapi.document(ROUTES)
    error = doc["components"]["schemas"]["ApiError"]
    assert set(error["required"]) == {"code", "message", "status"}
    for status, answer in doc["components"]["responses"].items():
        schema = answer["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, status
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer"
    assert schemes["gitBasic"]["scheme"] == "basic"
    assert "/git/" in schemes["gitBasic"]["description"]
    assert not any(path.startswith("/git/") for path in doc["paths"])


def test_the_document_is_served_to_anyone(api: WSGIClient) -> None:
    anonymous = WSGIClient(api.app, token=None)
    status, doc = anonymous.get("/api/openapi.json")
    assert status == 200
    assert anonymous.last_headers["Content-Type"].startswith("application/json")
    assert doc == openapi.document(ROUTES)
    status, answer = anonymous.post("/api/openapi.json", {})
    assert status == 405 and answer["error"]["code"] == "method_not_allowed"
