"""Who sees what: every persona on every path that can reach a KPI, and who may change anything.

An internal KPI shown to an exec token is the worst bug this service can have, so each path is
checked for each persona, and the raw text of every answer an exec-only token gets is searched for
the internal KPIs' slugs, names and values. Data is set up through the API with real tokens.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.tables import TABLES
from tests.conftest import EXEC_ONLY, PERSONAS, SEES_INTERNAL, codes, gql, make_token

# --- the world every test starts from ------------------------------------------------------------

CANARY_SLUG = "canary-internal"
CANARY_NAME = "Quokka Canary Throughput Index"
CANARY_OWNER = "Owner Zanzibar-Canary"
CANARY_DESCRIPTION = "Canary description xylophone"
EXEC_SLUGS = ["cadence-adherence", "mttr", "stakeholder-satisfaction"]
INTERNAL_SLUGS = [CANARY_SLUG, "mtta"]
ALL_SLUGS = sorted(EXEC_SLUGS + INTERNAL_SLUGS)
UNKNOWN_SLUG = "no-such-kpi"

INC1, INC2 = "INC-VIS-1", "INC-VIS-2"
T1, T2 = "2026-03-01T10:00:00+00:00", "2026-03-02T10:00:00+00:00"

# (slug, incident, timestamp, value); the internal values are distinctive so a leak shows in text.
OBSERVATIONS = [
    ("mttr", INC1, T1, 95.5),
    ("mttr", INC2, T2, 200.25),
    ("stakeholder-satisfaction", INC1, T1, 4.75),
    ("mtta", INC1, T1, 7.125),
    ("mtta", INC2, T2, 13.375),
    (CANARY_SLUG, INC1, T1, 31337.5),
]

# What an exec-only token must never read, anywhere (matched case-insensitively).
SECRETS = [
    CANARY_SLUG,
    CANARY_NAME,
    CANARY_OWNER,
    CANARY_DESCRIPTION,
    "mtta",
    "Mean Time to Acknowledge",
    "MIM Lead",
    "7.125",
    "13.375",
    "31337",
    "internal",
]


def visible_slugs(persona: Any) -> list[str]:
    return ALL_SLUGS if persona in SEES_INTERNAL else EXEC_SLUGS


def visible_observations(persona: Any, incident: str | None = None) -> list[tuple[str, float]]:
    """Return (slug, value) of the observations the persona sees, in the service's order."""
    rows = [
        (slug, ts, value)
        for slug, inc, ts, value in OBSERVATIONS
        if slug in visible_slugs(persona) and incident in (None, inc)
    ]
    return [(slug, value) for slug, _, value in sorted(rows)]


CREATE_KPI = """
mutation ($input: CreateKpiDefinitionInput!) {
  createKpiDefinition(input: $input) { slug name visibility version }
}"""
UPDATE_KPI = """
mutation ($slug: String!, $input: UpdateKpiDefinitionInput!, $note: String) {
  updateKpiDefinition(slug: $slug, input: $input, note: $note) { slug version }
}"""
MARK_REVIEWED = """
mutation ($slug: String!) { markKpiReviewed(slug: $slug) { slug version lastReviewedAt } }"""
UPSERT_INCIDENT = """
mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id severity } }"""
RECORD_OBSERVATIONS = """
mutation ($inputs: [RecordObservationInput!]!) {
  recordObservations(inputs: $inputs) { value kpi { slug visibility } incident { id } }
}"""
RECORD_OBSERVATION = """
mutation ($input: RecordObservationInput!) {
  recordObservation(input: $input) { value kpi { slug visibility } }
}"""


def canary_input(slug: str = CANARY_SLUG, visibility: str = "INTERNAL") -> dict[str, Any]:
    return {
        "slug": slug,
        "name": CANARY_NAME if slug == CANARY_SLUG else f"Probe {slug}",
        "description": CANARY_DESCRIPTION,
        "formula": "count(canaries)",
        "units": "canaries",
        "targets": [{"comparison": "AT_MOST", "threshold": 5.0}],
        "dataSources": ["canary.source"],
        "visibility": visibility,
        "owner": CANARY_OWNER,
        "reviewCadence": "P30D",
    }


def observation_input(slug: str, incident: str, timestamp: str, value: float) -> dict[str, Any]:
    return {
        "kpiSlug": slug,
        "incidentId": incident,
        "timestamp": timestamp,
        "value": value,
        "source": "import",
    }


