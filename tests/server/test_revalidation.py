"""Revalidation: GET answers carry a strong ETag, and If-None-Match with the current one is a 304.

Checked over real HTTP, per persona, before and after each kind of write, on GraphQL GET and the
REST mirror, across two apps on one database (two workers), and against the clock where answers
read it (reviewOverdue). A 304 runs no query: only the generation is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from server import revalidation
from server.app import create_app
from server.config import Settings
from tests.conftest import PERSONAS, StatementCounter, gql, make_token

DASHBOARD = "{ kpis { slug summary(severity: P1) { count value meetsTarget asOf } } }"
REVIEWS = "{ kpis { slug reviewOverdue } }"
UPSERT = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id } }"
RECORD = """mutation ($inputs: [RecordObservationInput!]!) {
  recordObservations(inputs: $inputs) { value } }"""
UPDATE = """mutation ($slug: String!, $input: UpdateKpiDefinitionInput!) {
  updateKpiDefinition(slug: $slug, input: $input) { version } }"""
REVIEWED = 'mutation { markKpiReviewed(slug: "mtta") { version } }'
HEADERS = ("ETag", "Cache-Control", "Vary")


def varies(response: Any) -> set[str]:
    """Return every name the answer's Vary headers give."""
    return {n.strip() for h in response.headers.getall("Vary", []) for n in h.split(",")}


def auth(persona: str = "exec", **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(persona)}", **extra}


async def get(
    client: TestClient, query: str = DASHBOARD, persona: str = "exec", tag: str | None = None
) -> Any:
    headers = auth(persona) if tag is None else auth(persona, **{"If-None-Match": tag})
    return await client.get("/graphql", params={"query": query}, headers=headers)


async def tag_of(client: TestClient, query: str = DASHBOARD, persona: str = "exec") -> str:
    response = await get(client, query, persona)
    assert response.status == 200, await response.text()
    assert "errors" not in await response.json()
    tag: str = response.headers["ETag"]
    return tag


async def test_a_get_answer_is_tagged_for_revalidation(client: TestClient) -> None:
    response = await get(client)
    assert response.status == 200
    tag = response.headers["ETag"]
    assert tag.startswith('"') and tag.endswith('"') and not tag.startswith("W/")
    assert response.headers["Cache-Control"] == "private, no-cache"
    # Who asks, the media type and the encoding they accept change the answer.
    assert varies(response) == {"Authorization", "Accept", "Accept-Encoding"}
    # The same question, nothing written: the same tag.
    assert await tag_of(client) == tag


async def test_if_none_match_with_the_current_tag_is_a_304_that_runs_no_query(
    client: TestClient, sql_statements: StatementCounter
) -> None:
    tag = await tag_of(client)
    before = sql_statements.count
    response = await get(client, tag=tag)
    assert response.status == 304
    assert await response.read() == b""
    assert response.headers["ETag"] == tag
    assert response.headers["Cache-Control"] == "private, no-cache"
    assert varies(response) == {"Authorization", "Accept", "Accept-Encoding"}
    issued = sql_statements.statements[before:]
    assert len(issued) == 1, issued  # the generation, nothing else
    assert not any(t in issued[0] for t in ("kpi_definition", "kpi_observation", "kpi_rollup"))
    # A list naming it, or a weak form of it, matches too; another tag does not.
    for header in (f'"nope", {tag}', f"W/{tag}", "*"):
        assert (await get(client, tag=header)).status == 304, header
    stale = await get(client, tag='"0123"')
    assert stale.status == 200 and stale.headers["ETag"] == tag


@pytest.mark.parametrize(
    ("write", "persona", "query", "variables"),
    [
        (
            "an observation",
            "ingest",
            RECORD,
            {
                "inputs": [
                    {
                        "kpiSlug": "mttr",
                        "incidentId": "INC-REVAL",
                        "timestamp": "2026-03-02T10:00:00Z",
                        "value": 12.5,
                        "source": "import",
                    }
                ]
            },
        ),
        ("a definition", "admin", UPDATE, {"slug": "mttr", "input": {"name": "Mean time"}}),
        ("a review", "admin", REVIEWED, {}),
        (
            "an incident",
            "ingest",
            UPSERT,
            {"input": {"id": "INC-REVAL", "title": "Again", "severity": "P2",
                       "detectedAt": "2026-03-02T08:00:00Z"}},
        ),
    ],
)  # fmt: skip
async def test_every_kind_of_write_changes_every_personas_tag(
    client: TestClient, write: str, persona: str, query: str, variables: dict[str, Any]
) -> None:
    incident = {
        "id": "INC-REVAL",
        "title": "Revalidated",
        "severity": "P1",
        "detectedAt": "2026-03-02T08:00:00Z",
    }
    assert "errors" not in await gql(client, UPSERT, {"input": incident}, persona="ingest")
    before = {p: await tag_of(client, persona=p) for p in PERSONAS}
    answers = {p: await (await get(client, persona=p)).json() for p in PERSONAS}
    body = await gql(client, query, variables, persona=persona)
    assert "errors" not in body, body
    for p in PERSONAS:
        response = await get(client, persona=p, tag=before[p])
        assert response.status == 200, (write, p)
        assert response.headers["ETag"] != before[p]
        if write == "an observation" and p != "ingest":
            # The answer moved too (a P1 observation of mttr): the 304 would have been stale.
            assert await response.json() != answers[p]


