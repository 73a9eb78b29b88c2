"""GraphQL over HTTP to the letter: graphql-http's own audit, and the media types and status codes.

The audit (`serverAudits` of the pinned graphql-http npm package, tests/http_audit/, installed
by `make setup`) runs in Node against the app over real HTTP, as an admin. It is skipped, with a
message, where Node or the package is absent.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.media import GRAPHQL_RESPONSE, response_type
from tests.conftest import make_token

AUDIT = Path(__file__).resolve().parents[1] / "http_audit"
NODE = shutil.which("node")
GOALS = {"MUST": 13, "SHOULD": 23, "MAY": 25}


@pytest.mark.skipif(
    NODE is None or not (AUDIT / "node_modules" / "graphql-http").is_dir(),
    reason="graphql-http's audit needs Node and `make setup` (npm ci in tests/http_audit)",
)
async def test_graphql_http_audit_passes_every_must_should_and_may(client: TestClient) -> None:
    assert NODE is not None
    url = str(client.make_url("/graphql"))
    process = await asyncio.create_subprocess_exec(
        NODE,
        str(AUDIT / "audit.mjs"),
        url,
        make_token("admin", ttl=600),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    results = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    failed = [
        f"{r['level']} {r['id']} {r['name']}: {r['reason']}" for r in results if r["status"] != "ok"
    ]
    assert failed == []
    counts = {level: sum(1 for r in results if r["level"] == level) for level in GOALS}
    assert counts == GOALS, counts


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("application/json", "application/json"),
        (GRAPHQL_RESPONSE, GRAPHQL_RESPONSE),
        (f"{GRAPHQL_RESPONSE}, application/json;q=0.9", GRAPHQL_RESPONSE),
        (f"application/json, {GRAPHQL_RESPONSE}", GRAPHQL_RESPONSE),
        (f"application/json, {GRAPHQL_RESPONSE};q=0.5", "application/json"),
        (f"{GRAPHQL_RESPONSE};q=0", "application/json"),
        (f"{GRAPHQL_RESPONSE};q=nonsense", "application/json"),
        ("text/html", "application/json"),
    ],
)
def test_the_media_type_follows_the_accept_header(accept: str | None, expected: str) -> None:
    assert response_type(accept) == expected


async def post(
    client: TestClient, body: Any, accept: str | None = GRAPHQL_RESPONSE, persona: str = "exec"
) -> tuple[int, str, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {make_token(persona)}"}
    if accept is not None:
        headers["Accept"] = accept
    response = await client.post("/graphql", json=body, headers=headers)
    assert "Accept" in response.headers.getall("Vary", []), response.headers
    return response.status, response.content_type, await response.json(content_type=None)


REQUEST_ERRORS = {
    "parse": {"query": "{ kpis { slug "},
    "validation": {"query": "{ kpis { noSuchField } }"},
    "variable-coercion": {
        "query": "query ($s: String!) { kpi(slug: $s) { slug } }",
        "variables": {"s": 5},
    },
}


@pytest.mark.parametrize("name", ["parse", "validation", "variable-coercion"])
async def test_a_request_error_is_400_without_data_for_graphql_response_json(
    client: TestClient, name: str
) -> None:
    status, media, body = await post(client, REQUEST_ERRORS[name])
    assert (status, media) == (400, GRAPHQL_RESPONSE)
    assert "data" not in body
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
    # Legacy clients keep 200, also without data, and the same errors.
    status, media, legacy = await post(client, REQUEST_ERRORS[name], accept="application/json")
    assert (status, media) == (200, "application/json")
    assert "data" not in legacy and legacy["errors"] == body["errors"]


# Every other refusal made before execution starts: limits, operation names, the list limit.
MORE_REQUEST_ERRORS = {
    "depth": {"query": '{ incident(id: "INC-1") { ' + "kpis { incident { " * 6 + "id" + " } }" * 7},
    "tokens": {"query": "{ kpis { " + "slug " * 1001 + "} }"},
    "aliases": {"query": "{ " + " ".join(f"a{i}: viewer {{ subject }}" for i in range(16)) + " }"},
    "list-items": {
        "query": 'query ($s: [String!]) { incident(id: "INC-1") { kpis(slugs: $s) { value } } }',
        "variables": {"s": ["mttr"] * 101},
    },
    "unknown-operation": {"query": "query A { viewer { subject } }", "operationName": "B"},
    "several-operations": {"query": "query A { viewer { subject } } query B { kpis { slug } }"},
    "bad-operation-name": {"query": "{ viewer { subject } }", "operationName": "not a name"},
    "subscription": {"query": "subscription { kpis { slug } }"},
}


@pytest.mark.parametrize("name", sorted(set(REQUEST_ERRORS) | set(MORE_REQUEST_ERRORS)))
@pytest.mark.parametrize("accept", [GRAPHQL_RESPONSE, "application/json", None])
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_no_request_error_carries_data_in_either_media_type(
    client: TestClient, name: str, accept: str | None, method: str
) -> None:
    request = {**REQUEST_ERRORS, **MORE_REQUEST_ERRORS}[name]
    headers = {"Authorization": f"Bearer {make_token('exec')}"}
    if accept is not None:
        headers["Accept"] = accept
    if method == "POST":
        response = await client.post("/graphql", json=request, headers=headers)
    else:
        params = {k: json.dumps(v) if k == "variables" else v for k, v in request.items()}
        response = await client.get("/graphql", params=params, headers=headers)
    body = await response.json(content_type=None)
    assert "data" not in body, body
    assert body["errors"], body
    assert {e["extensions"]["code"] for e in body["errors"]} == {"BAD_USER_INPUT"}, body
    assert all("path" not in e for e in body["errors"])
    assert response.status >= 400 if accept == GRAPHQL_RESPONSE else response.status < 500


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("{ kpis { slug } }", id="compiled-plan"),
        pytest.param("{ kpis { slug } __schema { queryType { name } } }", id="executor"),
    ],
)
async def test_an_answer_is_200_with_data_in_either_media_type(
    client: TestClient, query: str
) -> None:
    for accept in (GRAPHQL_RESPONSE, "application/json", None):
        status, media, body = await post(client, {"query": query}, accept=accept)
        assert status == 200
        assert media == (GRAPHQL_RESPONSE if accept == GRAPHQL_RESPONSE else "application/json")
        assert "errors" not in body and body["data"]["kpis"]


async def test_a_field_error_stays_200_with_data_for_graphql_response_json(
    client: TestClient,
) -> None:
    window = 'from: "2026-02-01T00:00:00Z", to: "2026-01-01T00:00:00Z"'
    query = f'{{ kpis {{ slug }} kpi(slug: "mttr") {{ summary({window}) {{ count }} }} }}'
    status, media, body = await post(client, {"query": query})
    assert (status, media) == (200, GRAPHQL_RESPONSE)
    assert "data" in body and body["errors"][0]["path"]


@pytest.mark.parametrize("extensions", ["a string", 5, True, ["a", "list"]])
async def test_extensions_that_are_no_object_are_400_in_both_media_types(
    client: TestClient, extensions: Any
) -> None:
    for accept in (GRAPHQL_RESPONSE, "application/json"):
        status, _, body = await post(
            client, {"query": "{ kpis { slug } }", "extensions": extensions}, accept=accept
        )
        assert status == 400
        assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