def ok(body: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


@pytest.fixture
async def world(client: TestClient) -> None:
    """Set up an internal canary KPI, two incidents and observations of exec and internal KPIs."""
    created = ok(await gql(client, CREATE_KPI, {"input": canary_input()}, persona="admin"))
    assert created["createKpiDefinition"]["visibility"] == "INTERNAL"
    update = {"slug": CANARY_SLUG, "input": {"formula": "sum(canaries)"}, "note": CANARY_NAME}
    ok(await gql(client, UPDATE_KPI, update, persona="admin"))
    for key, severity, detected in ((INC1, "P1", T1), (INC2, "P2", T2)):
        incident = {"id": key, "title": f"Outage {key}", "severity": severity}
        variables = {"input": {**incident, "detectedAt": detected}}
        ok(await gql(client, UPSERT_INCIDENT, variables, persona="ingest"))
    inputs = [observation_input(*row) for row in OBSERVATIONS]
    recorded = ok(await gql(client, RECORD_OBSERVATIONS, {"inputs": inputs}, persona="ingest"))
    assert len(recorded["recordObservations"]) == len(OBSERVATIONS)


pytestmark = [pytest.mark.usefixtures("world"), pytest.mark.security]


async def post_text(
    client: TestClient, query: str, variables: dict[str, Any] | None = None, persona: Any = "admin"
) -> str:
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables or {}},
        headers={"Authorization": f"Bearer {make_token(persona)}"},
    )
    assert response.status == 200
    return await response.text()


async def rest(client: TestClient, path: str, persona: Any) -> tuple[int, str]:
    response = await client.get(path, headers={"Authorization": f"Bearer {make_token(persona)}"})
    return response.status, await response.text()


async def get_text(client: TestClient, query: str, persona: Any) -> str:
    response = await client.get(
        "/graphql",
        params={"query": query},
        headers={"Authorization": f"Bearer {make_token(persona)}"},
    )
    assert response.status == 200
    return await response.text()


async def snapshot() -> dict[str, list[str]]:
    """Return every row of every table, to show that a refused mutation wrote nothing."""
    return {t._meta.tablename: sorted(map(repr, await t.select())) for t in TABLES}


# --- queries ------------------------------------------------------------------------------------

KPIS = "query ($v: Visibility) { kpis(visibility: $v) { slug name visibility } }"
KPI = """
query ($slug: String!) {
  kpi(slug: $slug) {
    slug name description owner visibility
    revisions { version note changes { field before after } }
    summary { count value }
  }
}"""
INCIDENT_KPIS = """
query ($id: ID!) {
  incident(id: $id) { id kpis { value source kpi { slug name visibility } meetsTarget } }
}"""
INCIDENT_KPIS_FILTERED = """
query ($id: ID!, $slugs: [String!]) {
  incident(id: $id) { kpis(slugs: $slugs) { value kpi { slug } } }
}"""
INCIDENTS = """
{
  incidents(first: 100) {
    totalCount
    edges { node { id kpis { value kpi { slug name visibility } incident { id } } } }
  }
}"""
SUMMARIES = """
{
  kpis {
    slug
    all: summary { count value }
    p1: summary(severity: P1) { count value }
    march2: summary(from: "2026-03-02T00:00:00Z", to: "2026-03-03T00:00:00Z") { count value }
  }
}"""
REVISIONS = "{ kpis { slug revisions { version changedBy note changes { field after } } } }"
VIEWER = "{ viewer { subject personas visibilities } }"


@pytest.mark.parametrize("persona", PERSONAS)
async def test_kpis_lists_exactly_the_kpis_the_persona_may_see(
    client: TestClient, persona: str
) -> None:
    data = ok(await gql(client, KPIS, persona=persona))
    assert [k["slug"] for k in data["kpis"]] == visible_slugs(persona)
    if persona in EXEC_ONLY:
        assert {k["visibility"] for k in data["kpis"]} == {"EXEC"}


@pytest.mark.parametrize("persona", PERSONAS)
async def test_kpis_filtered_to_exec_lists_the_exec_kpis_for_every_persona(
    client: TestClient, persona: str
) -> None:
    data = ok(await gql(client, KPIS, {"v": "EXEC"}, persona=persona))
    assert [k["slug"] for k in data["kpis"]] == EXEC_SLUGS


