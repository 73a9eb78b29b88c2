"""Query limits: depth, aliases, tokens, cost, body size, batching, time, introspection."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer
from graphql import parse

from registry.tables import Incident, KpiDefinition
from schema.limits import estimate
from server.app import create_app
from server.config import Settings
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


@pytest.mark.parametrize(
    "page", ["first: 100", "last: 100", "last: $n", 'last: 100, before: "x"'], ids=str
)
async def test_an_expensive_query_is_refused_before_any_sql(
    client, sql_statements, page: str
) -> None:
    declared = "query ($n: Int) " if "$n" in page else ""
    query = (
        f"{declared}{{ incidents({page}) {{ edges {{ node {{ kpis {{ kpi {{ revisions {{ "
        "changes { field } } } } } } } }"
    )
    body = await gql(client, query, {"n": 100} if declared else None)
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


# --- list arguments: written in the document or sent as variables --------------------------------

PAGE_OF_KPIS = (
    "query ($s: [String!], $b: Boolean!) { incidents(first: 100) { edges { node { "
    "kpis(slugs: $s) @skip(if: $b) { value } } } } }"
)


NEW_YEAR = datetime(2026, 1, 1, tzinfo=UTC)


async def some_incidents(count: int = 3) -> None:
    await Incident.insert(
        *(
            Incident(key=f"INC-{n}", title="t", severity="P1", detected_at=NEW_YEAR)
            for n in range(count)
        )
    )


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_hundred_thousand_slugs_in_a_variable_are_refused_before_any_work(
    client, sql_statements, method
) -> None:
    # Sorted once per incident, they held the event loop for 10 s (and every other request).
    await some_incidents()
    sql_statements.statements.clear()
    # A GET's query string holds at most 8 KiB: enough for a few hundred.
    count = 105_000 if method == "POST" else 300
    variables = {"s": [f"k{n}" for n in range(count)], "b": False}
    if method == "POST":
        body = await gql(client, PAGE_OF_KPIS, variables, persona="exec")
    else:
        response = await client.get(
            "/graphql",
            params={"query": PAGE_OF_KPIS, "variables": json.dumps(variables)},
            headers={"Authorization": f"Bearer {make_token('exec')}"},
        )
        body = await response.json()
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert "data" not in body
    assert "at most 100" in body["errors"][0]["message"]
    assert sql_statements.count == 0


async def test_a_hundred_slugs_are_accepted_and_a_hundred_and_one_are_not(client) -> None:
    await some_incidents()
    slugs = ["mttr", *(f"k{n}" for n in range(99))]
    body = await gql(client, PAGE_OF_KPIS, {"s": slugs, "b": False}, persona="exec")
    assert "errors" not in body, body
    body = await gql(client, PAGE_OF_KPIS, {"s": [*slugs, "k99"], "b": False}, persona="exec")
    assert codes(body) == ["BAD_USER_INPUT"]


async def test_a_list_written_in_the_document_is_capped_too(client, sql_statements) -> None:
    slugs = ", ".join(f'"k{n}"' for n in range(101))
    query = f'{{ incident(id: "INC-1") {{ kpis(slugs: [{slugs}]) {{ value }} }} }}'
    body = await gql(client, query)
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "at most 100" in body["errors"][0]["message"]
    assert sql_statements.count == 0


async def test_a_list_inside_an_input_object_is_capped(client) -> None:
    before = await KpiDefinition.count()
    body = await gql(
        client,
        "mutation ($i: CreateKpiDefinitionInput!) { createKpiDefinition(input: $i) { slug } }",
        {
            "i": {
                "slug": "wide",
                "name": "n",
                "description": "d",
                "formula": "f",
                "units": "u",
                "visibility": "INTERNAL",
                "owner": "o",
                "reviewCadence": "P90D",
                "dataSources": [f"s{n}" for n in range(101)],
            }
        },
    )
    assert codes(body) == ["BAD_USER_INPUT"]
    assert await KpiDefinition.count() == before


async def test_a_thousand_observations_may_be_recorded_in_one_call_but_not_more(
    client, sql_statements
) -> None:
    document = (
        "mutation ($o: [RecordObservationInput!]!) { recordObservations(inputs: $o) { value } }"
    )
    item = {"kpiSlug": "mttr", "incidentId": "INC-0", "timestamp": "2026-01-01T01:00:00Z"}
    rows = [{**item, "value": 1.0, "source": "import"} for _ in range(1001)]
    body = await gql(client, document, {"o": rows}, persona="ingest")
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "at most 1000" in body["errors"][0]["message"]
    assert sql_statements.count == 0


def test_the_items_of_a_variable_list_count_in_the_cost_estimate() -> None:
    document = parse(PAGE_OF_KPIS)
    [operation] = document.definitions
    without = estimate(document, operation)
    with_slugs = estimate(document, operation, {"s": ["k"] * 100})
    # read once per incident on a page of a hundred
    assert with_slugs - without == 100 * 100
