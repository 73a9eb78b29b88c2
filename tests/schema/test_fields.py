"""Fields declared once on the row (schema/fields.py) reach the executor, the compiled plans and
the REST mirror alike; reviewOverdue is the field added that way."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from registry.tables import KpiDefinition
from schema.fields import row_fields
from schema.kpis import KpiDefinitionType
from server.app import FAST_PATH
from tests.conftest import make_token

OVERDUE = '{ kpi(slug: "mttr") { slug reviewDueAt reviewOverdue visibility dataSources } }'
# `revisions` is not covered by the plans: the same fields then come from the executor.
OVERDUE_BY_EXECUTOR = (
    '{ kpi(slug: "mttr") { slug reviewDueAt reviewOverdue visibility dataSources '
    "revisions { version } } }"
)


def bearer(persona: str = "exec") -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(persona)}"}


async def post(client, query: str) -> dict:
    response = await client.post("/graphql", json={"query": query}, headers=bearer())
    assert response.status == 200
    body: dict = await response.json()
    assert "errors" not in body, body
    return body["data"]["kpi"]


async def answers(client) -> tuple[dict, dict, dict]:
    """Return mttr by the compiled plan, by the executor, and by the REST mirror."""
    served = client.app[FAST_PATH].served
    planned = await post(client, OVERDUE)
    assert client.app[FAST_PATH].served == served + 1, "the plan answered"
    executed = await post(client, OVERDUE_BY_EXECUTOR)
    assert client.app[FAST_PATH].served == served + 1, "the executor answered"
    rest = await client.get("/kpis/mttr", headers=bearer())
    return planned, executed, (await rest.json())["kpi"]


@pytest.mark.parametrize(("reviewed_years_ago", "overdue"), [(None, False), (3, True)])
async def test_review_overdue_is_the_same_on_every_path(
    client, reviewed_years_ago, overdue
) -> None:
    if reviewed_years_ago is not None:
        long_ago = datetime(datetime.now(UTC).year - reviewed_years_ago, 1, 1, tzinfo=UTC)
        await KpiDefinition.update({KpiDefinition.last_reviewed_at: long_ago}).where(
            KpiDefinition.slug == "mttr"
        )
    planned, executed, rest = await answers(client)
    executed.pop("revisions")
    assert planned == executed
    assert planned["reviewOverdue"] is overdue
    assert rest["reviewOverdue"] is overdue
    for name in ("slug", "reviewDueAt", "visibility", "dataSources"):
        assert json.dumps(rest[name]) == json.dumps(planned[name]), name


def test_every_row_field_of_a_definition_is_in_the_rest_mirror_and_the_schema() -> None:
    names = [name for name, _ in row_fields(KpiDefinitionType)]
    assert "reviewOverdue" in names and "slug" in names
    sdl = (Path(__file__).resolve().parents[2] / "schema.graphql").read_text()
    block = sdl[sdl.index("type KpiDefinition {") :]
    block = block[: block.index("}")]
    for name in names:
        assert f"  {name}:" in block, name


async def test_an_incident_and_its_observations_read_alike_by_graphql_and_rest(client) -> None:
    ingest = bearer("ingest")
    for query in (
        'mutation { upsertIncident(input: {id: "INC-7", title: "t", severity: P2, '
        'detectedAt: "2026-01-01T10:00:00Z", resolvedAt: "2026-01-01T11:30:00Z"}) { id } }',
        'mutation { recordObservation(input: {kpiSlug: "stakeholder-satisfaction", '
        'incidentId: "INC-7", timestamp: "2026-01-02T00:00:00Z", value: 4, source: "import", '
        "confidence: 0.5}) { value } }",
    ):
        response = await client.post("/graphql", json={"query": query}, headers=ingest)
        assert "errors" not in await response.json()
    response = await client.post(
        "/graphql",
        json={
            "query": '{ incident(id: "INC-7") { id title severity detectedAt resolvedAt '
            "kpis { kpi { slug } timestamp value source confidence definitionVersion } } }"
        },
        headers=bearer(),
    )
    incident = (await response.json())["data"]["incident"]
    rest = await (await client.get("/incidents/INC-7/kpis", headers=bearer())).json()
    graphql_kpis = {k["kpi"]["slug"]: k for k in incident.pop("kpis")}
    assert rest["incident"] == incident
    for observed in rest["kpis"]:
        mine = graphql_kpis[observed["kpiSlug"]]
        for name in ("timestamp", "value", "source", "confidence", "definitionVersion"):
            assert observed[name] == mine[name], name
    assert {o["kpiSlug"] for o in rest["kpis"]} == set(graphql_kpis)