@pytest.mark.parametrize("persona", PERSONAS)
async def test_kpis_filtered_to_internal_is_empty_unless_the_persona_sees_internal(
    client: TestClient, persona: str
) -> None:
    data = ok(await gql(client, KPIS, {"v": "INTERNAL"}, persona=persona))
    expected = INTERNAL_SLUGS if persona in SEES_INTERNAL else []
    assert [k["slug"] for k in data["kpis"]] == expected


@pytest.mark.parametrize("persona", PERSONAS)
async def test_kpi_by_slug_returns_every_kpi_the_persona_may_see(
    client: TestClient, persona: str
) -> None:
    for slug in visible_slugs(persona):
        data = ok(await gql(client, KPI, {"slug": slug}, persona=persona))
        assert data["kpi"]["slug"] == slug


@pytest.mark.parametrize("slug", INTERNAL_SLUGS)
@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_exec_only_token_gets_null_for_an_internal_kpi_slug(
    client: TestClient, persona: str, slug: str
) -> None:
    assert ok(await gql(client, KPI, {"slug": slug}, persona=persona)) == {"kpi": None}


@pytest.mark.parametrize("slug", INTERNAL_SLUGS)
@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_exec_only_token_gets_for_an_internal_slug_the_bytes_of_an_unknown_slug(
    client: TestClient, persona: str, slug: str
) -> None:
    hidden = await post_text(client, KPI, {"slug": slug}, persona)
    unknown = await post_text(client, KPI, {"slug": UNKNOWN_SLUG}, persona)
    assert hidden == unknown


@pytest.mark.parametrize("persona", PERSONAS)
async def test_incident_kpis_lists_only_observations_of_visible_kpis(
    client: TestClient, persona: str
) -> None:
    for incident in (INC1, INC2):
        data = ok(await gql(client, INCIDENT_KPIS, {"id": incident}, persona=persona))
        found = [(o["kpi"]["slug"], o["value"]) for o in data["incident"]["kpis"]]
        assert found == visible_observations(persona, incident)


@pytest.mark.parametrize("persona", PERSONAS)
async def test_incident_kpis_filtered_by_slugs_drops_the_kpis_the_persona_may_not_see(
    client: TestClient, persona: str
) -> None:
    slugs = ["mtta", CANARY_SLUG, "mttr"]
    variables = {"id": INC1, "slugs": slugs}
    data = ok(await gql(client, INCIDENT_KPIS_FILTERED, variables, persona=persona))
    found = [(o["kpi"]["slug"], o["value"]) for o in data["incident"]["kpis"]]
    assert found == [o for o in visible_observations(persona, INC1) if o[0] in slugs]


@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_exec_token_never_sees_internal_kpi_in_incident_kpis_filtered_to_it(
    client: TestClient, persona: str
) -> None:
    for slugs in (["mtta"], [CANARY_SLUG], INTERNAL_SLUGS):
        variables = {"id": INC1, "slugs": slugs}
        data = ok(await gql(client, INCIDENT_KPIS_FILTERED, variables, persona=persona))
        assert data["incident"]["kpis"] == []
        hidden = await post_text(client, INCIDENT_KPIS_FILTERED, variables, persona)
        unknown = await post_text(
            client, INCIDENT_KPIS_FILTERED, {"id": INC1, "slugs": [UNKNOWN_SLUG]}, persona
        )
        assert hidden == unknown


@pytest.mark.parametrize("persona", PERSONAS)
async def test_incidents_connection_lists_only_observations_of_visible_kpis(
    client: TestClient, persona: str
) -> None:
    data = ok(await gql(client, INCIDENTS, persona=persona))
    assert data["incidents"]["totalCount"] == 2
    for edge in data["incidents"]["edges"]:
        node = edge["node"]
        found = [(o["kpi"]["slug"], o["value"]) for o in node["kpis"]]
        assert found == visible_observations(persona, node["id"])
        assert all(o["incident"]["id"] == node["id"] for o in node["kpis"])


@pytest.mark.parametrize("persona", PERSONAS)
async def test_observation_kpi_resolves_to_a_kpi_the_persona_may_see(
    client: TestClient, persona: str
) -> None:
    data = ok(await gql(client, INCIDENTS, persona=persona))
    kpis = {
        o["kpi"]["slug"]: o["kpi"] for e in data["incidents"]["edges"] for o in e["node"]["kpis"]
    }
    assert sorted(kpis) == sorted({slug for slug, _ in visible_observations(persona)})
    if persona in EXEC_ONLY:
        assert {k["visibility"] for k in kpis.values()} == {"EXEC"}
    else:
        assert kpis[CANARY_SLUG] == {
            "slug": CANARY_SLUG,
            "name": CANARY_NAME,
            "visibility": "INTERNAL",
        }


