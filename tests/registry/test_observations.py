"""Recording KPI observations: targets, idempotent repeats, conflicts and all-or-nothing batches."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from registry.tables import KpiDefinition, KpiObservation
from tests.conftest import codes, gql, make_token

RECORD = """
mutation ($input: RecordObservationInput!) {
  recordObservation(input: $input) {
    kpi { slug }
    incident { id severity }
    timestamp value source confidence definitionVersion meetsTarget
  }
}
"""
RECORD_MANY = """
mutation ($inputs: [RecordObservationInput!]!) {
  recordObservations(inputs: $inputs) { kpi { slug } incident { id } timestamp value }
}
"""
UPSERT = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id } }"
INCIDENT_KPIS = """
query ($id: ID!) { incident(id: $id) { kpis { kpi { slug } timestamp value source } } }
"""

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(text: str) -> datetime:
    """Return the instant a response gives, asserting it is expressed in UTC."""
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == timedelta(0), f"{text} is not in UTC"
    return parsed


def observation(**fields: Any) -> dict[str, Any]:
    return {
        "kpiSlug": "mttr",
        "incidentId": "INC-P1",
        "timestamp": T0.isoformat(),
        "value": 100.0,
        "source": "import",
        **fields,
    }


def batch(count: int, **fields: Any) -> list[dict[str, Any]]:
    """Return `count` valid observations of one incident, a minute apart."""
    return [
        observation(timestamp=(T0 + timedelta(minutes=n)).isoformat(), value=float(n), **fields)
        for n in range(count)
    ]


async def record(client: Any, **fields: Any) -> dict[str, Any]:
    body = await gql(client, RECORD, {"input": observation(**fields)}, persona="ingest")
    assert "errors" not in body, body
    recorded: dict[str, Any] = body["data"]["recordObservation"]
    return recorded


async def stored() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await KpiObservation.select(
        KpiObservation.kpi,
        KpiObservation.incident.key.as_alias("incident"),
        KpiObservation.timestamp,
        KpiObservation.value,
        KpiObservation.source,
        KpiObservation.confidence,
        KpiObservation.definition_version,
    ).order_by(KpiObservation.id)
    return rows


@pytest.fixture(autouse=True)
async def incidents(client) -> None:
    for severity in ("P1", "P2", "P3", "P4"):
        body = await gql(
            client,
            UPSERT,
            {
                "input": {
                    "id": f"INC-{severity}",
                    "title": f"A {severity} incident",
                    "severity": severity,
                    "detectedAt": "2026-01-01T10:00:00Z",
                }
            },
            persona="ingest",
        )
        assert "errors" not in body, body


# --- one observation -------------------------------------------------------------------------


async def test_record_observation_returns_it_with_its_kpi_and_incident(client) -> None:
    recorded = await record(
        client,
        kpiSlug="mttr",
        incidentId="INC-P1",
        timestamp="2026-01-01T14:00:00+02:00",
        value=95.5,
        source="manual",
        confidence=0.75,
    )
    assert recorded["kpi"] == {"slug": "mttr"}
    assert recorded["incident"] == {"id": "INC-P1", "severity": "P1"}
    assert at(recorded["timestamp"]) == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert (recorded["value"], recorded["source"], recorded["confidence"]) == (95.5, "manual", 0.75)
    assert recorded["definitionVersion"] is None
    assert recorded["meetsTarget"] is True
    assert await stored() == [
        {
            "kpi": "mttr",
            "incident": "INC-P1",
            "timestamp": datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
            "value": 95.5,
            "source": "manual",
            "confidence": 0.75,
            "definition_version": None,
        }
    ]
    body = await gql(client, INCIDENT_KPIS, {"id": "INC-P1"}, persona="responder")
    kpis = body["data"]["incident"]["kpis"]
    assert [(k["kpi"]["slug"], at(k["timestamp"]), k["value"]) for k in kpis] == [
        ("mttr", datetime(2026, 1, 1, 12, 0, tzinfo=UTC), 95.5)
    ]


@pytest.mark.parametrize(
    ("slug", "severity", "value", "meets"),
    [
        ("mttr", "P1", 119.0, True),
        ("mttr", "P1", 120.0, True),
        ("mttr", "P1", 120.5, False),
        ("mttr", "P2", 130.0, True),
        ("mttr", "P2", 240.0, True),
        ("mttr", "P2", 241.0, False),
        ("mttr", "P3", 5.0, None),
        ("mttr", "P4", 5000.0, None),
        ("cadence-adherence", "P1", 90.0, True),
        ("cadence-adherence", "P2", 89.9, False),
        ("cadence-adherence", "P3", 95.0, True),
        ("cadence-adherence", "P4", 10.0, False),
    ],
    ids=[
        "mttr-p1-under",
        "mttr-p1-at-threshold",
        "mttr-p1-over",
        "mttr-p2-uses-its-own-target",
        "mttr-p2-at-threshold",
        "mttr-p2-over",
        "mttr-p3-no-target",
        "mttr-p4-no-target",
        "adherence-p1-at-threshold",
        "adherence-p2-under",
        "adherence-p3-over",
        "adherence-p4-under",
    ],
)
async def test_meets_target_uses_the_incident_severity_target(
    client, slug, severity, value, meets
) -> None:
    recorded = await record(client, kpiSlug=slug, incidentId=f"INC-{severity}", value=value)
    assert recorded["meetsTarget"] is meets


async def test_confidence_defaults_to_one(client) -> None:
    given = observation()
    assert "confidence" not in given
    recorded = await record(client)
    assert recorded["confidence"] == 1.0
    assert [row["confidence"] for row in await stored()] == [1.0]


@pytest.mark.parametrize("confidence", [0.0, 1.0, 0.5])
async def test_confidence_bounds_are_accepted(client, confidence) -> None:
    recorded = await record(client, confidence=confidence)
    assert recorded["confidence"] == confidence


async def test_an_internal_kpi_may_be_recorded_by_ingest(client) -> None:
    recorded = await record(client, kpiSlug="mtta", value=8.0)
    assert recorded["kpi"] == {"slug": "mtta"}
    assert recorded["meetsTarget"] is True


async def test_recording_the_identical_observation_twice_keeps_one_row(client) -> None:
    first = await record(client, value=42.0)
    second = await record(client, value=42.0)
    assert second == first
    assert await KpiObservation.count() == 1


async def test_a_repeat_with_the_same_value_but_another_source_keeps_the_original(client) -> None:
    await record(client, value=42.0, source="import", confidence=0.5)
    await record(client, value=42.0, source="manual", confidence=0.9)
    rows = await stored()
    assert [(r["value"], r["source"], r["confidence"]) for r in rows] == [(42.0, "import", 0.5)]


async def test_the_same_key_with_another_value_is_a_conflict_and_keeps_the_original(
    client,
) -> None:
    await record(client, value=42.0)
    body = await gql(client, RECORD, {"input": observation(value=43.0)}, persona="ingest")
    assert codes(body) == ["CONFLICT"]
    assert body["data"] is None
    assert [r["value"] for r in await stored()] == [42.0]
    kpis = (await gql(client, INCIDENT_KPIS, {"id": "INC-P1"}))["data"]["incident"]["kpis"]
    assert [k["value"] for k in kpis] == [42.0]


async def test_the_same_instant_with_another_offset_is_the_same_key(client) -> None:
    await record(client, timestamp="2026-01-01T10:00:00+02:00", value=7.0)
    repeat = await record(client, timestamp="2026-01-01T08:00:00Z", value=7.0)
    assert at(repeat["timestamp"]) == datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    assert await KpiObservation.count() == 1
    body = await gql(
        client,
        RECORD,
        {"input": observation(timestamp="2026-01-01T03:00:00-05:00", value=8.0)},
        persona="ingest",
    )
    assert codes(body) == ["CONFLICT"]
    assert [r["value"] for r in await stored()] == [7.0]


async def test_the_key_includes_kpi_and_incident(client) -> None:
    await record(client, kpiSlug="mttr", incidentId="INC-P1", value=1.0)
    await record(client, kpiSlug="mtta", incidentId="INC-P1", value=2.0)
    await record(client, kpiSlug="mttr", incidentId="INC-P2", value=3.0)
    rows = await stored()
    assert [(r["kpi"], r["incident"], r["value"]) for r in rows] == [
        ("mttr", "INC-P1", 1.0),
        ("mtta", "INC-P1", 2.0),
        ("mttr", "INC-P2", 3.0),
    ]


# --- batches ---------------------------------------------------------------------------------


async def test_a_batch_of_1000_is_written_whole(client) -> None:
    inputs = batch(1000)
    body = await gql(client, RECORD_MANY, {"inputs": inputs}, persona="ingest")
    assert "errors" not in body, body
    recorded = body["data"]["recordObservations"]
    assert len(recorded) == 1000
    assert [r["value"] for r in recorded] == [float(n) for n in range(1000)]
    assert at(recorded[-1]["timestamp"]) == T0 + timedelta(minutes=999)
    assert recorded[0]["kpi"] == {"slug": "mttr"}
    assert recorded[0]["incident"] == {"id": "INC-P1"}
    assert await KpiObservation.count() == 1000


async def test_a_batch_may_mix_kpis_and_incidents(client) -> None:
    inputs = [
        observation(kpiSlug="mttr", incidentId="INC-P1", value=1.0),
        observation(kpiSlug="cadence-adherence", incidentId="INC-P3", value=2.0),
        observation(kpiSlug="mtta", incidentId="INC-P2", value=3.0),
    ]
    body = await gql(client, RECORD_MANY, {"inputs": inputs}, persona="ingest")
    assert "errors" not in body, body
    assert [
        (r["kpi"]["slug"], r["incident"]["id"]) for r in body["data"]["recordObservations"]
    ] == [
        ("mttr", "INC-P1"),
        ("cadence-adherence", "INC-P3"),
        ("mtta", "INC-P2"),
    ]
    assert await KpiObservation.count() == 3


@pytest.mark.parametrize("count", [0, 1001], ids=["empty", "over-1000"])
async def test_a_batch_outside_1_to_1000_is_bad_user_input(client, count) -> None:
    body = await gql(client, RECORD_MANY, {"inputs": batch(count)}, persona="ingest")
    assert codes(body) == ["BAD_USER_INPUT"]
    if count > 1000:  # the list limit refuses the request before anything runs
        assert "data" not in body
    else:
        assert body["data"] is None
    assert await KpiObservation.count() == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"kpiSlug": "no-such-kpi"},
        {"incidentId": "INC-404"},
        {"confidence": 1.5},
        {"confidence": -0.1},
        {"timestamp": "2026-01-02T00:00:00"},
        {"source": ""},
        {"source": "s" * 65},
    ],
    ids=[
        "unknown-slug",
        "unknown-incident",
        "confidence-above-1",
        "confidence-below-0",
        "naive-timestamp",
        "empty-source",
        "source-too-long",
    ],
)
async def test_a_batch_whose_last_item_is_bad_writes_nothing(client, bad) -> None:
    inputs = [*batch(4), observation(**{"timestamp": "2026-02-01T00:00:00Z", **bad})]
    body = await gql(client, RECORD_MANY, {"inputs": inputs}, persona="ingest")
    assert codes(body) == ["BAD_USER_INPUT"]
    if "timestamp" in bad:  # the variable does not coerce: a request error, so nothing ran
        assert "data" not in body
    else:
        assert body["data"] is None
    assert await KpiObservation.count() == 0


async def post_raw(client: Any, text: str) -> dict[str, Any]:
    """POST a request body as given (so it may hold JSON numbers Python would not write)."""
    response = await client.post(
        "/graphql",
        data=text,
        headers={
            "Authorization": f"Bearer {make_token('ingest')}",
            "Content-Type": "application/json",
        },
    )
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


@pytest.mark.parametrize("number", ["1e309", "-1e309"])
async def test_a_batch_whose_last_value_overflows_json_writes_nothing(client, number) -> None:
    """JSON 1e309 parses to infinity; the Float variable must refuse it, not store it."""
    inputs = [*batch(4), observation(timestamp="2026-02-01T00:00:00Z", value="OVERFLOW")]
    text = json.dumps({"query": RECORD_MANY, "variables": {"inputs": inputs}})
    body = await post_raw(client, text.replace('"OVERFLOW"', number))
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert "data" not in body  # the variable does not coerce: a request error
    assert await KpiObservation.count() == 0


@pytest.mark.parametrize("number", ["1e309", "-1e309"])
async def test_an_overflowing_value_literal_is_bad_user_input(client, number) -> None:
    """A GraphQL literal 1e309 parses to infinity too; the service must refuse it."""
    query = f"""
    mutation {{
      recordObservations(inputs: [
        {{kpiSlug: "mttr", incidentId: "INC-P1", timestamp: "2026-01-01T00:00:00Z",
          value: 1, source: "import"}},
        {{kpiSlug: "mttr", incidentId: "INC-P1", timestamp: "2026-01-01T00:01:00Z",
          value: {number}, source: "import"}}
      ]) {{ value }}
    }}
    """
    body = await gql(client, query, persona="ingest")
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert body["data"] is None
    assert await KpiObservation.count() == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
async def test_a_non_finite_variable_is_bad_user_input(client, value) -> None:
    # json.dumps writes NaN / Infinity, which Python's JSON parser on the server accepts.
    body = await gql(client, RECORD, {"input": observation(value=value)}, persona="ingest")
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert await KpiObservation.count() == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("2026-01-01T12:00:00Z", "2026-01-01T12:00:00Z"),
        ("2026-01-01T10:00:00-02:00", "2026-01-01T14:00:00+02:00"),
    ],
    ids=["same-text", "same-instant-other-offsets"],
)
async def test_a_batch_with_two_values_for_one_key_is_a_conflict(client, first, second) -> None:
    inputs = [
        observation(timestamp="2026-01-01T00:00:00Z", value=1.0),
        observation(timestamp=first, value=2.0),
        observation(timestamp=second, value=3.0),
    ]
    body = await gql(client, RECORD_MANY, {"inputs": inputs}, persona="ingest")
    assert codes(body) == ["CONFLICT"]
    assert body["data"] is None
    assert await KpiObservation.count() == 0


async def test_a_batch_repeating_one_observation_writes_it_once(client) -> None:
    inputs = [
        observation(timestamp="2026-01-01T12:00:00Z", value=2.0),
        observation(timestamp="2026-01-01T14:00:00+02:00", value=2.0),
        observation(timestamp="2026-01-01T13:00:00Z", value=3.0),
    ]
    body = await gql(client, RECORD_MANY, {"inputs": inputs}, persona="ingest")
    assert "errors" not in body, body
    assert [r["value"] for r in body["data"]["recordObservations"]] == [2.0, 2.0, 3.0]
    assert [r["value"] for r in await stored()] == [2.0, 3.0]


async def test_a_batch_conflicting_with_a_stored_row_writes_nothing(client) -> None:
    await record(client, timestamp="2026-01-01T12:00:00Z", value=42.0)
    inputs = [
        observation(timestamp="2026-01-01T11:00:00Z", value=1.0),
        observation(timestamp="2026-01-01T13:00:00+01:00", value=43.0),  # 12:00Z, stored as 42
        observation(timestamp="2026-01-01T13:00:00Z", value=3.0),
    ]
    body = await gql(client, RECORD_MANY, {"inputs": inputs}, persona="ingest")
    assert codes(body) == ["CONFLICT"]
    assert body["data"] is None
    rows = await stored()
    assert [(r["timestamp"], r["value"]) for r in rows] == [
        (datetime(2026, 1, 1, 12, 0, tzinfo=UTC), 42.0)
    ]


async def test_a_batch_repeating_a_stored_row_writes_only_the_new_ones(client) -> None:
    await record(client, timestamp="2026-01-01T12:00:00Z", value=42.0, source="first")
    inputs = [
        observation(timestamp="2026-01-01T11:00:00Z", value=1.0),
        observation(timestamp="2026-01-01T12:00:00Z", value=42.0, source="second"),
    ]
    body = await gql(client, RECORD_MANY, {"inputs": inputs}, persona="ingest")
    assert "errors" not in body, body
    rows = await stored()
    assert [(r["value"], r["source"]) for r in rows] == [(42.0, "first"), (1.0, "import")]


# --- the range a KPI value may take -----------------------------------------------------------


@pytest.mark.parametrize("value", [1.7e308, -1.7e308, 1e12 + 1, -1.000001e12], ids=repr)
async def test_a_value_beyond_a_trillion_is_bad_user_input_and_writes_nothing(
    client, value
) -> None:
    body = await gql(client, RECORD, {"input": observation(value=value)}, persona="ingest")
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert "value must be between" in body["errors"][0]["message"]
    inputs = [*batch(3), observation(timestamp="2026-02-01T00:00:00Z", value=value)]
    body = await gql(client, RECORD_MANY, {"inputs": inputs}, persona="ingest")
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert await KpiObservation.count() == 0


@pytest.mark.parametrize("persona", ["exec", "stakeholder", "responder", "admin"])
async def test_the_largest_values_keep_every_aggregate_finite(client, persona) -> None:
    # Two observations of 1.7e308 once made every exec dashboard answer INTERNAL.
    for incident in ("INC-P1", "INC-P2"):
        await record(client, incidentId=incident, value=1e12)
    await record(client, incidentId="INC-P3", value=-1e12)
    body = await gql(
        client,
        '{ kpi(slug: "mttr") { summary { count value } series(bucket: DAY, '
        'from: "2026-01-01T00:00:00Z", to: "2026-01-02T00:00:00Z") { count mean p50 p90 } } }',
        persona=persona,
    )
    assert "errors" not in body, body
    kpi = body["data"]["kpi"]
    assert kpi["summary"] == {"count": 3, "value": 1e12 / 3}
    assert kpi["series"] == [{"count": 3, "mean": 1e12 / 3, "p50": 1e12, "p90": 1e12}]


@pytest.mark.parametrize("threshold", [1e13, -1.7e308])
async def test_a_target_beyond_a_trillion_is_bad_user_input(client, threshold) -> None:
    versions = await KpiDefinition.select(KpiDefinition.version)
    body = await gql(
        client,
        'mutation ($t: Float!) { updateKpiDefinition(slug: "mttr", input: {targets: '
        "[{comparison: AT_MOST, threshold: $t}]}) { version } }",
        {"t": threshold},
    )
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert await KpiDefinition.select(KpiDefinition.version) == versions