async def test_callers_who_may_see_different_answers_get_different_tags(
    client: TestClient,
) -> None:
    tags = {p: await tag_of(client, persona=p) for p in PERSONAS}
    assert len(set(tags.values())) == len(PERSONAS)
    # Another caller's tag is no good: an exec sending an admin's tag gets the exec answer.
    response = await get(client, persona="exec", tag=tags["admin"])
    assert response.status == 200
    slugs = {k["slug"] for k in (await response.json())["data"]["kpis"]}
    assert "mtta" not in slugs  # internal
    # The subject counts too (`viewer { subject }` differs), and so does the question.
    other = await client.get(
        "/graphql",
        params={"query": DASHBOARD},
        headers={"Authorization": f"Bearer {make_token('exec', sub='someone-else')}"},
    )
    assert other.headers["ETag"] != tags["exec"]
    assert await tag_of(client, REVIEWS) != tags["exec"]


async def test_posts_and_mutations_are_never_cacheable(client: TestClient) -> None:
    tag = await tag_of(client)
    response = await client.post(
        "/graphql", json={"query": DASHBOARD}, headers=auth(**{"If-None-Match": tag})
    )
    assert response.status == 200
    assert "ETag" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"
    mutation = await client.get("/graphql", params={"query": REVIEWED}, headers=auth("admin"))
    assert mutation.status != 200 or "errors" in await mutation.json()
    assert "ETag" not in mutation.headers
    assert mutation.headers["Cache-Control"] == "no-store"


async def test_answers_with_errors_are_not_tagged(client: TestClient) -> None:
    bad = '{ kpis { series(bucket: DAY, from: "2026-03-02T00:00:00Z", to: "2026-03-01T00:00:00Z") { count } } }'  # noqa: E501
    response = await get(client, bad)
    assert response.status == 200 and "errors" in await response.json()
    assert "ETag" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/kpis", "/kpis/mttr", "/incidents/INC-REVAL/kpis"])
async def test_the_rest_mirror_revalidates_too(client: TestClient, path: str) -> None:
    incident = {
        "id": "INC-REVAL",
        "title": "Revalidated",
        "severity": "P1",
        "detectedAt": "2026-03-02T08:00:00Z",
        "resolvedAt": "2026-03-02T09:00:00Z",
    }
    assert "errors" not in await gql(client, UPSERT, {"input": incident}, persona="ingest")
    first = await client.get(path, headers=auth())
    assert first.status == 200
    tag = first.headers["ETag"]
    assert [first.headers[h] for h in HEADERS[1:]] == ["private, no-cache", "Authorization"]
    again = await client.get(path, headers=auth(**{"If-None-Match": tag}))
    assert again.status == 304 and await again.read() == b""
    await gql(client, UPDATE, {"slug": "mttr", "input": {"owner": "Someone else"}})
    moved = await client.get(path, headers=auth(**{"If-None-Match": tag}))
    assert moved.status == 200 and moved.headers["ETag"] != tag
    missing = await client.get("/kpis/mtta", headers=auth())  # internal: 404 for an exec
    assert missing.status == 404 and "ETag" not in missing.headers


@pytest.fixture
async def second_worker(settings: Settings) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(settings))) as other:
        yield other


async def test_two_workers_give_the_same_tags(
    client: TestClient, second_worker: TestClient
) -> None:
    for persona in PERSONAS:
        tag = await tag_of(client, persona=persona)
        assert await tag_of(second_worker, persona=persona) == tag
        response = await get(second_worker, persona=persona, tag=tag)
        assert response.status == 304
    # A write through one worker moves the other's tag.
    before = await tag_of(second_worker)
    await gql(client, UPDATE, {"slug": "mttr", "input": {"owner": "Worker one"}})
    assert (await get(second_worker, tag=before)).status == 200


class _Later(datetime):
    """`datetime.now` a few days ahead, for the revalidator's clock."""

    shift = timedelta(0)

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + cls.shift


async def test_a_review_falling_due_changes_the_tag_of_those_who_can_see_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mtta (internal) reviewed now: due again after its cadence; cadence-adherence (exec) too.
    for slug, cadence in (("mtta", "P1D"), ("cadence-adherence", "P30D")):
        update = {"slug": slug, "input": {"reviewCadence": cadence}}
        assert "errors" not in await gql(client, UPDATE, update)
        body = await gql(client, f'mutation {{ markKpiReviewed(slug: "{slug}") {{ version }} }}')
        assert "errors" not in body
    now = {p: await tag_of(client, REVIEWS, p) for p in ("exec", "responder")}
    monkeypatch.setattr(revalidation, "datetime", _Later)
    _Later.shift = timedelta(days=2)  # mtta is overdue: responders see it, execs do not
    assert await tag_of(client, REVIEWS, "exec") == now["exec"]
    later = await get(client, REVIEWS, "responder", tag=now["responder"])
    assert later.status == 200
    _Later.shift = timedelta(days=31)  # cadence-adherence too: everyone sees that one
    assert (await get(client, REVIEWS, "exec", tag=now["exec"])).status == 200


@pytest.mark.parametrize("path", ["/kpis/zz-no-such-kpi", "/kpis/mtta"])
async def test_if_none_match_star_never_hides_a_missing_or_hidden_answer(
    client: TestClient, path: str
) -> None:
    """`*` matches only an answer that exists (RFC 9110 13.1.2): an unknown KPI, or one the
    exec may not see, stays the 404 it is; a persona-less token stays refused."""
    response = await client.get(path, headers=auth("exec", **{"If-None-Match": "*"}))
    assert response.status == 404
    found = await client.get("/kpis/mttr", headers=auth("exec", **{"If-None-Match": "*"}))
    assert found.status == 304 and found.headers["ETag"]
    nobody = await client.get("/kpis/mttr", headers=auth("nobody", **{"If-None-Match": "*"}))
    assert nobody.status == 403