@pytest.mark.parametrize("persona", PERSONAS)
async def test_summaries_count_only_observations_of_their_own_visible_kpi(
    client: TestClient, persona: str
) -> None:
    data = ok(await gql(client, SUMMARIES, persona=persona))
    summaries = {k["slug"]: k for k in data["kpis"]}
    assert sorted(summaries) == visible_slugs(persona)
    assert summaries["mttr"]["all"] == {"count": 2, "value": pytest.approx(147.875)}
    assert summaries["mttr"]["p1"] == {"count": 1, "value": 95.5}
    assert summaries["mttr"]["march2"] == {"count": 1, "value": 200.25}
    assert summaries["stakeholder-satisfaction"]["all"] == {"count": 1, "value": 4.75}
    assert summaries["cadence-adherence"]["all"] == {"count": 0, "value": None}
    total = sum(s["all"]["count"] for s in summaries.values())
    assert total == len(visible_observations(persona))
    if persona in SEES_INTERNAL:
        assert summaries["mtta"]["all"] == {"count": 2, "value": pytest.approx(10.25)}
        assert summaries[CANARY_SLUG]["p1"] == {"count": 1, "value": 31337.5}


@pytest.mark.parametrize("persona", PERSONAS)
async def test_revisions_are_listed_only_for_visible_kpis(client: TestClient, persona: str) -> None:
    data = ok(await gql(client, REVISIONS, persona=persona))
    versions = {k["slug"]: [r["version"] for r in k["revisions"]] for k in data["kpis"]}
    # Seed KPIs: the page (version 1), then their expression (version 2); newest first.
    expected = {slug: [2, 1] for slug in visible_slugs(persona)}
    if persona in SEES_INTERNAL:
        expected[CANARY_SLUG] = [2, 1]
    assert versions == expected


@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_exec_only_token_cannot_reach_internal_revisions_by_slug(
    client: TestClient, persona: str
) -> None:
    text = await post_text(client, KPI, {"slug": CANARY_SLUG}, persona)
    assert json.loads(text) == {"data": {"kpi": None}}


@pytest.mark.parametrize("persona", PERSONAS)
async def test_viewer_reports_the_persona_and_its_visibilities(
    client: TestClient, persona: str
) -> None:
    data = ok(await gql(client, VIEWER, persona=persona))
    expected = ["INTERNAL", "EXEC"] if persona in SEES_INTERNAL else ["EXEC"]
    assert data["viewer"] == {
        "subject": "tester",
        "personas": [persona.upper()],
        "visibilities": expected,
    }


# --- the REST mirror ----------------------------------------------------------------------------


@pytest.mark.parametrize("persona", PERSONAS)
async def test_rest_kpis_lists_exactly_the_kpis_the_persona_may_see(
    client: TestClient, persona: str
) -> None:
    status, text = await rest(client, "/kpis", persona)
    assert status == 200
    assert [k["slug"] for k in json.loads(text)["kpis"]] == visible_slugs(persona)


@pytest.mark.parametrize("persona", PERSONAS)
async def test_rest_kpi_by_slug_returns_every_kpi_the_persona_may_see(
    client: TestClient, persona: str
) -> None:
    for slug in visible_slugs(persona):
        status, text = await rest(client, f"/kpis/{slug}", persona)
        assert status == 200
        assert json.loads(text)["kpi"]["slug"] == slug


@pytest.mark.parametrize("slug", INTERNAL_SLUGS)
@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_rest_internal_kpi_is_a_404_identical_to_an_unknown_slug(
    client: TestClient, persona: str, slug: str
) -> None:
    hidden = await rest(client, f"/kpis/{slug}", persona)
    unknown = await rest(client, f"/kpis/{UNKNOWN_SLUG}", persona)
    assert hidden[0] == 404
    assert hidden == unknown


