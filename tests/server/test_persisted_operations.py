"""Persisted queries (Apollo's protocol), trusted operations and the operations the project ships.

Real app over aiohttp's test server, real tokens, the real store (a table of the test database).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import graphql
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from registry import persisted
from registry.model import Persona
from registry.tables import Incident, PersistedQuery
from schema.limits import request_refusal
from schema.operations import SHIPPED
from server.app import create_app
from server.config import ConfigError, Settings
from tests.conftest import ENV, make_token

ROOT = Path(__file__).resolve().parents[2]
KPIS = "{ kpis { slug name } }"
FROM, TO = "2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z"
INCIDENT = {"id": "INC-OPS", "title": "t", "severity": "P1", "detectedAt": "2026-02-01T00:00:00Z"}
# Each shipped operation: the persona that runs it, and its variables.
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "ExecDashboard": ("exec", {}),
    "StakeholderReport": ("stakeholder", {"from": FROM, "to": TO}),
    "KpiList": ("stakeholder", {}),
    "KpiTrend": ("exec", {"slug": "mttr", "bucket": "WEEK", "from": FROM, "to": TO}),
    "KpiDefinitionAsOf": ("exec", {"slug": "mttr", "asOf": "2030-01-01T00:00:00Z"}),
    "ResponderReadiness": ("responder", {}),
    "IncidentScorecard": ("responder", {"id": "INC-OPS"}),
    "UpsertIncident": ("ingest", {"input": INCIDENT}),
    "RecordObservations": (
        "ingest",
        {
            "inputs": [
                {
                    "kpiSlug": "mttr",
                    "incidentId": "INC-OPS",
                    "timestamp": TO,
                    "value": 5.0,
                    "source": "manual",
                }
            ]
        },
    ),
    "CreateKpiDefinition": (
        "admin",
        {
            "input": {
                "slug": "ops-probe",
                "name": "n",
                "description": "d",
                "formula": "f",
                "units": "u",
                "visibility": "EXEC",
                "owner": "o",
                "reviewCadence": "P30D",
            }
        },
    ),
    "UpdateKpiDefinition": ("admin", {"slug": "mttr", "input": {"owner": "Ops"}, "note": "n"}),
    "RetireKpiDefinition": ("admin", {"slug": "mtta", "note": "n"}),
    "ApplyKpiDefinitions": ("admin", {"document": "kpis: []\n", "dryRun": True}),
}


def bearer(persona: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(persona)}"}


def hashed(document: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": persisted.digest(document)}}


async def post(
    client: TestClient, body: dict[str, Any], persona: str = "exec"
) -> tuple[int, dict[str, Any]]:
    response = await client.post("/graphql", json=body, headers=bearer(persona))
    return response.status, await response.json()


def codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors", [])]


# --- the shipped operations --------------------------------------------------------------------


def test_every_view_the_readme_names_has_a_shipped_operation() -> None:
    assert set(RUNS) == set(SHIPPED), "each shipped operation is run below as its persona"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_operation_is_valid_against_the_schema_file_and_within_the_limits(
    name: str,
) -> None:
    schema = graphql.build_schema((ROOT / "schema.graphql").read_text())
    document = graphql.parse(SHIPPED[name])
    assert graphql.validate(schema, document) == []
    [operation] = [
        d for d in document.definitions if isinstance(d, graphql.OperationDefinitionNode)
    ]
    assert operation.name is not None and operation.name.value == name, "the file is named for it"
    assert request_refusal(SHIPPED[name], name, RUNS[name][1]) is None


@pytest.mark.parametrize("name", sorted(SHIPPED))
async def test_a_shipped_operation_runs_as_its_persona(client: TestClient, name: str) -> None:
    await post(
        client, {"query": SHIPPED["UpsertIncident"], "variables": {"input": INCIDENT}}, "ingest"
    )
    persona, variables = RUNS[name]
    status, body = await post(client, {"query": SHIPPED[name], "variables": variables}, persona)
    assert status == 200 and "errors" not in body, body
    assert all(value is not None for value in body["data"].values()), body


# --- automatic persisted queries ----------------------------------------------------------------


async def test_a_hash_alone_is_not_found_then_found_once_sent_with_its_text(
    client: TestClient,
) -> None:
    status, body = await post(client, {"extensions": hashed(KPIS)})
    assert status == 200 and codes(body) == ["PERSISTED_QUERY_NOT_FOUND"]
    assert body["errors"][0]["message"] == "PersistedQueryNotFound"
    status, first = await post(client, {"query": KPIS, "extensions": hashed(KPIS)})
    assert status == 200 and "errors" not in first
    status, again = await post(client, {"extensions": hashed(KPIS)})
    assert (status, again) == (200, first)
    # The same answer as the text sent in full, without any extension.
    assert (await post(client, {"query": KPIS}))[1] == first


@pytest.mark.parametrize(
    ("extensions", "why"),
    [
        ({"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}, "sha"),
        ({"persistedQuery": {"version": 2, "sha256Hash": persisted.digest(KPIS)}}, "version"),
        ({"persistedQuery": {"version": 1, "sha256Hash": "XYZ"}}, "hex"),
        ({"persistedQuery": {"version": 1}}, "hex"),
        ({"persistedQuery": "a string"}, "version"),
    ],
)
async def test_a_wrong_hash_or_version_is_refused_and_nothing_is_stored(
    client: TestClient, extensions: dict[str, Any], why: str
) -> None:
    before = await PersistedQuery.count()
    status, body = await post(client, {"query": KPIS, "extensions": extensions})
    assert status == 400 and codes(body) == ["BAD_USER_INPUT"], body
    assert why in body["errors"][0]["message"]
    assert await PersistedQuery.count() == before
    if extensions["persistedQuery"] == {"version": 1, "sha256Hash": "0" * 64}:
        status, body = await post(client, {"extensions": extensions})
        assert codes(body) == ["PERSISTED_QUERY_NOT_FOUND"], "the mismatched text was not kept"


async def test_a_hash_alone_works_over_get_and_revalidates(client: TestClient) -> None:
    document = "{ kpis { slug units } }"
    await post(client, {"query": document, "extensions": hashed(document)})
    params = {"extensions": json.dumps(hashed(document))}
    for accept in ("*/*", "text/html", "application/json"):
        response = await client.get(
            "/graphql", params=params, headers={**bearer("exec"), "Accept": accept}
        )
        assert response.status == 200 and response.content_type == "application/json", accept
        assert "errors" not in await response.json()
    tag = response.headers["ETag"]
    same = await client.get(
        "/graphql",
        params=params,
        headers={**bearer("exec"), "If-None-Match": tag, "Accept": "application/json"},
    )
    assert same.status == 304


async def test_a_hash_without_a_token_is_refused_like_any_request(client: TestClient) -> None:
    params = {"extensions": json.dumps(hashed(KPIS))}
    response = await client.get("/graphql", params=params, headers={"Accept": "text/html"})
    assert response.status == 401


async def test_visibility_and_policy_apply_to_a_hash_as_to_its_text(client: TestClient) -> None:
    internal = '{ kpi(slug: "mtta") { slug name } }'
    for persona in ("exec", "stakeholder"):
        by_text = await post(client, {"query": internal, "extensions": hashed(internal)}, persona)
        by_hash = await post(client, {"extensions": hashed(internal)}, persona)
        assert by_hash == by_text and by_hash[1]["data"] == {"kpi": None}
    fields = 'id: "INC-X", title: "t", severity: P1, detectedAt: "2026-01-01T00:00:00Z"'
    mutation = f"mutation {{ upsertIncident(input: {{{fields}}}) {{ id }} }}"
    for body in (
        {"query": mutation, "extensions": hashed(mutation)},
        {"extensions": hashed(mutation)},
    ):
        _, answer = await post(client, body, "exec")
        assert codes(answer) == ["FORBIDDEN"]
    assert await Incident.count() == 0  # the exec's wrote nothing


async def test_a_hash_sent_by_a_caller_who_sees_internal_kpis_is_not_found_for_exec(
    client: TestClient,
) -> None:
    # Otherwise asking for a hash would tell an exec whether someone ran a document naming an
    # internal KPI. (A document of its own: the store outlives each test.)
    internal = '{ kpi(slug: "mtta") { slug name owner } }'
    for persona in ("admin", "responder"):
        status, body = await post(
            client, {"query": internal, "extensions": hashed(internal)}, persona
        )
        assert status == 200 and body["data"]["kpi"]["slug"] == "mtta"
    for persona in ("exec", "stakeholder"):
        status, body = await post(client, {"extensions": hashed(internal)}, persona)
        assert status == 200 and codes(body) == ["PERSISTED_QUERY_NOT_FOUND"], (persona, body)
    persisted._cache.clear()  # and from the table, not only this worker's memory
    for persona in ("exec", "stakeholder"):
        status, body = await post(client, {"extensions": hashed(internal)}, persona)
        assert codes(body) == ["PERSISTED_QUERY_NOT_FOUND"], (persona, body)
    # Callers who see as much find it.
    status, body = await post(client, {"extensions": hashed(internal)}, "ingest")
    assert body["data"]["kpi"]["slug"] == "mtta"


async def test_limits_apply_to_a_hash_as_to_its_text(client: TestClient) -> None:
    aliased = "{ " + " ".join(f"a{n}: kpis {{ slug }}" for n in range(60)) + " }"
    nested = ["incidents(first: 100)", "edges", "node", "kpis", "kpi", "revisions", "changes"]
    expensive = "{ " + " { ".join(nested) + " { field" + " }" * (len(nested) + 1)
    for document in (aliased, expensive):
        by_text = await post(client, {"query": document, "extensions": hashed(document)})
        by_hash = await post(client, {"extensions": hashed(document)})
        assert codes(by_text[1]) == ["BAD_USER_INPUT"], by_text
        assert by_hash == by_text


async def test_shipped_operations_run_by_hash_without_being_sent_first(client: TestClient) -> None:
    status, body = await post(client, {"extensions": hashed(SHIPPED["ExecDashboard"])})
    assert status == 200 and "errors" not in body and body["data"]["kpis"]


async def test_the_store_is_shared_by_every_worker_of_the_database(settings: Settings) -> None:
    document = "{ kpis { slug owner } }"
    async with TestClient(TestServer(create_app(settings))) as first:
        await post(first, {"query": document, "extensions": hashed(document)})
    persisted._cache.clear()  # another worker: nothing in its memory
    async with TestClient(TestServer(create_app(settings))) as second:
        status, body = await post(second, {"extensions": hashed(document)})
        assert status == 200 and "errors" not in body


async def test_the_store_keeps_the_most_recently_used_within_its_bound() -> None:
    documents = [f"{{ kpis {{ slug a{n}: name }} }}" for n in range(5)]
    for document in documents:
        await persisted.put(persisted.digest(document), document)
    persisted._cache.clear()
    assert await persisted.get(persisted.digest(documents[0])) == documents[0]  # used: kept
    await persisted.prune(keep=3)
    persisted._cache.clear()
    kept = {row["document"] for row in await PersistedQuery.select(PersistedQuery.document)}
    assert documents[0] in kept and documents[4] in kept and len(kept) == 3


# --- trusted operations -------------------------------------------------------------------------


@pytest.fixture
async def trusted(settings: Settings) -> AsyncIterator[TestClient]:
    restricted = frozenset({Persona.EXEC, Persona.STAKEHOLDER})
    app = create_app(replace(settings, trusted_personas=restricted))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_a_restricted_token_runs_shipped_operations_by_text_or_hash(
    trusted: TestClient,
) -> None:
    dashboard = SHIPPED["ExecDashboard"]
    for body in (
        {"query": dashboard},
        {"extensions": hashed(dashboard)},
        {"query": dashboard, "extensions": hashed(dashboard)},
    ):
        status, answer = await post(trusted, body, "exec")
        assert status == 200 and "errors" not in answer, answer


async def test_a_restricted_token_is_refused_any_other_document_and_it_is_counted(
    trusted: TestClient,
) -> None:
    for body in (
        {"query": KPIS},
        {"query": SHIPPED["ExecDashboard"] + " "},  # not the exact text
        {"query": KPIS, "extensions": hashed(KPIS)},
    ):
        for persona in ("exec", "stakeholder"):
            status, answer = await post(trusted, body, persona)
            assert status == 200 and codes(answer) == ["FORBIDDEN"] and "data" not in answer
    scrape = await trusted.get("/metrics", headers=bearer("admin"))
    refused = {
        sample.labels["limit"]: sample.value
        for family in text_string_to_metric_families(await scrape.text())
        for sample in family.samples
        if sample.name == "mim_requests_refused_total"
    }
    assert refused["untrusted"] == 6


@pytest.mark.parametrize("personas", [("responder",), ("admin",), ("exec", "responder")])
async def test_tokens_with_an_unrestricted_persona_run_any_document(
    trusted: TestClient, personas: tuple[str, ...]
) -> None:
    token = make_token(list(personas) if len(personas) > 1 else personas[0])
    response = await trusted.post(
        "/graphql", json={"query": KPIS}, headers={"Authorization": f"Bearer {token}"}
    )
    assert "errors" not in await response.json()


@pytest.mark.parametrize("raw", ["exec,EXEC", "execs", "exec;stakeholder"])
def test_an_unknown_persona_in_the_trusted_list_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="MIM_TRUSTED_OPERATIONS"):
        Settings.from_env({**ENV, "MIM_TRUSTED_OPERATIONS": raw})


def test_the_trusted_list_is_empty_by_default_and_read_exactly() -> None:
    assert Settings.from_env(ENV).trusted_personas == frozenset()
    found = Settings.from_env({**ENV, "MIM_TRUSTED_OPERATIONS": " exec , stakeholder "})
    assert found.trusted_personas == {Persona.EXEC, Persona.STAKEHOLDER}
