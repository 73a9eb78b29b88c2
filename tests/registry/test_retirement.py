"""Retirement: a retired KPI keeps its history, answers by slug, leaves the lists, is computed
no more and takes no new observations; reactivation is an explicit change back, recomputed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from registry.tables import KpiDefinition, KpiObservation, KpiRevision
from server.app import create_app
from server.config import Settings
from tests.conftest import EXEC_ONLY, PERSONAS, codes, gql, make_token
from tests.registry.test_compute import RECORD, at, incident, iso, stored

RETIRE = """
mutation ($slug: String!, $note: String) {
  retireKpiDefinition(slug: $slug, note: $note) { slug status version }
}
"""
REACTIVATE = """
mutation ($slug: String!, $note: String) {
  reactivateKpiDefinition(slug: $slug, note: $note) { slug status version }
}
"""
LIST = "query ($all: Boolean) { kpis(includeRetired: $all) { slug status } }"
LIST_DEFAULT = "{ kpis { slug status } }"
ONE = """
query ($slug: String!) {
  kpi(slug: $slug) {
    slug status version
    revisions { version changedBy note changes { field before after } }
  }
}
"""
RECORD_MANY = """
mutation ($inputs: [RecordObservationInput!]!) { recordObservations(inputs: $inputs) { value } }
"""
BACKFILL = "mutation ($slug: String!) { backfillKpi(slug: $slug) { observationsWritten } }"


async def retire(client: Any, slug: str, note: str = "replaced") -> dict[str, Any]:
    body = await gql(
        client, RETIRE, {"slug": slug, "note": note}, token=make_token("admin", sub="ops")
    )
    assert "errors" not in body, body
    retired: dict[str, Any] = body["data"]["retireKpiDefinition"]
    return retired


async def slugs(client: Any, persona: str, *, all_: bool | None = None) -> list[str]:
    query, variables = (LIST_DEFAULT, None) if all_ is None else (LIST, {"all": all_})
    body = await gql(client, query, variables, persona=persona)
    assert "errors" not in body, body
    return [k["slug"] for k in body["data"]["kpis"]]


async def test_retiring_records_a_revision_with_the_note_and_the_token_subject(client) -> None:
    retired = await retire(client, "mttr", note="superseded by mttr-v2")
    assert retired == {"slug": "mttr", "status": "RETIRED", "version": 3}
    kpi = (await gql(client, ONE, {"slug": "mttr"}))["data"]["kpi"]
    latest = kpi["revisions"][0]
    assert latest == {
        "version": 3,
        "changedBy": "ops",
        "note": "superseded by mttr-v2",
        "changes": [{"field": "status", "before": '"active"', "after": '"retired"'}],
    }
    # Retiring again changes nothing.
    assert (await retire(client, "mttr"))["version"] == 3
    assert await KpiRevision.count().where(KpiRevision.kpi == "mttr") == 3


@pytest.mark.parametrize("persona", [p for p in PERSONAS if p != "admin"])
async def test_only_admins_may_retire_or_reactivate_and_a_refusal_writes_nothing(
    client, persona: str
) -> None:
    for mutation in (RETIRE, REACTIVATE):
        body = await gql(client, mutation, {"slug": "mttr"}, persona=persona)
        assert codes(body) == ["FORBIDDEN"] and body["data"] is None
    row = (
        await KpiDefinition.select(KpiDefinition.status, KpiDefinition.version)
        .where(KpiDefinition.slug == "mttr")
        .first()
    )
    assert row == {"status": "active", "version": 2}
    assert await KpiRevision.count().where(KpiRevision.kpi == "mttr") == 2


async def test_retiring_an_unknown_slug_is_bad_input_and_writes_nothing(client) -> None:
    # As updateKpiDefinition of an unknown slug (the contract's code for mutations).
    body = await gql(client, RETIRE, {"slug": "no-such-kpi"})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert await KpiRevision.count() == 8


@pytest.fixture(params=[True, False], ids=["compiled-plans", "executor"])
async def either_path(request: Any, settings: Settings) -> Any:
    app = create_app(replace(settings, fast_path=request.param))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


@pytest.mark.parametrize("persona", PERSONAS)
async def test_a_retired_kpi_leaves_the_lists_and_still_answers_by_slug(
    either_path, persona: str
) -> None:
    client = either_path
    before = await slugs(client, persona)
    await retire(client, "mttr")
    await retire(client, "mtta")  # internal
    listed = await slugs(client, persona)
    assert listed == [s for s in before if s not in ("mttr", "mtta")]
    assert await slugs(client, persona, all_=False) == listed
    everything = await slugs(client, persona, all_=True)
    assert everything == before
    if persona in EXEC_ONLY:
        assert "mtta" not in everything, "retired or not, an internal KPI stays hidden"
    kpi = (await gql(client, ONE, {"slug": "mttr"}, persona=persona))["data"]["kpi"]
    assert kpi["status"] == "RETIRED"
    hidden = (await gql(client, ONE, {"slug": "mtta"}, persona=persona))["data"]["kpi"]
    assert (hidden is None) is (persona in EXEC_ONLY)


async def test_the_rest_mirror_lists_retired_kpis_only_when_asked(client) -> None:
    await retire(client, "mttr")
    headers = {"Authorization": f"Bearer {make_token('exec')}"}

    async def listed(query: str = "") -> list[str]:
        response = await client.get(f"/kpis{query}", headers=headers)
        assert response.status == 200, await response.text()
        return [k["slug"] for k in (await response.json())["kpis"]]

    assert "mttr" not in await listed()
    assert "mttr" not in await listed("?includeRetired=false")
    assert "mttr" in await listed("?includeRetired=true")
    one = await client.get("/kpis/mttr", headers=headers)
    assert one.status == 200 and (await one.json())["kpi"]["status"] == "RETIRED"
    for bad in (
        "?includeRetired=yes",
        "?includeRetired=TRUE",
        "?includeRetired=true&includeRetired=true",
    ):
        refused = await client.get(f"/kpis{bad}", headers=headers)
        assert refused.status == 400, bad
        assert (await refused.json())["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_a_retired_kpi_refuses_new_observations_and_the_batch_writes_nothing(client) -> None:
    await incident(client, "INC-1", at(9))
    await retire(client, "stakeholder-satisfaction")
    before = await stored()
    one = {
        "kpiSlug": "stakeholder-satisfaction",
        "incidentId": "INC-1",
        "timestamp": iso(at(10)),
        "value": 4.0,
        "source": "survey",
    }
    body = await gql(client, RECORD, {"input": one}, persona="ingest")
    assert codes(body) == ["BAD_USER_INPUT"] and "retired" in body["errors"][0]["message"]
    active = {**one, "kpiSlug": "mttr", "value": 30.0, "source": "manual"}
    body = await gql(client, RECORD_MANY, {"inputs": [active, one]}, persona="ingest")
    assert codes(body) == ["BAD_USER_INPUT"] and body["data"] is None
    assert await stored() == before


async def test_a_retired_kpi_keeps_its_observations_and_is_computed_no_more(client) -> None:
    await incident(client, "INC-1", at(9), at(10))
    assert [r[0:4] for r in await stored("mttr")] == [("mttr", "INC-1", at(10), 60.0)]
    await retire(client, "mttr")
    # History stays; a new incident and a moved resolution compute the active KPIs only.
    await incident(client, "INC-2", at(9, day=1), at(11, day=1))
    await incident(client, "INC-1", at(9), at(10))
    assert [r[0:4] for r in await stored("mttr")] == [("mttr", "INC-1", at(10), 60.0)]
    body = await gql(client, BACKFILL, {"slug": "mttr"})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert [r[0:4] for r in await stored("mttr")] == [("mttr", "INC-1", at(10), 60.0)]


async def test_reactivation_is_a_revision_and_computes_what_arrived_meanwhile(client) -> None:
    await incident(client, "INC-1", at(9), at(10))
    await retire(client, "mttr")
    await incident(client, "INC-2", at(9, day=1), at(11, day=1))
    body = await gql(
        client,
        REACTIVATE,
        {"slug": "mttr", "note": "back in use"},
        token=make_token("admin", sub="ops"),
    )
    assert body["data"]["reactivateKpiDefinition"] == {
        "slug": "mttr",
        "status": "ACTIVE",
        "version": 4,
    }
    kpi = (await gql(client, ONE, {"slug": "mttr"}))["data"]["kpi"]
    assert kpi["revisions"][0]["changes"] == [
        {"field": "status", "before": '"retired"', "after": '"active"'}
    ]
    assert kpi["revisions"][0]["note"] == "back in use"
    found = sorted(r[0:4] for r in await stored("mttr"))
    assert found == [("mttr", "INC-1", at(10), 60.0), ("mttr", "INC-2", at(11, day=1), 120.0)]
    assert "mttr" in await slugs(client, "exec")
    assert await KpiObservation.count().where(KpiObservation.kpi == "mttr") == 2