@pytest.mark.parametrize("persona", PERSONAS)
async def test_rest_incident_kpis_lists_only_observations_of_visible_kpis(
    client: TestClient, persona: str
) -> None:
    for incident in (INC1, INC2):
        status, text = await rest(client, f"/incidents/{incident}/kpis", persona)
        assert status == 200
        body = json.loads(text)
        assert body["incident"]["id"] == incident
        found = [(o["kpiSlug"], o["value"]) for o in body["kpis"]]
        assert found == visible_observations(persona, incident)


@pytest.mark.parametrize("persona", PERSONAS)
async def test_rest_unknown_incident_is_a_404(client: TestClient, persona: str) -> None:
    status, text = await rest(client, "/incidents/INC-NOPE/kpis", persona)
    assert status == 404
    assert json.loads(text)["errors"][0]["extensions"]["code"] == "NOT_FOUND"


# --- no trace of the internal KPIs in any answer to an exec-only token ------------------------


async def every_answer(client: TestClient, persona: Any) -> str:
    """Return the raw text of the answers to every read path (and refused writes) for a persona."""
    texts = [await post_text(client, q, None, persona) for q in (INCIDENTS, SUMMARIES, REVISIONS)]
    texts.append(await post_text(client, VIEWER, None, persona))
    for visibility in (None, "EXEC", "INTERNAL"):
        texts.append(await post_text(client, KPIS, {"v": visibility}, persona))
    for slug in [*ALL_SLUGS, UNKNOWN_SLUG]:
        texts.append(await post_text(client, KPI, {"slug": slug}, persona))
        texts.append((await rest(client, f"/kpis/{slug}", persona))[1])
        texts.append(await post_text(client, UPDATE_KPI, {"slug": slug, "input": {}}, persona))
        texts.append(await post_text(client, MARK_REVIEWED, {"slug": slug}, persona))
        obs = {"input": observation_input(slug, INC1, "2026-04-01T00:00:00Z", 1.0)}
        texts.append(await post_text(client, RECORD_OBSERVATION, obs, persona))
    for incident in (INC1, INC2):
        texts.append(await post_text(client, INCIDENT_KPIS, {"id": incident}, persona))
        for slugs in (None, ALL_SLUGS, INTERNAL_SLUGS):
            variables = {"id": incident, "slugs": slugs}
            texts.append(await post_text(client, INCIDENT_KPIS_FILTERED, variables, persona))
        texts.append((await rest(client, f"/incidents/{incident}/kpis", persona))[1])
    texts.append((await rest(client, "/kpis", persona))[1])
    for query in (KPIS, INCIDENTS, SUMMARIES):
        texts.append(await get_text(client, query, persona))
    return "\n".join(texts)


@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_no_answer_to_an_exec_only_token_mentions_an_internal_kpi(
    client: TestClient, persona: str
) -> None:
    text = (await every_answer(client, persona)).lower()
    leaked = [secret for secret in SECRETS if secret.lower() in text]
    assert leaked == []


async def test_the_same_answers_to_a_responder_do_mention_the_internal_kpis(
    client: TestClient,
) -> None:
    # The control for the test above: the paths it searches do reach the internal KPIs.
    text = (await every_answer(client, "responder")).lower()
    assert [s for s in SECRETS if s.lower() not in text] == []


@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_kpi_made_internal_disappears_for_exec_only_tokens_on_every_path(
    client: TestClient, persona: str
) -> None:
    changed = {"slug": "mttr", "input": {"visibility": "INTERNAL"}, "note": "hide"}
    ok(await gql(client, UPDATE_KPI, changed, persona="admin"))
    kpis = ok(await gql(client, KPIS, persona=persona))["kpis"]
    assert [k["slug"] for k in kpis] == ["cadence-adherence", "stakeholder-satisfaction"]
    assert ok(await gql(client, KPI, {"slug": "mttr"}, persona=persona)) == {"kpi": None}
    data = ok(await gql(client, INCIDENTS, persona=persona))
    slugs = {o["kpi"]["slug"] for e in data["incidents"]["edges"] for o in e["node"]["kpis"]}
    assert slugs == {"stakeholder-satisfaction"}
    assert (await rest(client, "/kpis/mttr", persona))[0] == 404
    status, text = await rest(client, f"/incidents/{INC2}/kpis", persona)
    assert (status, json.loads(text)["kpis"]) == (200, [])


# --- mutations ----------------------------------------------------------------------------------

MUTATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "createKpiDefinition": (CREATE_KPI, {"input": canary_input("probe-kpi", "EXEC")}),
    "updateKpiDefinition": (
        UPDATE_KPI,
        {"slug": "mttr", "input": {"name": "Renamed MTTR"}, "note": "probe"},
    ),
    "markKpiReviewed": (MARK_REVIEWED, {"slug": "mttr"}),
    "upsertIncident": (
        UPSERT_INCIDENT,
        {
            "input": {
                "id": "INC-NEW",
                "title": "New",
                "severity": "P3",
                "detectedAt": "2026-04-01T00:00:00Z",
            }
        },
    ),
    "recordAlert": (
        "mutation ($input: AlertInput!) { recordAlert(input: $input) { id } }",
        {"input": {"incidentId": INC1, "issueTime": "2026-03-01T09:55:00Z", "source": "pager"}},
    ),
    "recordTimelineEvent": (
        "mutation ($input: TimelineEventInput!) { recordTimelineEvent(input: $input) { kind } }",
        {"input": {"incidentId": INC1, "kind": "phase", "occurredAt": "2026-03-01T10:05:00Z"}},
    ),
    "recordMilestone": (
        "mutation ($input: MilestoneInput!) { recordMilestone(input: $input) { name } }",
        {"input": {"incidentId": INC1, "name": "fix", "committedEta": "2026-03-01T12:00:00Z"}},
    ),
    "recordSurveyResponse": (
        "mutation ($input: SurveyResponseInput!) { recordSurveyResponse(input: $input) { score } }",
        {"input": {"incidentId": INC1, "score": 4, "submittedAt": "2026-03-03T00:00:00Z"}},
    ),
    "recordObservation": (
        RECORD_OBSERVATION,
        {"input": observation_input("mtta", INC1, "2026-04-01T00:00:00Z", 3.5)},
    ),
    "recordObservations": (
        RECORD_OBSERVATIONS,
        {"inputs": [observation_input("mttr", INC2, "2026-04-01T00:00:00Z", 60.0)]},
    ),
}
DEFINE_MUTATIONS = ("createKpiDefinition", "updateKpiDefinition", "markKpiReviewed")
INGEST_MUTATIONS = tuple(m for m in MUTATIONS if m not in DEFINE_MUTATIONS)
MAY_CALL: dict[str, tuple[str, ...]] = {
    "exec": (),
    "stakeholder": (),
    "responder": (),
    "ingest": INGEST_MUTATIONS,
    "admin": tuple(MUTATIONS),
}
REFUSED = [(p, m) for p in PERSONAS for m in MUTATIONS if m not in MAY_CALL[p]]
ALLOWED = [(p, m) for p in PERSONAS for m in MAY_CALL[p]]


async def assert_forbidden_and_nothing_written(
    client: TestClient, mutation: str, persona: Any
) -> None:
    query, variables = MUTATIONS[mutation]
    before = await snapshot()
    body = await gql(client, query, variables, persona=persona)
    assert codes(body) == ["FORBIDDEN"], mutation
    assert body["data"] is None, mutation
    assert await snapshot() == before, mutation


@pytest.mark.parametrize(("persona", "mutation"), REFUSED)
async def test_persona_is_forbidden_a_mutation_it_may_not_call_and_nothing_is_written(
    client: TestClient, persona: str, mutation: str
) -> None:
    await assert_forbidden_and_nothing_written(client, mutation, persona)


@pytest.mark.parametrize(("persona", "mutation"), ALLOWED)
async def test_persona_may_call_a_mutation_its_role_allows(
    client: TestClient, persona: str, mutation: str
) -> None:
    query, variables = MUTATIONS[mutation]
    before = await snapshot()
    data = ok(await gql(client, query, variables, persona=persona))
    assert all(value is not None for value in data.values())
    assert await snapshot() != before


@pytest.mark.parametrize("persona", ["ingest", "admin"])
async def test_ingest_and_admin_see_the_internal_kpi_of_an_observation_they_record(
    client: TestClient, persona: str
) -> None:
    query, variables = MUTATIONS["recordObservations"]
    variables = {"inputs": [observation_input(CANARY_SLUG, INC2, T2, 42.0)]}
    data = ok(await gql(client, query, variables, persona=persona))
    [observation] = data["recordObservations"]
    assert observation["kpi"] == {"slug": CANARY_SLUG, "visibility": "INTERNAL"}


