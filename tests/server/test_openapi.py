"""The OpenAPI document: valid OpenAPI 3.1, in step with the routes, checked in, public, static."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from registry.tables import KpiDefinition
from server import openapi
from server.app import create_app
from server.config import Settings
from tests.conftest import make_token

CHECKED_IN = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")


def schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Yield every JSON Schema the document holds (components, parameters, headers, bodies)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema" and isinstance(value, dict):
                yield value
            yield from schemas(value)
    elif isinstance(node, list):
        for item in node:
            yield from schemas(item)


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def served_routes(settings: Settings) -> set[tuple[str, str]]:
    """Every (method, path) the app routes, but those the document leaves to others."""
    found = set()
    for route in create_app(settings).router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if any(path == p or path.startswith(p.rstrip("/") + "/") for p in openapi.OUTSIDE):
            continue
        # A route for every method (/metrics) is a scrape for GET and HEAD, 404 for the rest.
        methods = ("GET", "HEAD") if route.method == "*" else (route.method,)
        found |= {(method, path) for method in methods}
    return found


def test_document_is_valid_openapi_3_1() -> None:
    document = openapi.document()
    assert document["openapi"] == "3.1.0"
    OPENAPI_31_VALIDATOR.validate(document)
    found = list(schemas(document)) + list(document["components"]["schemas"].values())
    assert len(found) > 20
    for schema in found:
        jsonschema_rs.meta.validate(schema)  # JSON Schema 2020-12, as OpenAPI 3.1 has it
    # Every subschema compiles (patterns included) and every reference leads somewhere.
    compiled = jsonschema_rs.validator_map_for(document)
    for ref in refs(document):
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part]
        if ref.startswith("#/components/schemas/"):
            assert compiled.get(ref) is not None, ref


def test_every_route_is_described_and_every_described_route_is_served(settings) -> None:
    described = openapi.operations(openapi.document())
    served = served_routes(settings)
    assert served - described == set(), "routes the document does not describe"
    assert described - served == set(), "described routes the app does not serve"
    assert ("GET", "/kpis/{slug}") in described and ("HEAD", "/openapi.json") in described


def test_answers_list_exactly_the_fields_rest_writes() -> None:
    definition = openapi.document()["components"]["schemas"]["KpiDefinition"]
    assert definition["additionalProperties"] is False
    assert definition["required"] == list(definition["properties"])
    # Declared once on the GraphQL type (schema/fields.py), so here with its type and null.
    assert definition["properties"]["reviewOverdue"]["type"] == "boolean"
    assert definition["properties"]["expression"]["type"] == ["string", "null"]
    assert definition["properties"]["lastReviewedAt"]["format"] == "date-time"
    assert definition["properties"]["targets"]["items"] == {
        "$ref": "#/components/schemas/KpiTarget"
    }


def test_checked_in_copy_is_current() -> None:
    # Regenerate with: .venv/bin/python -m server.openapi > docs/openapi.json
    assert CHECKED_IN.read_text() == openapi.text()


async def test_served_without_a_token_as_checked_in(client) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.text() == CHECKED_IN.read_text()
    tag = response.headers["ETag"]
    again = await client.get("/openapi.json", headers={"If-None-Match": tag})
    assert (again.status, again.headers["ETag"]) == (304, tag)


async def test_served_alike_with_any_token(client) -> None:
    answers = [
        await client.get("/openapi.json", headers={"Authorization": f"Bearer {token}"})
        for token in ("not-a-jwt", make_token("exec"), make_token("admin"))
    ]
    assert [a.status for a in answers] == [200, 200, 200]
    assert {await a.text() for a in answers} == {openapi.text()}


async def test_names_no_internal_kpi() -> None:
    internal = await KpiDefinition.select(KpiDefinition.slug, KpiDefinition.name).where(
        KpiDefinition.visibility == "internal"
    )
    assert internal, "the seeded data holds no internal KPI to look for"
    text = openapi.text().lower()
    for row in internal:
        for word in (row["slug"], row["name"]):
            assert not re.search(rf"\b{re.escape(word.lower())}\b", text), word


def test_document_is_plain_json_with_unique_operation_ids() -> None:
    document = json.loads(openapi.text())
    ids = [
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method in METHODS
    ]
    assert len(ids) == len(set(ids)) == len(openapi.operations(document))
