"""Requests shaped to break the server get a coded 4xx or BAD_USER_INPUT, and write nothing."""

from __future__ import annotations

import gzip
import json

import aiohttp
import pytest

from registry.tables import Incident, KpiDefinition, KpiRevision
from schema import schema
from server.app import MimGraphQLView
from tests.conftest import codes, gql, make_token

pytestmark = pytest.mark.security


def headers(persona: str = "admin", content_type: str = "application/json") -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(persona)}", "Content-Type": content_type}


async def refusal(response) -> dict:
    assert response.status == 400, await response.text()
    body = await response.json()
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    return body


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'"hello"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"42", id="number"),
        pytest.param(b'{"query": 5}', id="query-not-a-string"),
        pytest.param(b'{"query": "{ kpis { slug } }"', id="truncated"),
        pytest.param(b'{"query":"{kpi(slug:\\"\xff\xfe\\"){slug}}"}', id="invalid-utf8"),
        pytest.param(
            b'{"query": "{ viewer { subject } }", "variables": {"x": '
            + b"[" * 5000
            + b"]" * 5000
            + b"}}",
            id="deeply-nested-variables",
        ),
    ],
)
async def test_a_body_that_is_not_a_graphql_request_is_refused_with_a_code(client, raw) -> None:
    await refusal(await client.post("/graphql", data=raw, headers=headers()))


@pytest.mark.parametrize("content_type", ["application/graphql", "text/plain", "application/xml"])
async def test_an_unsupported_content_type_gets_a_coded_json_error(client, content_type) -> None:
    response = await client.post(
        "/graphql", data=b"{ kpis { slug } }", headers=headers(content_type=content_type)
    )
    assert 400 <= response.status < 500
    body = await response.json()
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_an_unknown_route_gets_a_coded_404(client) -> None:
    response = await client.get("/incidents", headers=headers())
    assert response.status == 404
    assert (await response.json())["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_several_operations_without_an_operation_name_run_nothing(client) -> None:
    document = (
        'mutation B { markKpiReviewed(slug: "mttr") { version } } query A { viewer { subject } }'
    )
    versions = await KpiDefinition.select(KpiDefinition.version)
    response = await client.post(
        "/graphql", data=json.dumps({"query": document}).encode(), headers=headers()
    )
    body = await refusal(response)
    assert "operationName" in body["errors"][0]["message"]
    assert await KpiDefinition.select(KpiDefinition.version) == versions
    named = await client.post(
        "/graphql",
        data=json.dumps({"query": document, "operationName": "A"}).encode(),
        headers=headers(),
    )
    assert (await named.json())["data"] == {"viewer": {"subject": "tester"}}


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        pytest.param(
            'query ($f: DateTime!, $t: DateTime!) { kpi(slug: "mttr") { series(bucket: DAY, '
            "from: $f, to: $t) { start } } }",
            {"f": "9999-12-30T00:00:00Z", "t": "9999-12-31T12:00:00Z"},
            id="series-at-the-end-of-time",
        ),
        pytest.param(
            "query ($f: DateTime, $t: DateTime) { kpis { summary(from: $f, to: $t) { count } } }",
            {"f": "2027-01-01T00:00:00Z", "t": "2026-01-01T00:00:00Z"},
            id="summary-window-backwards",
        ),
        pytest.param(
            "query ($f: DateTime) { kpis { summary(from: $f) { count } } }",
            {"f": "9999-12-31T23:59:59-14:00"},
            id="date-time-beyond-utc-range",
        ),
    ],
)
async def test_out_of_range_windows_are_bad_input(client, query, variables) -> None:
    body = await gql(client, query, variables, persona="exec")
    assert codes(body) and set(codes(body)) == {"BAD_USER_INPUT"}, body
    assert "out of range" not in str(body) or "is out of range" in str(body)


UPSERT = (
    'mutation ($title: String!, $at: DateTime!) { upsertIncident(input: {id: "INC-1", '
    "title: $title, severity: P1, detectedAt: $at}) { id } }"
)


@pytest.mark.parametrize(
    ("title", "at"),
    [
        pytest.param("lone \\ud800 surrogate", "2026-01-01T00:00:00Z", id="lone-surrogate"),
        pytest.param("year 9999", "9999-12-31T23:59:59Z", id="far-future"),
        pytest.param("year 1", "0001-01-01T00:00:00Z", id="far-past"),
    ],
)
async def test_unstorable_incident_input_is_bad_input_and_writes_nothing(client, title, at) -> None:
    raw = json.dumps({"query": UPSERT, "variables": {"at": at}})[:-2]
    raw += ', "title": "' + title + '"}}'
    response = await client.post("/graphql", data=raw.encode(), headers=headers("ingest"))
    body = await response.json()
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert await Incident.count() == 0


@pytest.mark.parametrize("cadence", ["P9999Y", "P1000000Y", "P999999999999D", "P11Y"])
async def test_absurd_review_cadences_are_bad_input(client, cadence) -> None:
    before = (await KpiDefinition.count(), await KpiRevision.count())
    body = await gql(
        client,
        'mutation ($c: String!) { updateKpiDefinition(slug: "mttr", input: {reviewCadence: $c})'
        " { version } }",
        {"c": cadence},
    )
    assert codes(body) == ["BAD_USER_INPUT"]
    assert (await KpiDefinition.count(), await KpiRevision.count()) == before


async def test_responses_do_not_name_the_server_software(client) -> None:
    for response in (
        await client.get("/healthz"),
        await client.post("/graphql", json={"query": "{ kpis { slug } }"}, headers=headers()),
        await client.get("/kpis"),
    ):
        assert "Server" not in response.headers