@pytest.mark.parametrize("persona", ["exec", "stakeholder", "responder", "ingest"])
async def test_refusal_of_a_definition_change_is_the_same_for_internal_and_unknown_kpis(
    client: TestClient, persona: str
) -> None:
    answers = {
        slug: await post_text(client, UPDATE_KPI, {"slug": slug, "input": {"name": "x"}}, persona)
        for slug in (CANARY_SLUG, "mtta", "mttr", UNKNOWN_SLUG)
    }
    assert json.loads(answers["mttr"])["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert len(set(answers.values())) == 1, answers


# --- personas the service does not know ----------------------------------------------------------

BAD_PERSONAS: dict[str, Any] = {
    "unknown-name": "ceo",
    "empty-list": [],
    "number": 5,
    "object": {"name": "admin"},
    "list-of-unknown-names": ["ceo", "cfo"],
    "list-of-numbers": [5, 6],
    "missing": None,
}
READ_QUERIES: dict[str, tuple[str, dict[str, Any]]] = {
    "viewer": (VIEWER, {}),
    "kpis": (KPIS, {}),
    "kpi": (KPI, {"slug": "mttr"}),
    "incidents": (INCIDENTS, {}),
    "incident": (INCIDENT_KPIS, {"id": INC1}),
}
REST_PATHS = ["/kpis", "/kpis/mttr", f"/kpis/{UNKNOWN_SLUG}", f"/incidents/{INC1}/kpis"]


@pytest.mark.parametrize("persona", BAD_PERSONAS)
async def test_token_without_a_known_persona_is_forbidden_every_query(
    client: TestClient, persona: str
) -> None:
    for query, (text, variables) in READ_QUERIES.items():
        body = await gql(client, text, variables, persona=BAD_PERSONAS[persona])
        assert codes(body) == ["FORBIDDEN"], query
        assert body["data"] in (None, {query: None}), query


@pytest.mark.parametrize("persona", BAD_PERSONAS)
async def test_token_without_a_known_persona_is_forbidden_every_mutation(
    client: TestClient, persona: str
) -> None:
    for mutation in MUTATIONS:
        await assert_forbidden_and_nothing_written(client, mutation, BAD_PERSONAS[persona])


@pytest.mark.parametrize("persona", BAD_PERSONAS)
async def test_token_without_a_known_persona_gets_403_on_rest(
    client: TestClient, persona: str
) -> None:
    for path in REST_PATHS:
        status, text = await rest(client, path, BAD_PERSONAS[persona])
        assert status == 403, path
        [error] = json.loads(text)["errors"]
        assert error["extensions"] == {"code": "FORBIDDEN"}, path
        assert "mttr" not in text.lower()


# --- several personas in one token ---------------------------------------------------------------


async def test_persona_list_sees_the_union_of_its_personas_visibilities(
    client: TestClient,
) -> None:
    persona = ["exec", "responder"]
    data = ok(await gql(client, VIEWER, persona=persona))
    assert data["viewer"]["personas"] == ["EXEC", "RESPONDER"]
    assert data["viewer"]["visibilities"] == ["INTERNAL", "EXEC"]


async def test_persona_list_lists_the_internal_kpis_any_of_its_personas_may_see(
    client: TestClient,
) -> None:
    persona = ["exec", "responder"]
    data = ok(await gql(client, KPIS, persona=persona))
    assert [k["slug"] for k in data["kpis"]] == ALL_SLUGS
    status, text = await rest(client, f"/kpis/{CANARY_SLUG}", persona)
    assert (status, json.loads(text)["kpi"]["name"]) == (200, CANARY_NAME)


async def test_persona_list_of_readers_may_not_mutate(client: TestClient) -> None:
    await assert_forbidden_and_nothing_written(client, "upsertIncident", ["exec", "responder"])


async def test_persona_list_may_call_what_any_of_its_personas_may(client: TestClient) -> None:
    persona = ["exec", "ingest"]
    query, variables = MUTATIONS["upsertIncident"]
    assert ok(await gql(client, query, variables, persona=persona))["upsertIncident"]["id"]
    await assert_forbidden_and_nothing_written(client, "createKpiDefinition", persona)


async def test_unknown_names_in_a_persona_list_are_ignored(client: TestClient) -> None:
    persona = ["ceo", "exec", 7]
    data = ok(await gql(client, VIEWER, persona=persona))
    assert data["viewer"]["personas"] == ["EXEC"]
    assert ok(await gql(client, KPI, {"slug": "mtta"}, persona=persona)) == {"kpi": None}
