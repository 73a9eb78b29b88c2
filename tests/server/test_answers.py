"""Kept answers (server/answers.py): a read the compiled plans answer is kept until anything it
depends on changes; a repeat costs one statement (the generation) and gives the same bytes.

Checked over real HTTP: the repeat runs no query; every kind of write, in this worker or another,
gives the next request a fresh answer; callers who may see different answers never share one;
the clock counts where the answer reads it; MIM_ANSWER_CACHE=0 keeps nothing.
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
from tests.conftest import ENV, PERSONAS, StatementCounter, gql, make_token

DASHBOARD = "{ kpis { slug name summary(severity: P1) { count value meetsTarget asOf } } }"
REVIEWS = "{ kpis { slug reviewOverdue } }"
UPSERT = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id } }"
UPDATE = """mutation ($slug: String!, $input: UpdateKpiDefinitionInput!) {
  updateKpiDefinition(slug: $slug, input: $input) { version } }"""


async def ask(
    client: TestClient, query: str = DASHBOARD, persona: str = "exec", **variables: Any
) -> bytes:
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {make_token(persona, sub=f'{persona}-1')}"},
    )
    assert response.status == 200
    body = await response.read()
    assert b'"errors"' not in body, body
    return body


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env({**ENV, "MIM_ANSWER_CACHE": "1"})


@pytest.fixture
async def second_worker(settings: Settings) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(settings))) as other:
        yield other


async def test_a_repeat_is_the_same_answer_for_one_statement(
    client: TestClient, sql_statements: StatementCounter
) -> None:
    first = await ask(client)
    before = sql_statements.count
    assert await ask(client) == first
    assert sql_statements.count - before == 1  # the data generation, nothing else
    assert "mim_generation" in sql_statements.statements[-1]


async def test_every_write_gives_the_next_request_a_fresh_answer(
    client: TestClient, second_worker: TestClient
) -> None:
    before = await ask(client)
    await gql(client, UPDATE, {"slug": "mttr", "input": {"name": "Resolve, renamed"}})
    after = await ask(client)
    assert b"Resolve, renamed" in after and after != before
    # A write through another worker, on the same database, too.
    kept = await ask(client)
    incident = {
        "id": "INC-KEPT-1",
        "title": "t",
        "severity": "P1",
        "detectedAt": "2026-01-01T00:00:00Z",
        "resolvedAt": "2026-01-01T02:00:00Z",
    }
    assert "errors" not in await gql(second_worker, UPSERT, {"input": incident}, persona="ingest")
    fresh = await ask(client)
    assert fresh != kept and b'"count":1' in fresh  # mttr computed for the new P1 incident


@pytest.mark.parametrize("first", PERSONAS)
async def test_callers_who_may_see_different_answers_never_share_one(
    client: TestClient, first: str
) -> None:
    """Whoever asks first, each persona gets exactly the answer it gets alone."""
    await ask(client, persona=first)
    answers = {persona: await ask(client, persona=persona) for persona in PERSONAS}
    for persona in ("exec", "stakeholder"):
        assert b"mtta" not in answers[persona]
    for persona in ("responder", "ingest", "admin"):
        assert b"mtta" in answers[persona]
    viewer = "{ viewer { subject personas } }"
    assert b"exec-1" in await ask(client, viewer, "exec")
    assert b"admin-1" in await ask(client, viewer, "admin")


async def test_variables_and_operations_are_part_of_the_key(client: TestClient) -> None:
    query = "query($s: String!) { kpi(slug: $s) { slug } } query Other { kpis { slug } }"
    mttr = await client.post(
        "/graphql",
        json={"query": query, "variables": {"s": "mttr"}, "operationName": None},
        headers={"Authorization": f"Bearer {make_token('admin')}"},
    )
    assert mttr.status in (200, 400)  # two operations and no name: refused, never kept
    single = "query($s: String!) { kpi(slug: $s) { slug } }"
    assert b'"mttr"' in await ask(client, single, "admin", s="mttr")
    assert b'"mtta"' in await ask(client, single, "admin", s="mtta")
    assert b'"mttr"' in await ask(client, single, "admin", s="mttr")


class _Later(datetime):
    shift = timedelta(0)

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + cls.shift


async def test_a_review_falling_due_is_never_answered_from_a_kept_answer(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, sql_statements: StatementCounter
) -> None:
    update = {"slug": "mttr", "input": {"reviewCadence": "P1D"}}
    assert "errors" not in await gql(client, UPDATE, update)
    assert "errors" not in await gql(
        client, 'mutation { markKpiReviewed(slug: "mttr") { version } }'
    )
    await ask(client, REVIEWS)
    before = sql_statements.count
    await ask(client, REVIEWS)
    assert sql_statements.count - before == 1  # kept
    monkeypatch.setattr(revalidation, "datetime", _Later)
    _Later.shift = timedelta(days=2)  # mttr's review is due: the kept answer no longer stands
    before = sql_statements.count
    await ask(client, REVIEWS)
    assert sql_statements.count - before >= 2  # answered afresh (the definitions read again)


async def test_mutations_and_executor_answers_are_never_kept(
    client: TestClient, sql_statements: StatementCounter
) -> None:
    query = '{ kpi(slug: "mttr") { revisions { version } } }'  # revisions: not in a plan
    await ask(client, query, "admin")
    before = sql_statements.count
    await ask(client, query, "admin")
    assert sql_statements.count - before > 1
    mutation = 'mutation { markKpiReviewed(slug: "mttr") { version } }'
    first = await gql(client, mutation)
    second = await gql(client, mutation)
    assert (
        first["data"]["markKpiReviewed"]["version"] + 1
        == (second["data"]["markKpiReviewed"]["version"])
    )


async def test_answer_cache_off_keeps_nothing(sql_statements: StatementCounter) -> None:
    settings = Settings.from_env({**ENV, "MIM_ANSWER_CACHE": "0"})
    async with TestClient(TestServer(create_app(settings))) as client:
        first = await ask(client)
        before = sql_statements.count
        assert await ask(client) == first
        assert sql_statements.count - before > 1