async def test_a_lone_surrogate_echoed_in_an_error_is_escaped_not_a_fault(client) -> None:
    # The executor quotes the bad variable in its message.
    raw = b'{"query": "query ($n: Int) { incidents(first: $n) { totalCount } }", '
    raw += b'"variables": {"n": "x\\ud800"}}'
    response = await client.post("/graphql", data=raw, headers=headers("exec"))
    text = await response.text()
    assert response.status == 200, text
    assert codes(json.loads(text)) == ["BAD_USER_INPUT"]
    assert "\\ud800" in text  # quoted with an escape, never as raw text UTF-8 cannot hold


def test_text_utf8_cannot_hold_is_written_escaped() -> None:
    view = MimGraphQLView(schema=schema, suggestions=False, fast_path=None)
    assert json.loads(view.encode_json({"message": "caf\u00e9"})) == {"message": "caf\u00e9"}
    assert "café".encode() in view.encode_json({"message": "caf\u00e9"})  # UTF-8, no escape
    written = view.encode_json({"message": "x\ud800"})
    assert written == b'{"message":"x\\ud800"}'


# --- protocol upgrades: the service has no subscriptions ------------------------------------------


@pytest.mark.parametrize("persona", [None, "exec", "admin"])
@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_a_websocket_upgrade_is_refused_with_or_without_a_token(
    client, persona, protocol
) -> None:
    # With Accept: text/html the upgrade once passed for the GraphiQL page, skipping the token.
    extra = {"Authorization": f"Bearer {make_token(persona)}"} if persona else {}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(
            "/graphql", protocols=[protocol], headers={"Accept": "text/html", **extra}
        )
    assert refused.value.status == 400


@pytest.mark.parametrize("path", ["/graphql", "/kpis", "/healthz"])
async def test_an_upgrade_request_gets_a_coded_400_on_every_path(client, path) -> None:
    response = await client.get(
        path,
        headers={
            "Accept": "text/html",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert response.status == 400
    assert (await response.json())["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "Server" not in response.headers


async def test_the_graphiql_page_is_still_served_to_a_browser(client) -> None:
    response = await client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status == 200
    assert "graphiql" in (await response.text()).lower()


# --- bodies that are not plain JSON ---------------------------------------------------------------

MARK_REVIEWED = '{"query": "mutation { markKpiReviewed(slug: \\"mttr\\") { version } }"}'


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd", "compress", "gzip, br"])
async def test_a_content_encoding_is_refused_with_415_and_nothing_runs(client, encoding) -> None:
    # gzip and deflate over a plain body were a 500; br a plain-text 400 naming the server.
    versions = await KpiDefinition.select(KpiDefinition.version)
    response = await client.post(
        "/graphql",
        data=MARK_REVIEWED.encode(),
        headers={**headers(), "Content-Encoding": encoding},
    )
    assert response.status == 415, await response.text()
    assert (await response.json())["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "Server" not in response.headers
    assert await KpiDefinition.select(KpiDefinition.version) == versions


async def test_a_gzipped_body_is_refused_not_decoded(client) -> None:
    versions = await KpiDefinition.select(KpiDefinition.version)
    response = await client.post(
        "/graphql",
        data=gzip.compress(MARK_REVIEWED.encode()),
        headers={**headers(), "Content-Encoding": "gzip"},
    )
    assert response.status == 415
    assert await KpiDefinition.select(KpiDefinition.version) == versions


@pytest.mark.parametrize("encoding", ["identity", "Identity"])
async def test_an_identity_content_encoding_is_accepted(client, encoding) -> None:
    response = await client.post(
        "/graphql",
        data=b'{"query": "{ viewer { subject } }"}',
        headers={**headers(), "Content-Encoding": encoding},
    )
    assert (await response.json())["data"] == {"viewer": {"subject": "tester"}}


TWO_OPERATIONS = (
    'mutation B { markKpiReviewed(slug: "mttr") { version } } query A { viewer { subject } }'
)


@pytest.mark.parametrize(
    "content_type",
    ["application/jsonx", "application/json-patch+json", "text/application/json", "json"],
)
async def test_a_media_type_that_merely_contains_json_is_415_and_runs_nothing(
    client, content_type
) -> None:
    versions = await KpiDefinition.select(KpiDefinition.version)
    response = await client.post(
        "/graphql",
        data=json.dumps({"query": TWO_OPERATIONS}).encode(),
        headers=headers(content_type=content_type),
    )
    assert response.status == 415, await response.text()
    assert (await response.json())["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert await KpiDefinition.select(KpiDefinition.version) == versions


async def test_json_with_a_charset_is_accepted(client) -> None:
    response = await client.post(
        "/graphql",
        data=b'{"query": "{ viewer { subject } }"}',
        headers=headers(content_type="application/json; charset=utf-8"),
    )
    assert (await response.json())["data"] == {"viewer": {"subject": "tester"}}


async def test_several_operations_over_get_without_a_name_are_refused(client) -> None:
    document = "query B { kpis { slug } } query A { viewer { subject } }"
    response = await client.get("/graphql", params={"query": document}, headers=headers())
    body = await refusal(response)
    assert "operationName" in body["errors"][0]["message"]
    named = await client.get(
        "/graphql", params={"query": document, "operationName": "A"}, headers=headers()
    )
    assert (await named.json())["data"] == {"viewer": {"subject": "tester"}}
