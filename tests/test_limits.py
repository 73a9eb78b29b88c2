"""Query limits: depth, aliases, tokens, cost, body size, batching, time, introspection."""

from __future__ import annotations

import io
import json
import re

import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.config import Settings
from server.tables import Incident
from tests.conftest import ENV, codes, gql, make_token

SUGGESTION = re.compile("did you mean", re.IGNORECASE)

pytestmark = pytest.mark.security


# Depth counts the levels below the root field (Strawberry's convention): ten levels pass.
TEN_LEVELS_BELOW_ROOT = (
    "{ incidents(first: 1) { edges { node { kpis { incident { kpis { incident { kpis { kpi { "
    "summary { count } } } } } } } } } } }"
)
ELEVEN_LEVELS_BELOW_ROOT = TEN_LEVELS_BELOW_ROOT.replace(
    "summary { count }", "summary { target { severity } }"
)


async def test_a_query_ten_levels_below_its_root_field_runs(client) -> None:
    body = await gql(client, TEN_LEVELS_BELOW_ROOT, persona="responder")
    assert "errors" not in body, body


async def test_a_query_eleven_levels_deep_is_refused_before_it_runs(client, sql_statements) -> None:
    body = await gql(client, ELEVEN_LEVELS_BELOW_ROOT, persona="responder")
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "maximum operation depth of 10" in body["errors"][0]["message"]
    assert sql_statements.count == 0


def aliased(count: int, *, through_fragment: bool = False) -> str:
    fields = " ".join(f"a{n}: slug" for n in range(count))
    if through_fragment:
        return "{ kpis { ...F } } fragment F on KpiDefinition { " + fields + " }"
    return "{ kpis { " + fields + " } }"


@pytest.mark.parametrize("through_fragment", [False, True], ids=["inline", "fragment"])
async def test_fifteen_aliases_run_and_sixteen_are_refused(client, through_fragment) -> None:
    assert "errors" not in await gql(client, aliased(15, through_fragment=through_fragment))
    body = await gql(client, aliased(16, through_fragment=through_fragment))
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "aliases" in body["errors"][0]["message"]


async def test_more_than_a_thousand_tokens_is_refused(client) -> None:
    query = "{ kpis { " + " ".join(["slug"] * 1001) + " } }"
    body = await gql(client, query)
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "token" in body["errors"][0]["message"].lower()


async def test_an_expensive_query_is_refused_before_any_sql(client, sql_statements) -> None:
    query = (
        "{ incidents(first: 100) { edges { node { kpis { kpi { revisions { changes { field } } } "
        "} } } } }"
    )
    body = await gql(client, query)
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "too expensive" in body["errors"][0]["message"]
    assert sql_statements.count == 0


async def test_a_page_of_a_hundred_scorecard_rows_is_within_the_cost_cap(client) -> None:
    query = (
        "{ incidents(first: 100) { totalCount edges { cursor node { id title severity "
        "kpis { value timestamp meetsTarget kpi { slug name units } } } } } }"
    )
    assert "errors" not in await gql(client, query)


async def test_a_body_over_one_mebibyte_is_413_with_a_code_and_writes_nothing(client) -> None:
    payload = {
        "query": 'mutation ($t: String!) { upsertIncident(input: {id: "INC-1", title: $t, '
        'severity: P1, detectedAt: "2026-01-01T00:00:00Z"}) { id } }',
        "variables": {"t": "x" * (1024 * 1024)},
    }
    response = await client.post(
        "/graphql",
        data=io.BytesIO(json.dumps(payload).encode()),
        headers={
            "Authorization": f"Bearer {make_token('ingest')}",
            "Content-Type": "application/json",
        },
    )
    assert response.status == 413
    assert (await response.json())["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert await Incident.count() == 0


async def test_batched_requests_are_refused(client) -> None:
    response = await client.post(
        "/graphql",
        json=[{"query": "{ kpis { slug } }"}, {"query": "{ kpis { slug } }"}],
        headers={"Authorization": f"Bearer {make_token('admin')}"},
    )
    assert response.status == 400
    assert "mttr" not in await response.text()


async def test_a_request_past_its_time_limit_gets_a_timeout_code() -> None:
    settings = Settings.from_env({**ENV, "MIM_REQUEST_TIMEOUT": "0.000001"})
    async with TestClient(TestServer(create_app(settings))) as slow:
        response = await slow.post(
            "/graphql",
            json={"query": "{ kpis { slug summary { count } } }"},
            headers={"Authorization": f"Bearer {make_token('admin')}"},
        )
        assert response.status == 503
        body = await response.json()
    assert body["errors"][0]["extensions"]["code"] == "TIMEOUT"
    assert "mttr" not in str(body)


async def test_introspection_is_on_by_default(client) -> None:
    body = await gql(client, "{ __schema { queryType { name } } }")
    assert body["data"]["__schema"]["queryType"]["name"] == "Query"


@pytest.fixture
async def production() -> TestClient:
    settings = Settings.from_env({**ENV, "MIM_INTROSPECTION": "0", "MIM_GRAPHIQL": "0"})
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


async def test_introspection_can_be_turned_off(production) -> None:
    body = await gql(production, "{ __schema { types { name } } }")
    assert codes(body) and set(codes(body)) == {"BAD_USER_INPUT"}
    assert "Query" not in str(body.get("data"))


async def test_graphiql_can_be_turned_off(production) -> None:
    response = await production.get("/graphql", headers={"Accept": "text/html"})
    assert response.status in (401, 404)
    assert "graphiql" not in (await response.text()).lower()


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("{ kpis { slg } }", id="field"),
        pytest.param("{ kpis(visibilty: EXEC) { slug } }", id="argument"),
        pytest.param("{ kpis(visibility: EXE) { slug } }", id="enum-value"),
        pytest.param(
            'mutation { recordAlert(input: {incidentId: "I", issueTim: "2026-01-01T00:00:00Z"}) '
            "{ id } }",
            id="input-field",
        ),
        pytest.param("query ($v: Visibilty) { kpis(visibility: $v) { slug } }", id="type"),
        pytest.param("{ kpis { ... on KpiDefinitio { slug } } }", id="fragment-type"),
    ],
)
async def test_without_introspection_no_error_suggests_a_name(production, client, query) -> None:
    hidden = await gql(production, query)
    assert codes(hidden) and set(codes(hidden)) == {"BAD_USER_INPUT"}
    assert not SUGGESTION.search(str(hidden)), hidden
    shown = await gql(client, query)
    assert codes(shown)  # the same mistake is an error with introspection on too


async def test_a_variable_default_does_not_lower_the_cost_estimate(client, sql_statements) -> None:
    query = (
        "query ($f: Int = 1) { incidents(first: $f) { edges { node { kpis { kpi { revisions { "
        "changes { field } } } } } } } }"
    )
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": {"f": 100}},
        headers={"Authorization": f"Bearer {make_token('exec')}"},
    )
    body = await response.json()
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "too expensive" in body["errors"][0]["message"]
    assert sql_statements.count == 0
