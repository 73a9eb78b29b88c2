"""The REST mirror: same services, same auth and visibility filter, GraphQL's field names."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.conftest import StatementCounter, gql, make_token

SEED_SLUGS = ["cadence-adherence", "mtta", "mttr", "stakeholder-satisfaction"]
EXEC_SLUGS = ["cadence-adherence", "mttr", "stakeholder-satisfaction"]

DEFINITION_FIELDS = [
    "slug",
    "name",
    "description",
    "formula",
    "expression",
    "units",
    "dataSources",
    "visibility",
    "owner",
    "reviewCadence",
    "lastReviewedAt",
    "reviewDueAt",
    "version",
    "createdAt",
    "updatedAt",
]
DATETIME_FIELDS = {
    "lastReviewedAt",
    "reviewDueAt",
    "createdAt",
    "updatedAt",
    "detectedAt",
    "resolvedAt",
    "timestamp",
}
GQL_DEFINITION = " ".join(DEFINITION_FIELDS) + " targets { severity persona comparison threshold }"
INCIDENT_FIELDS = ["id", "title", "severity", "detectedAt", "resolvedAt"]
OBSERVATION_FIELDS = [
    "timestamp",
    "value",
    "source",
    "confidence",
    "definitionVersion",
    "meetsTarget",
]
GQL_INCIDENT = (
    "query($id: ID!) { incident(id: $id) { "
    + " ".join(INCIDENT_FIELDS)
    + " kpis { kpi { slug } "
    + " ".join(OBSERVATION_FIELDS)
    + " } } }"
)


def auth(persona: Any = "admin", **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(persona, **kwargs)}"}


async def get_json(client, path: str, persona: str = "admin") -> tuple[int, Any]:
    response = await client.get(path, headers=auth(persona))
    assert response.content_type == "application/json"
    return response.status, await response.json()


def instant(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"{value!r} has no UTC offset"
    return parsed


def comparable(obj: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """Return the named fields, date-times as instants (the format may differ, the time not)."""
    return {f: instant(obj[f]) if f in DATETIME_FIELDS else obj[f] for f in fields}


def assert_camel_case(obj: dict[str, Any]) -> None:
    for key in obj:
        assert "_" not in key and key[:1].islower(), f"{key!r} is not camelCase"


async def graphql_kpis(client, persona: str = "admin") -> list[dict[str, Any]]:
    body = await gql(client, f"{{ kpis {{ {GQL_DEFINITION} }} }}", persona=persona)
    assert "errors" not in body, body
    found: list[dict[str, Any]] = body["data"]["kpis"]
    return found


@pytest.fixture
async def incident_with_observations(client) -> None:
    """INC-2041 (P1) with three observations: its MTTR, computed when it is resolved (150 minutes
    as of resolvedAt), and an ingested MTTA and cadence adherence."""
    upsert = await gql(
        client,
        "mutation($input: IncidentInput!) { upsertIncident(input: $input) { id } }",
        {
            "input": {
                "id": "INC-2041",
                "title": "checkout: elevated error rate",
                "severity": "P1",
                "detectedAt": "2026-01-10T10:00:00Z",
                "resolvedAt": "2026-01-10T12:30:00Z",
            }
        },
        persona="ingest",
    )
    assert "errors" not in upsert, upsert
    inputs = [
        ("mtta", "2026-01-10T10:05:00Z", 5.0, 0.9),
        ("cadence-adherence", "2026-01-10T12:30:00Z", 100.0, 1.0),
    ]
    body = await gql(
        client,
        "mutation($inputs: [RecordObservationInput!]!) { recordObservations(inputs: $inputs) "
        "{ value } }",
        {
            "inputs": [
                {
                    "kpiSlug": slug,
                    "incidentId": "INC-2041",
                    "timestamp": at,
                    "value": value,
                    "source": "manual",
                    "confidence": confidence,
                }
                for slug, at, value, confidence in inputs
            ]
        },
        persona="ingest",
    )
    assert "errors" not in body, body


# --- GET /kpis -----------------------------------------------------------------------------


async def test_get_kpis_lists_the_seed_kpis_with_graphql_field_names(client) -> None:
    status, body = await get_json(client, "/kpis")
    assert status == 200
    listed = body["kpis"]
    assert [k["slug"] for k in listed] == SEED_SLUGS
    for definition in listed:
        assert_camel_case(definition)
        assert set(DEFINITION_FIELDS) | {"targets"} <= set(definition)
        for target in definition["targets"]:
            assert set(target) == {"severity", "persona", "comparison", "threshold"}


async def test_get_kpis_values_match_graphql(client) -> None:
    status, body = await get_json(client, "/kpis")
    assert status == 200
    expected = await graphql_kpis(client)
    assert [comparable(k, DEFINITION_FIELDS) for k in body["kpis"]] == [
        comparable(k, DEFINITION_FIELDS) for k in expected
    ]
    assert [k["targets"] for k in body["kpis"]] == [k["targets"] for k in expected]


@pytest.mark.parametrize("persona", ["exec", "stakeholder"])
async def test_get_kpis_applies_the_visibility_filter(client, persona: str) -> None:
    status, body = await get_json(client, "/kpis", persona=persona)
    assert status == 200
    assert [k["slug"] for k in body["kpis"]] == EXEC_SLUGS


# --- GET /kpis/{slug} ----------------------------------------------------------------------


@pytest.mark.parametrize("slug", SEED_SLUGS)
async def test_get_kpi_by_slug_matches_graphql(client, slug: str) -> None:
    status, body = await get_json(client, f"/kpis/{slug}")
    assert status == 200
    found = body["kpi"]
    assert_camel_case(found)
    gql_body = await gql(client, f'{{ kpi(slug: "{slug}") {{ {GQL_DEFINITION} }} }}')
    expected = gql_body["data"]["kpi"]
    assert comparable(found, DEFINITION_FIELDS) == comparable(expected, DEFINITION_FIELDS)
    assert found["targets"] == expected["targets"]


async def test_get_kpi_reflects_an_update(client) -> None:
    body = await gql(
        client,
        'mutation { updateKpiDefinition(slug: "mttr", input: {owner: "Head of Ops"}) { version } }',
    )
    assert "errors" not in body, body
    status, found = await get_json(client, "/kpis/mttr")
    assert status == 200
    # The seed KPI is at version 2 (its expression), so the update makes it version 3.
    assert (found["kpi"]["owner"], found["kpi"]["version"]) == ("Head of Ops", 3)


async def test_get_unknown_kpi_is_404_not_found(client) -> None:
    status, body = await get_json(client, "/kpis/no-such-kpi")
    assert status == 404
    assert [e["extensions"]["code"] for e in body["errors"]] == ["NOT_FOUND"]
    assert "kpi" not in body


@pytest.mark.parametrize("persona", ["exec", "stakeholder"])
async def test_get_hidden_kpi_is_the_same_404_as_an_unknown_one(client, persona: str) -> None:
    hidden = await client.get("/kpis/mtta", headers=auth(persona))
    unknown = await client.get("/kpis/no-such-kpi", headers=auth(persona))
    assert hidden.status == unknown.status == 404
    assert await hidden.read() == await unknown.read()
    assert (await hidden.json())["errors"][0]["extensions"]["code"] == "NOT_FOUND"


# --- GET /incidents/{id}/kpis --------------------------------------------------------------


@pytest.mark.usefixtures("incident_with_observations")
async def test_get_incident_kpis_matches_graphql_names_and_values(client) -> None:
    status, body = await get_json(client, "/incidents/INC-2041/kpis")
    assert status == 200
    gql_body = await gql(client, GQL_INCIDENT, {"id": "INC-2041"})
    assert "errors" not in gql_body, gql_body
    expected = gql_body["data"]["incident"]

    assert_camel_case(body["incident"])
    assert comparable(body["incident"], INCIDENT_FIELDS) == comparable(expected, INCIDENT_FIELDS)
    assert body["incident"]["id"] == "INC-2041"
    assert body["incident"]["severity"] == "P1"

    observations = body["kpis"]
    assert len(observations) == len(expected["kpis"]) == 3
    for observation in observations:
        assert_camel_case(observation)

    def key(o: dict[str, Any], slug: str) -> tuple[str, datetime | None]:
        return slug, instant(o["timestamp"])

    rest = sorted((key(o, o["kpiSlug"]), comparable(o, OBSERVATION_FIELDS)) for o in observations)
    graph = sorted(
        (key(o, o["kpi"]["slug"]), comparable(o, OBSERVATION_FIELDS)) for o in expected["kpis"]
    )
    assert rest == graph


@pytest.mark.usefixtures("incident_with_observations")
async def test_get_incident_kpis_judges_each_value_against_the_incident_severity_target(
    client,
) -> None:
    status, body = await get_json(client, "/incidents/INC-2041/kpis")
    assert status == 200
    by_slug = {o["kpiSlug"]: o for o in body["kpis"]}
    assert len(by_slug) == len(body["kpis"]) == 3
    assert by_slug["mttr"]["value"] == 150.0
    assert by_slug["mttr"]["meetsTarget"] is False  # P1: at most 120 minutes
    assert by_slug["mtta"]["meetsTarget"] is True  # P1: at most 10 minutes
    assert by_slug["mtta"]["confidence"] == 0.9
    assert by_slug["cadence-adherence"]["meetsTarget"] is True  # at least 90 %
    # MTTR was computed by the seed expression (version 2) as of resolvedAt; the rest ingested.
    assert by_slug["mttr"]["source"] == "computed"
    assert by_slug["mttr"]["definitionVersion"] == 2
    assert by_slug["mttr"]["confidence"] == 1.0
    assert instant(by_slug["mttr"]["timestamp"]) == instant("2026-01-10T12:30:00Z")
    for slug in ("mtta", "cadence-adherence"):
        assert by_slug[slug]["source"] == "manual", slug
        assert by_slug[slug]["definitionVersion"] is None, slug


@pytest.mark.usefixtures("incident_with_observations")
@pytest.mark.parametrize("persona", ["exec", "stakeholder"])
async def test_get_incident_kpis_hides_kpis_the_caller_may_not_see(client, persona: str) -> None:
    status, body = await get_json(client, "/incidents/INC-2041/kpis", persona=persona)
    assert status == 200
    slugs = sorted(o["kpiSlug"] for o in body["kpis"])
    assert slugs == ["cadence-adherence", "mttr"]
    assert "mtta" not in str(body)


async def test_get_incident_kpis_of_an_incident_without_observations_is_an_empty_list(
    client,
) -> None:
    upsert = await gql(
        client,
        'mutation { upsertIncident(input: {id: "INC-7", title: "t", severity: P4, '
        'detectedAt: "2026-01-01T00:00:00Z"}) { id } }',
        persona="ingest",
    )
    assert "errors" not in upsert, upsert
    status, body = await get_json(client, "/incidents/INC-7/kpis")
    assert status == 200
    assert body["kpis"] == []
    assert body["incident"]["resolvedAt"] is None


async def test_get_incident_kpis_finds_an_incident_id_containing_a_slash(client) -> None:
    # Incident ids may hold "/" (e.g. SYS/42); a client sends it percent-encoded.
    upsert = await gql(
        client,
        'mutation { upsertIncident(input: {id: "SYS/42", title: "t", severity: P2, '
        'detectedAt: "2026-01-01T00:00:00Z"}) { id } }',
        persona="ingest",
    )
    assert "errors" not in upsert, upsert
    status, body = await get_json(client, "/incidents/SYS%2F42/kpis")
    assert status == 200
    assert body["incident"]["id"] == "SYS/42"


async def test_get_kpis_of_an_unknown_incident_is_404_not_found(client) -> None:
    status, body = await get_json(client, "/incidents/INC-404/kpis")
    assert status == 404
    assert [e["extensions"]["code"] for e in body["errors"]] == ["NOT_FOUND"]


@pytest.mark.usefixtures("incident_with_observations")
@pytest.mark.parametrize("query", ["", "?kpi=mttr&kpi=mtta"])
async def test_get_incident_kpis_is_one_statement(
    client, sql_statements: StatementCounter, query: str
) -> None:
    # The incident, its visible observations and their KPIs' definitions come back together,
    # after the data generation its ETag is made of.
    for persona in ("exec", "admin"):
        sql_statements.statements.clear()
        status, body = await get_json(client, f"/incidents/INC-2041/kpis{query}", persona=persona)
        assert status == 200 and body["kpis"], body
        assert sql_statements.count == 2, sql_statements.statements
        assert "mim_generation" in sql_statements.statements[0]


# --- query parameters ----------------------------------------------------------------------

ALL_PERSONAS = ["exec", "stakeholder", "responder", "ingest", "admin"]


@pytest.mark.parametrize("persona", ALL_PERSONAS)
@pytest.mark.parametrize("given", ["EXEC", "exec", "INTERNAL", "internal"])
async def test_get_kpis_by_visibility_is_graphqls_kpis_by_visibility(
    client, persona: str, given: str
) -> None:
    status, body = await get_json(client, f"/kpis?visibility={given}", persona=persona)
    assert status == 200
    expected = await gql(
        client, f"{{ kpis(visibility: {given.upper()}) {{ slug }} }}", persona=persona
    )
    assert [k["slug"] for k in body["kpis"]] == [k["slug"] for k in expected["data"]["kpis"]]
    assert all(k["visibility"] == given.upper() for k in body["kpis"])
    if persona in ("exec", "stakeholder"):
        # Asking for internal KPIs widens nothing: the answer is empty, and says nothing of mtta.
        expected_slugs = [] if given.upper() == "INTERNAL" else EXEC_SLUGS
        assert [k["slug"] for k in body["kpis"]] == expected_slugs
        assert "mtta" not in str(body)
    else:
        assert [k["slug"] for k in body["kpis"]] == (
            ["mtta"] if given.upper() == "INTERNAL" else EXEC_SLUGS
        )


@pytest.mark.parametrize(
    "query",
    ["visibility=SECRET", "visibility=", "visibility=EXEC&visibility=INTERNAL"],
)
async def test_get_kpis_with_a_bad_visibility_is_400_bad_user_input(client, query: str) -> None:
    status, body = await get_json(client, f"/kpis?{query}", persona="exec")
    assert status == 400
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
    assert "kpis" not in body


@pytest.mark.usefixtures("incident_with_observations")
@pytest.mark.parametrize("persona", ALL_PERSONAS)
async def test_get_incident_kpis_by_slug_is_graphqls_kpis_by_slugs(client, persona: str) -> None:
    for slugs in (["mttr"], ["mttr", "mtta"], ["mtta"], ["no-such-kpi"], ["Not A Slug!"], [""]):
        query = "&".join(f"kpi={slug}" for slug in slugs)
        status, body = await get_json(client, f"/incidents/INC-2041/kpis?{query}", persona=persona)
        assert status == 200
        expected = await gql(
            client,
            'query ($s: [String!]) { incident(id: "INC-2041") '
            "{ kpis(slugs: $s) { kpi { slug } } } }",
            {"s": slugs},
            persona=persona,
        )
        shown = [o["kpiSlug"] for o in body["kpis"]]
        assert shown == [o["kpi"]["slug"] for o in expected["data"]["incident"]["kpis"]]
        assert set(shown) <= set(slugs)
        if persona in ("exec", "stakeholder"):
            assert "mtta" not in shown and "Mean Time to Acknowledge" not in str(body)
    status, body = await get_json(client, "/incidents/INC-2041/kpis?kpi=mtta", persona="admin")
    assert [o["kpiSlug"] for o in body["kpis"]] == ["mtta"]


# --- authentication ------------------------------------------------------------------------

PATHS = ["/kpis", "/kpis/mttr", "/incidents/INC-2041/kpis"]


@pytest.mark.usefixtures("incident_with_observations")
@pytest.mark.parametrize("path", PATHS)
async def test_rest_without_a_token_is_401_unauthenticated(client, path: str) -> None:
    response = await client.get(path)
    assert response.status == 401
    body = await response.json()
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"]
    assert "kpi" not in body and "kpis" not in body


@pytest.mark.usefixtures("incident_with_observations")
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {make_token('admin', secret='another-secret-that-is-long-enough-0123456789')}",
        f"Bearer {make_token('admin', ttl=-3600)}",
        f"Bearer {make_token('admin', sub=None)}",
        "Bearer not-a-jwt",
        f"Basic {make_token('admin')}",
    ],
    ids=["wrong-secret", "expired", "no-sub", "malformed", "not-bearer"],
)
async def test_rest_with_a_bad_token_is_401_unauthenticated(client, path: str, header: str) -> None:
    response = await client.get(path, headers={"Authorization": header})
    assert response.status == 401
    body = await response.json()
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"]


@pytest.mark.usefixtures("incident_with_observations")
@pytest.mark.parametrize("path", PATHS)
async def test_rest_with_an_unknown_persona_is_refused_and_reveals_nothing(
    client, path: str
) -> None:
    response = await client.get(path, headers=auth("janitor"))
    assert response.status == 403
    body = await response.json()
    assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]
    assert "kpis" not in body and "kpi" not in body
