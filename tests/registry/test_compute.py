"""Computed observations: the seed formulas by hand, live recompute, backfill, and the CLI.

Incident data goes in through the ingest mutations with an ingest token; definitions and backfill
are an admin's. Rows are read back both through the API and straight from the table, so a test
sees stale or duplicated rows that the API might hide.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from registry.tables import Incident, KpiDefinition, KpiObservation, KpiRevision
from tests.conftest import DATABASE_URL, TEST_SECRET, codes, gql

MIM = str(Path(sys.executable).parent / "mim")
ROOT = Path(__file__).resolve().parents[2]
SEEDS = ("cadence-adherence", "mtta", "mttr", "stakeholder-satisfaction")

UPSERT = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id resolvedAt } }"
ALERT = "mutation ($input: AlertInput!) { recordAlert(input: $input) { id } }"
EVENT = "mutation ($input: TimelineEventInput!) { recordTimelineEvent(input: $input) { kind } }"
MILESTONE = "mutation ($input: MilestoneInput!) { recordMilestone(input: $input) { name } }"
SURVEY = "mutation ($input: SurveyResponseInput!) { recordSurveyResponse(input: $input) { score } }"
RECORD = """
mutation ($input: RecordObservationInput!) {
  recordObservation(input: $input) { timestamp value source definitionVersion }
}
"""
INCIDENT_KPIS = """
query ($id: ID!, $slugs: [String!]) {
  incident(id: $id) {
    kpis(slugs: $slugs) { kpi { slug } timestamp value source confidence definitionVersion }
  }
}
"""
BACKFILL = """
mutation ($slug: String!) {
  backfillKpi(slug: $slug) { kpiSlug incidentsScanned observationsWritten skipped }
}
"""
CREATE = """
mutation ($input: CreateKpiDefinitionInput!) {
  createKpiDefinition(input: $input) { slug expression version }
}
"""
UPDATE = """
mutation ($slug: String!, $input: UpdateKpiDefinitionInput!) {
  updateKpiDefinition(slug: $slug, input: $input) { slug expression version }
}
"""
KPI = """
query ($slug: String!) {
  kpi(slug: $slug) { slug expression version revisions { version changes { field after } } }
}
"""

DAY = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday


def at(hour: int, minute: int = 0, day: int = 0) -> datetime:
    """Return 2026-03-02 (plus `day` days) at hour:minute UTC."""
    return DAY + timedelta(days=day, hours=hour, minutes=minute)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def parse(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() is not None, text
    return parsed.astimezone(UTC)


# --- ingest helpers ------------------------------------------------------------------------


async def ok(client: Any, query: str, variables: dict[str, Any], persona: str = "ingest") -> Any:
    body = await gql(client, query, variables, persona=persona)
    assert "errors" not in body, body
    return body["data"]


async def incident(
    client: Any,
    key: str,
    detected: datetime,
    resolved: datetime | None = None,
    severity: str = "P2",
) -> None:
    await ok(
        client,
        UPSERT,
        {
            "input": {
                "id": key,
                "title": f"Incident {key}",
                "severity": severity,
                "detectedAt": iso(detected),
                "resolvedAt": iso(resolved),
            }
        },
    )


async def alert(client: Any, key: str, issued: datetime) -> None:
    await ok(client, ALERT, {"input": {"incidentId": key, "issueTime": iso(issued)}})


async def phase(client: Any, key: str, name: str, occurred: datetime) -> None:
    await ok(
        client,
        EVENT,
        {"input": {"incidentId": key, "kind": "phase", "phase": name, "occurredAt": iso(occurred)}},
    )


async def milestone(
    client: Any, key: str, name: str, eta: datetime, delivered: datetime | None = None
) -> None:
    await ok(
        client,
        MILESTONE,
        {
            "input": {
                "incidentId": key,
                "name": name,
                "committedEta": iso(eta),
                "deliveredAt": iso(delivered),
            }
        },
    )


async def survey(client: Any, key: str, score: int, submitted: datetime) -> None:
    await ok(
        client,
        SURVEY,
        {"input": {"incidentId": key, "score": score, "submittedAt": iso(submitted)}},
    )


async def record(
    client: Any, slug: str, key: str, stamp: datetime, value: float, source: str = "manual"
) -> dict[str, Any]:
    data = await ok(
        client,
        RECORD,
        {
            "input": {
                "kpiSlug": slug,
                "incidentId": key,
                "timestamp": iso(stamp),
                "value": value,
                "source": source,
            }
        },
    )
    recorded: dict[str, Any] = data["recordObservation"]
    return recorded


async def api_kpis(
    client: Any, key: str, slug: str | None = None, persona: str = "admin"
) -> list[dict[str, Any]]:
    """Return an incident's observations (of one KPI) as the API gives them."""
    variables: dict[str, Any] = {"id": key, "slugs": None if slug is None else [slug]}
    data = await ok(client, INCIDENT_KPIS, variables, persona=persona)
    assert data["incident"] is not None, key
    found: list[dict[str, Any]] = data["incident"]["kpis"]
    return found


async def stored(slug: str | None = None) -> list[tuple[Any, ...]]:
    """Return every stored observation (of one KPI) as sorted, comparable tuples."""
    keys = {row["id"]: row["key"] for row in await Incident.select(Incident.id, Incident.key)}
    query = KpiObservation.select()
    if slug is not None:
        query = query.where(KpiObservation.kpi == slug)
    rows = await query
    return sorted(
        (
            row["kpi"],
            keys[row["incident"]],
            _utc(row["timestamp"]),
            row["value"],
            row["source"],
            row["confidence"],
            row["definition_version"],
        )
        for row in rows
    )


async def stored_full() -> list[dict[str, Any]]:
    """Return every stored observation with every column, by id."""
    rows: list[dict[str, Any]] = await KpiObservation.select().order_by(KpiObservation.id)
    for row in rows:
        row["timestamp"] = _utc(row["timestamp"])
        row["recorded_at"] = _utc(row["recorded_at"])
    return rows


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


async def drop_computed() -> None:
    await KpiObservation.delete().where(KpiObservation.source == "computed")


def computed_row(
    slug: str, key: str, stamp: datetime, value: float, version: int = 2
) -> tuple[Any, ...]:
    """The stored tuple of a computed observation (confidence is checked separately)."""
    return (slug, key, stamp, value, "computed", 1.0, version)


def assert_computed(
    found: list[dict[str, Any]], slug: str, stamp: datetime, value: float, version: int = 2
) -> None:
    """Assert the API shows exactly one computed observation of `slug`, with these fields."""
    rows = [o for o in found if o["kpi"]["slug"] == slug]
    assert len(rows) == 1, found
    (row,) = rows
    assert row["source"] == "computed"
    assert row["definitionVersion"] == version
    assert 0.0 <= row["confidence"] <= 1.0
    assert parse(row["timestamp"]) == stamp
    assert row["value"] == pytest.approx(value, rel=1e-12, abs=1e-12)


# --- the seed KPIs by hand -----------------------------------------------------------------


async def test_seed_definitions_carry_their_expressions_at_version_2(client: Any) -> None:
    for slug in SEEDS:
        data = await ok(client, KPI, {"slug": slug}, persona="admin")
        assert data["kpi"]["expression"], slug
        assert data["kpi"]["version"] == 2
        assert data["kpi"]["revisions"][0]["version"] == 2
        assert [c["field"] for c in data["kpi"]["revisions"][0]["changes"]] == ["expression"]


async def test_mttr_is_minutes_from_detection_to_resolution_at_the_resolution_time(
    client: Any,
) -> None:
    await incident(client, "INC-1", at(10), at(11, 30))
    assert_computed(await api_kpis(client, "INC-1", "mttr"), "mttr", at(11, 30), 90.0)
    assert await stored("mttr") == [computed_row("mttr", "INC-1", at(11, 30), 90.0)]


async def test_mttr_across_days_and_with_offsets_is_exact(client: Any) -> None:
    # detected 23:15+02:00 (21:15Z), resolved next day 01:02:30Z: 165 + 62.5 minutes.
    detected = datetime.fromisoformat("2026-03-02T23:15:00+02:00")
    resolved = at(1, 2, day=1) + timedelta(seconds=30)
    await incident(client, "INC-1", detected, resolved)
    assert_computed(await api_kpis(client, "INC-1", "mttr"), "mttr", resolved, 227.5)


async def test_mtta_runs_from_the_first_alert_to_the_first_gather_entry(client: Any) -> None:
    await incident(client, "INC-1", at(10))
    await alert(client, "INC-1", at(10, 1))
    await alert(client, "INC-1", at(9, 58))  # recorded later, issued first
    await phase(client, "INC-1", "triage", at(10, 3))
    await phase(client, "INC-1", "gather", at(10, 6))
    await phase(client, "INC-1", "gather", at(10, 40))  # a re-entry changes nothing
    assert_computed(await api_kpis(client, "INC-1", "mtta"), "mtta", at(10, 6), 8.0)
    assert await stored("mtta") == [computed_row("mtta", "INC-1", at(10, 6), 8.0)]


async def test_mtta_uses_the_earliest_gather_entry_even_when_recorded_last(client: Any) -> None:
    await incident(client, "INC-1", at(10))
    await alert(client, "INC-1", at(9, 58))
    await phase(client, "INC-1", "gather", at(10, 30))
    await phase(client, "INC-1", "gather", at(10, 6))
    assert_computed(await api_kpis(client, "INC-1", "mtta"), "mtta", at(10, 6), 8.0)
    assert await stored("mtta") == [computed_row("mtta", "INC-1", at(10, 6), 8.0)]


async def test_cadence_adherence_is_the_percentage_of_milestones_on_or_before_eta(
    client: Any,
) -> None:
    await incident(client, "INC-1", at(10))
    await milestone(client, "INC-1", "status page", at(11), at(10, 50))  # early
    await milestone(client, "INC-1", "first update", at(12), at(12))  # exactly on time
    await milestone(client, "INC-1", "postmortem", at(13), at(13, 30))  # late
    found = await api_kpis(client, "INC-1", "cadence-adherence")
    # as of the latest data the formula read: the latest committed ETA (the late delivery is
    # not among the milestones the filter kept).
    assert_computed(found, "cadence-adherence", at(13), 200 / 3)
    rows = await stored("cadence-adherence")
    assert len(rows) == 1
    assert rows[0][3] == pytest.approx(66.66666666666667, rel=1e-12)


async def test_stakeholder_satisfaction_is_the_mean_score(client: Any) -> None:
    await incident(client, "INC-1", at(10))
    await survey(client, "INC-1", 4, at(12))
    await survey(client, "INC-1", 5, at(14))
    await survey(client, "INC-1", 3, at(13))
    found = await api_kpis(client, "INC-1", "stakeholder-satisfaction")
    assert_computed(found, "stakeholder-satisfaction", at(14), 4.0)
    assert await stored("stakeholder-satisfaction") == [
        computed_row("stakeholder-satisfaction", "INC-1", at(14), 4.0)
    ]


async def test_all_four_seed_kpis_for_one_incident(client: Any) -> None:
    await incident(client, "INC-1", at(10), at(11, 30), severity="P1")
    await alert(client, "INC-1", at(9, 58))
    await alert(client, "INC-1", at(10, 1))
    await phase(client, "INC-1", "gather", at(10, 6))
    await milestone(client, "INC-1", "a", at(11), at(10, 50))
    await milestone(client, "INC-1", "b", at(12), at(12))
    await milestone(client, "INC-1", "c", at(13), at(13, 30))
    for score, minute in ((4, 0), (5, 10), (3, 20)):
        await survey(client, "INC-1", score, at(15, minute))
    assert await stored() == [
        computed_row("cadence-adherence", "INC-1", at(13), 200 / 3),
        computed_row("mtta", "INC-1", at(10, 6), 8.0),
        computed_row("mttr", "INC-1", at(11, 30), 90.0),
        computed_row("stakeholder-satisfaction", "INC-1", at(15, 20), 4.0),
    ]


async def test_missing_data_gives_no_row_for_any_seed_kpi(client: Any) -> None:
    # Unresolved, no alerts, no milestones, no surveys: nothing to compute.
    await incident(client, "INC-1", at(10))
    # Alerts but never in gather; a milestone-free, survey-free incident.
    await incident(client, "INC-2", at(10))
    await alert(client, "INC-2", at(10, 1))
    await phase(client, "INC-2", "triage", at(10, 5))
    # Entered gather but no alert was ever issued.
    await incident(client, "INC-3", at(10))
    await phase(client, "INC-3", "gather", at(10, 5))
    for key in ("INC-1", "INC-2", "INC-3"):
        assert await api_kpis(client, key) == []
    assert await stored() == []


async def test_an_undelivered_milestone_counts_against_adherence(client: Any) -> None:
    await incident(client, "INC-1", at(10))
    await milestone(client, "INC-1", "a", at(11), at(10, 30))
    await milestone(client, "INC-1", "b", at(12))
    assert_computed(
        await api_kpis(client, "INC-1", "cadence-adherence"), "cadence-adherence", at(12), 50.0
    )


async def test_a_zero_mttr_is_a_value_not_missing_data(client: Any) -> None:
    await incident(client, "INC-1", at(10), at(10))
    assert await stored("mttr") == [computed_row("mttr", "INC-1", at(10), 0.0)]


async def test_sub_second_times_compute_exactly_and_recompute_to_the_same_key(
    client: Any,
) -> None:
    resolved = at(11, 30) + timedelta(microseconds=250_000)
    await incident(client, "INC-1", at(10), resolved)
    await incident(client, "INC-1", at(10), resolved)
    assert await stored("mttr") == [computed_row("mttr", "INC-1", resolved, 90 + 0.25 / 60)]
    assert (await backfill(client, "mttr"))["observationsWritten"] == 0
    assert await stored("mttr") == [computed_row("mttr", "INC-1", resolved, 90 + 0.25 / 60)]


async def test_exec_personas_see_computed_rows_of_exec_kpis_only(client: Any) -> None:
    await incident(client, "INC-1", at(10), at(11, 30))
    await alert(client, "INC-1", at(9, 58))
    await phase(client, "INC-1", "gather", at(10, 6))
    for persona in ("exec", "stakeholder"):
        found = await api_kpis(client, "INC-1", persona=persona)
        assert [o["kpi"]["slug"] for o in found] == ["mttr"]
        assert await api_kpis(client, "INC-1", "mtta", persona=persona) == []
    for persona in ("responder", "ingest", "admin"):
        found = await api_kpis(client, "INC-1", persona=persona)
        assert sorted(o["kpi"]["slug"] for o in found) == ["mtta", "mttr"]


# --- live recompute ------------------------------------------------------------------------


async def test_resolving_later_creates_mttr_and_moving_resolution_moves_the_row(
    client: Any,
) -> None:
    await incident(client, "INC-1", at(10))
    assert await stored("mttr") == []

    await incident(client, "INC-1", at(10), at(11, 30))
    assert await stored("mttr") == [computed_row("mttr", "INC-1", at(11, 30), 90.0)]

    await incident(client, "INC-1", at(10), at(12))
    assert await stored("mttr") == [computed_row("mttr", "INC-1", at(12), 120.0)]
    assert_computed(await api_kpis(client, "INC-1", "mttr"), "mttr", at(12), 120.0)

    # the same data again: the same key, the same single row
    await incident(client, "INC-1", at(10), at(12))
    assert await stored("mttr") == [computed_row("mttr", "INC-1", at(12), 120.0)]

    # detection moves: same resolution timestamp, new value
    await incident(client, "INC-1", at(9), at(12))
    assert await stored("mttr") == [computed_row("mttr", "INC-1", at(12), 180.0)]

    # reopened: the data no longer gives a value, so no computed row remains
    await incident(client, "INC-1", at(9))
    assert await stored("mttr") == []


async def test_the_ingest_mutations_own_answer_already_holds_the_recomputed_row(
    client: Any,
) -> None:
    query = """
    mutation ($input: IncidentInput!) {
      upsertIncident(input: $input) { kpis(slugs: ["mttr"]) { value source timestamp } }
    }
    """
    variables = {
        "input": {
            "id": "INC-1",
            "title": "t",
            "severity": "P1",
            "detectedAt": iso(at(10)),
            "resolvedAt": iso(at(11, 30)),
        }
    }
    data = await ok(client, query, variables)
    (row,) = data["upsertIncident"]["kpis"]
    assert (row["value"], row["source"], parse(row["timestamp"])) == (90.0, "computed", at(11, 30))


async def test_recompute_of_one_incident_leaves_other_incidents_alone(client: Any) -> None:
    await incident(client, "INC-1", at(10), at(11))
    await incident(client, "INC-2", at(10), at(10, 30))
    (inc2,) = await Incident.select(Incident.id).where(Incident.key == "INC-2")
    before = [r for r in await stored_full() if r["incident"] == inc2["id"]]
    await incident(client, "INC-1", at(10), at(11, 15))
    # INC-2's row is untouched, down to its id and recording time
    assert [r for r in await stored_full() if r["incident"] == inc2["id"]] == before
    assert await stored("mttr") == [
        computed_row("mttr", "INC-1", at(11, 15), 75.0),
        computed_row("mttr", "INC-2", at(10, 30), 30.0),
    ]


async def test_mtta_appears_when_gather_is_entered_and_moves_with_an_earlier_alert(
    client: Any,
) -> None:
    await incident(client, "INC-1", at(10))
    await alert(client, "INC-1", at(10, 1))
    assert await stored("mtta") == []
    await phase(client, "INC-1", "gather", at(10, 6))
    assert await stored("mtta") == [computed_row("mtta", "INC-1", at(10, 6), 5.0)]
    await alert(client, "INC-1", at(9, 58))
    assert await stored("mtta") == [computed_row("mtta", "INC-1", at(10, 6), 8.0)]


async def test_delivering_a_milestone_changes_cadence_adherence(client: Any) -> None:
    await incident(client, "INC-1", at(10))
    await milestone(client, "INC-1", "a", at(11))
    await milestone(client, "INC-1", "b", at(12), at(11, 30))
    assert await stored("cadence-adherence") == [
        computed_row("cadence-adherence", "INC-1", at(12), 50.0)
    ]
    await milestone(client, "INC-1", "a", at(11), at(10, 55))  # upsert by (incident, name)
    assert await stored("cadence-adherence") == [
        computed_row("cadence-adherence", "INC-1", at(12), 100.0)
    ]
    # a third, later milestone delivered late: 2 of 3, as of its ETA
    await milestone(client, "INC-1", "c", at(14), at(15))
    rows = await stored("cadence-adherence")
    assert len(rows) == 1
    assert rows[0][:3] == ("cadence-adherence", "INC-1", at(14))
    assert rows[0][3] == pytest.approx(200 / 3)


async def test_a_new_survey_changes_the_mean_and_leaves_one_row(client: Any) -> None:
    await incident(client, "INC-1", at(10))
    await survey(client, "INC-1", 4, at(12))
    assert await stored("stakeholder-satisfaction") == [
        computed_row("stakeholder-satisfaction", "INC-1", at(12), 4.0)
    ]
    await survey(client, "INC-1", 1, at(13))
    assert await stored("stakeholder-satisfaction") == [
        computed_row("stakeholder-satisfaction", "INC-1", at(13), 2.5)
    ]
    await survey(client, "INC-1", 4, at(11))  # submitted earlier: the as-of stays at 13:00
    assert await stored("stakeholder-satisfaction") == [
        computed_row("stakeholder-satisfaction", "INC-1", at(13), 3.0)
    ]


async def test_a_rejected_ingest_mutation_writes_no_computed_row(client: Any) -> None:
    await incident(client, "INC-1", at(10))
    body = await gql(
        client,
        SURVEY,
        {"input": {"incidentId": "INC-1", "score": 9, "submittedAt": iso(at(12))}},
        persona="ingest",
    )
    assert codes(body) == ["BAD_USER_INPUT"]
    body = await gql(
        client,
        UPSERT,
        {
            "input": {
                "id": "INC-1",
                "title": "x",
                "severity": "P2",
                "detectedAt": iso(at(10)),
                "resolvedAt": iso(at(9)),
            }
        },
        persona="ingest",
    )
    assert codes(body) == ["BAD_USER_INPUT"]
    assert await stored() == []


# --- ingested rows win ---------------------------------------------------------------------


async def test_an_ingested_row_at_the_computed_key_survives_live_recompute_and_backfill(
    client: Any,
) -> None:
    await incident(client, "INC-1", at(10))
    await record(client, "mttr", "INC-1", at(11, 30), 42.0, source="manual")
    await record(client, "mttr", "INC-1", at(11), 60.0, source="import")  # another key

    await incident(client, "INC-1", at(10), at(11, 30))  # computes 90 at 11:30
    expected = [
        ("mttr", "INC-1", at(11), 60.0, "import", 1.0, None),
        ("mttr", "INC-1", at(11, 30), 42.0, "manual", 1.0, None),
    ]
    assert await stored("mttr") == expected
    found = sorted(await api_kpis(client, "INC-1", "mttr"), key=lambda o: o["timestamp"])
    assert [(o["value"], o["source"], o["definitionVersion"]) for o in found] == [
        (60.0, "import", None),
        (42.0, "manual", None),
    ]

    body = await gql(client, BACKFILL, {"slug": "mttr"})
    assert "errors" not in body, body
    result = body["data"]["backfillKpi"]
    assert result["incidentsScanned"] == 1
    assert result["skipped"] == 0
    assert result["observationsWritten"] == 0  # the only key it computed is an ingested row
    assert await stored("mttr") == expected


async def test_an_ingested_row_with_the_computed_value_still_stays_ingested(client: Any) -> None:
    await incident(client, "INC-1", at(10))
    await record(client, "mttr", "INC-1", at(11, 30), 90.0, source="import")
    await incident(client, "INC-1", at(10), at(11, 30))
    await backfill(client, "mttr")
    assert await stored("mttr") == [("mttr", "INC-1", at(11, 30), 90.0, "import", 1.0, None)]


async def test_an_ingested_row_given_with_another_offset_is_the_same_key(client: Any) -> None:
    await incident(client, "INC-1", at(10))
    same_instant = datetime.fromisoformat("2026-03-02T13:30:00+02:00")  # 11:30Z
    await record(client, "mttr", "INC-1", same_instant, 42.0)
    await incident(client, "INC-1", at(10), datetime.fromisoformat("2026-03-02T06:30:00-05:00"))
    await backfill(client, "mttr")
    assert await stored("mttr") == [("mttr", "INC-1", at(11, 30), 42.0, "manual", 1.0, None)]


@pytest.mark.parametrize("source", ["computed", "Computed", " computed "])
async def test_an_ingested_row_claiming_source_computed_is_refused(
    source: str, client: Any
) -> None:
    await incident(client, "INC-1", at(10))
    variables = {
        "input": {
            "kpiSlug": "mttr",
            "incidentId": "INC-1",
            "timestamp": iso(at(10, 30)),
            "value": 42.0,
            "source": source,
        }
    }
    body = await gql(client, RECORD, variables, persona="ingest")
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "reserved" in body["errors"][0]["message"]
    assert await stored("mttr") == []
    await incident(client, "INC-1", at(10), at(11))
    assert await stored("mttr") == [computed_row("mttr", "INC-1", at(11), 60.0)]


async def test_moving_the_resolution_never_deletes_an_ingested_row(client: Any) -> None:
    await incident(client, "INC-1", at(10), at(11))
    await record(client, "mttr", "INC-1", at(11, 30), 42.0)
    await incident(client, "INC-1", at(10), at(12))
    await incident(client, "INC-1", at(10))
    assert await stored("mttr") == [("mttr", "INC-1", at(11, 30), 42.0, "manual", 1.0, None)]


# --- backfill ------------------------------------------------------------------------------


async def five_incidents(client: Any) -> None:
    """Five incidents: 3 resolved, 2 open; mixed alerts, phases, milestones and surveys."""
    await incident(client, "INC-1", at(10), at(11, 30), severity="P1")
    await incident(client, "INC-2", at(8), at(8, 45), severity="P2")
    await incident(client, "INC-3", at(9), at(13, 20), severity="P3")
    await incident(client, "INC-4", at(10, day=1), severity="P1")
    await incident(client, "INC-5", at(11, day=2), severity="P4")
    await alert(client, "INC-1", at(9, 58))
    await phase(client, "INC-1", "gather", at(10, 6))
    await alert(client, "INC-4", at(10, 2, day=1))
    await phase(client, "INC-4", "gather", at(10, 12, day=1))
    await milestone(client, "INC-2", "a", at(9), at(9))
    await milestone(client, "INC-2", "b", at(10), at(10, 5))
    await survey(client, "INC-3", 5, at(14))
    await survey(client, "INC-3", 2, at(15))


async def backfill(client: Any, slug: str) -> dict[str, Any]:
    data = await ok(client, BACKFILL, {"slug": slug}, persona="admin")
    result: dict[str, Any] = data["backfillKpi"]
    return result


async def test_backfill_returns_the_counts_and_recreates_the_live_rows(client: Any) -> None:
    await five_incidents(client)
    live = await stored()
    assert len(live) == 3 + 2 + 1 + 1  # mttr, mtta, cadence, satisfaction
    await drop_computed()

    assert await backfill(client, "mttr") == {
        "kpiSlug": "mttr",
        "incidentsScanned": 5,
        "observationsWritten": 3,
        "skipped": 2,
    }
    assert await backfill(client, "mtta") == {
        "kpiSlug": "mtta",
        "incidentsScanned": 5,
        "observationsWritten": 2,
        "skipped": 3,
    }
    assert await backfill(client, "cadence-adherence") == {
        "kpiSlug": "cadence-adherence",
        "incidentsScanned": 5,
        "observationsWritten": 1,
        "skipped": 4,
    }
    assert await backfill(client, "stakeholder-satisfaction") == {
        "kpiSlug": "stakeholder-satisfaction",
        "incidentsScanned": 5,
        "observationsWritten": 1,
        "skipped": 4,
    }
    assert await stored() == live
    assert await stored("mttr") == [
        computed_row("mttr", "INC-1", at(11, 30), 90.0),
        computed_row("mttr", "INC-2", at(8, 45), 45.0),
        computed_row("mttr", "INC-3", at(13, 20), 260.0),
    ]
    assert await stored("mtta") == [
        computed_row("mtta", "INC-1", at(10, 6), 8.0),
        computed_row("mtta", "INC-4", at(10, 12, day=1), 10.0),
    ]
    assert await stored("cadence-adherence") == [
        computed_row("cadence-adherence", "INC-2", at(10), 50.0)
    ]
    assert await stored("stakeholder-satisfaction") == [
        computed_row("stakeholder-satisfaction", "INC-3", at(15), 3.5)
    ]


async def test_backfill_twice_leaves_identical_rows(client: Any) -> None:
    await five_incidents(client)
    await record(client, "mttr", "INC-4", at(12, day=1), 77.0, source="import")
    live = await stored()
    await drop_computed()
    first = [await backfill(client, slug) for slug in SEEDS]
    rows_first = await stored_full()
    second = [await backfill(client, slug) for slug in SEEDS]
    rows_second = await stored_full()
    assert await stored() == live
    # the first run writes every computed row; the second finds them current and writes none
    assert [r["observationsWritten"] for r in first] == [1, 2, 3, 1]
    assert [r["observationsWritten"] for r in second] == [0, 0, 0, 0]
    assert [(r["incidentsScanned"], r["skipped"]) for r in first] == [
        (r["incidentsScanned"], r["skipped"]) for r in second
    ]

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["kpi"], row["incident"], row["timestamp"])

    def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ignored = ("id", "recorded_at")
        return sorted(({k: v for k, v in r.items() if k not in ignored} for r in rows), key=key)

    assert comparable(rows_second) == comparable(rows_first)
    assert len({key(r) for r in rows_second}) == len(rows_second)  # no duplicate keys
    # ingested rows are untouched, even their recording time
    ingested = [r for r in rows_first if r["source"] != "computed"]
    assert ingested == [r for r in rows_second if r["source"] != "computed"]
    assert len(ingested) == 1


async def test_backfill_removes_a_stale_computed_row(client: Any) -> None:
    await incident(client, "INC-1", at(10), at(11))
    # a computed row at a key the data no longer gives (as an older formula might have left)
    incident_pk = (await Incident.select(Incident.id))[0]["id"]
    await KpiObservation.insert(
        KpiObservation(
            kpi="mttr",
            incident=incident_pk,
            timestamp=at(10, 45),
            value=45.0,
            source="computed",
            confidence=1.0,
            definition_version=1,
            recorded_at=at(10, 45),
        )
    )
    await backfill(client, "mttr")
    assert await stored("mttr") == [computed_row("mttr", "INC-1", at(11), 60.0)]


async def test_backfill_overwrites_a_computed_row_with_a_wrong_value(client: Any) -> None:
    await incident(client, "INC-1", at(10), at(11))
    await KpiObservation.update(
        {KpiObservation.value: 1.0, KpiObservation.definition_version: 1}
    ).where(KpiObservation.kpi == "mttr")
    assert await stored("mttr") == [computed_row("mttr", "INC-1", at(11), 1.0, version=1)]
    result = await backfill(client, "mttr")
    assert result["observationsWritten"] == 1
    assert await stored("mttr") == [computed_row("mttr", "INC-1", at(11), 60.0)]


async def test_backfill_with_no_incidents_scans_nothing(client: Any) -> None:
    assert await backfill(client, "mttr") == {
        "kpiSlug": "mttr",
        "incidentsScanned": 0,
        "observationsWritten": 0,
        "skipped": 0,
    }


@pytest.mark.parametrize("persona", ["exec", "stakeholder", "responder", "ingest"])
async def test_backfill_is_forbidden_to_everyone_but_admin_and_changes_nothing(
    client: Any, persona: str
) -> None:
    await five_incidents(client)
    await drop_computed()
    await KpiObservation.delete().where(KpiObservation.kpi == "mttr")
    await record(client, "mtta", "INC-1", at(10, 6), 3.0)
    before = await stored_full()
    body = await gql(client, BACKFILL, {"slug": "mttr"}, persona=persona)
    assert codes(body) == ["FORBIDDEN"]
    assert body["data"] is None
    assert await stored_full() == before


@pytest.mark.parametrize("slug", ["mtta", "mttr", "nope", "Not A Slug"])
async def test_exec_backfill_errors_do_not_reveal_which_kpis_exist(client: Any, slug: str) -> None:
    reference = await gql(client, BACKFILL, {"slug": "mttr"}, persona="exec")
    body = await gql(client, BACKFILL, {"slug": slug}, persona="exec")
    assert codes(body) == ["FORBIDDEN"]
    assert body["data"] is None
    assert [e["message"] for e in body["errors"]] == [e["message"] for e in reference["errors"]]
    assert slug not in body["errors"][0]["message"]


async def create_kpi(client: Any, slug: str, expression: str | None, **fields: Any) -> Any:
    variables = {
        "input": {
            "slug": slug,
            "name": f"KPI {slug}",
            "description": "made by a test",
            "formula": "see expression",
            "expression": expression,
            "units": "count",
            "visibility": "INTERNAL",
            "owner": "tests",
            "reviewCadence": "P90D",
            **fields,
        }
    }
    return await gql(client, CREATE, variables, persona="admin")


@pytest.mark.parametrize("slug", ["nope", "Not A Slug", "manual-only"])
async def test_backfill_of_an_unknown_or_formula_less_kpi_is_bad_user_input(
    client: Any, slug: str
) -> None:
    body = await create_kpi(client, "manual-only", None)
    assert "errors" not in body, body
    await incident(client, "INC-1", at(10), at(11))
    before = await stored_full()
    body = await gql(client, BACKFILL, {"slug": slug})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert body["data"] is None
    assert await stored_full() == before


# --- definitions with expressions ----------------------------------------------------------


async def test_a_created_kpi_is_computed_for_existing_incidents_at_once(client: Any) -> None:
    await incident(client, "INC-1", at(10), at(11, 30))
    await alert(client, "INC-1", at(9, 58))
    await alert(client, "INC-1", at(10, 4))
    await incident(client, "INC-2", at(12))

    body = await create_kpi(client, "alert-count", "count(alerts)")
    assert "errors" not in body, body
    assert body["data"]["createKpiDefinition"] == {
        "slug": "alert-count",
        "expression": "count(alerts)",
        "version": 1,
    }
    # count of alerts: 2 as of the latest alert; none is a count of 0, as of detection
    assert await stored("alert-count") == [
        computed_row("alert-count", "INC-1", at(10, 4), 2.0, version=1),
        computed_row("alert-count", "INC-2", at(12), 0.0, version=1),
    ]
    assert_computed(
        await api_kpis(client, "INC-1", "alert-count"), "alert-count", at(10, 4), 2.0, version=1
    )

    # a later alert recomputes the new KPI live
    await alert(client, "INC-2", at(12, 1))
    assert await stored("alert-count") == [
        computed_row("alert-count", "INC-1", at(10, 4), 2.0, version=1),
        computed_row("alert-count", "INC-2", at(12, 1), 1.0, version=1),
    ]


async def test_updating_an_expression_recomputes_with_the_new_version(client: Any) -> None:
    await incident(client, "INC-1", at(10), at(11, 30))
    await alert(client, "INC-1", at(9, 58))
    await incident(client, "INC-2", at(12))
    assert "errors" not in await create_kpi(client, "alert-count", "count(alerts)")

    data = await ok(
        client,
        UPDATE,
        {"slug": "alert-count", "input": {"expression": "hours(resolved_at - detected_at)"}},
        persona="admin",
    )
    assert data["updateKpiDefinition"]["version"] == 2
    # only INC-1 is resolved; INC-2's old count row is gone, not left behind at version 1
    assert await stored("alert-count") == [
        computed_row("alert-count", "INC-1", at(11, 30), 1.5, version=2),
    ]
    kpi = (await ok(client, KPI, {"slug": "alert-count"}, persona="admin"))["kpi"]
    assert kpi["expression"] == "hours(resolved_at - detected_at)"
    assert [r["version"] for r in kpi["revisions"]] == [2, 1]
    assert kpi["revisions"][0]["changes"] == [
        {"field": "expression", "after": json.dumps("hours(resolved_at - detected_at)")}
    ]


async def test_updating_a_seed_expression_rewrites_its_rows_at_version_3(client: Any) -> None:
    await five_incidents(client)
    others = [r for r in await stored() if r[0] != "mttr"]
    data = await ok(
        client,
        UPDATE,
        {"slug": "mttr", "input": {"expression": "hours(resolved_at - detected_at)"}},
        persona="admin",
    )
    assert data["updateKpiDefinition"]["version"] == 3
    assert await stored("mttr") == [
        computed_row("mttr", "INC-1", at(11, 30), 1.5, version=3),
        computed_row("mttr", "INC-2", at(8, 45), 0.75, version=3),
        computed_row("mttr", "INC-3", at(13, 20), 260 / 60, version=3),
    ]
    assert [r for r in await stored() if r[0] != "mttr"] == others
    # later ingest keeps computing with the new formula and version
    await incident(client, "INC-4", at(10, day=1), at(12, day=1), severity="P1")
    assert computed_row("mttr", "INC-4", at(12, day=1), 2.0, version=3) in await stored("mttr")


async def test_an_equivalent_expression_still_restamps_the_rows_with_the_new_version(
    client: Any,
) -> None:
    await incident(client, "INC-1", at(10), at(11, 30))
    await ok(
        client,
        UPDATE,
        {"slug": "mttr", "input": {"expression": "minutes(resolved_at - detected_at) * 1"}},
        persona="admin",
    )
    assert await stored("mttr") == [computed_row("mttr", "INC-1", at(11, 30), 90.0, version=3)]
    assert_computed(await api_kpis(client, "INC-1", "mttr"), "mttr", at(11, 30), 90.0, version=3)


async def test_clearing_an_expression_leaves_no_computed_rows_behind(client: Any) -> None:
    await incident(client, "INC-1", at(10), at(11))
    await record(client, "mttr", "INC-1", at(10, 30), 30.0)
    data = await ok(
        client, UPDATE, {"slug": "mttr", "input": {"expression": None}}, persona="admin"
    )
    assert data["updateKpiDefinition"]["expression"] is None
    # the data moves on; a computed row claiming 60 minutes at 11:00 would now be wrong
    await incident(client, "INC-1", at(10), at(12))
    assert await stored("mttr") == [("mttr", "INC-1", at(10, 30), 30.0, "manual", 1.0, None)]


async def test_an_update_that_leaves_the_expression_alone_rewrites_nothing(client: Any) -> None:
    await five_incidents(client)
    before = await stored_full()
    data = await ok(
        client, UPDATE, {"slug": "mttr", "input": {"name": "Time to resolve"}}, persona="admin"
    )
    assert data["updateKpiDefinition"]["version"] == 3
    assert await stored_full() == before


@pytest.mark.parametrize(
    ("expression", "position"),
    [
        ("minutes(", 8),
        ("minutes(resolved_at - detectd_at)", 22),
        ("count(alert)", 6),
        ("resolved_at - detected_at", 0),
        ("1 +* 2", 3),
    ],
)
async def test_an_invalid_expression_on_create_is_refused_with_its_position(
    client: Any, expression: str, position: int
) -> None:
    await incident(client, "INC-1", at(10), at(11))
    revisions_before = await KpiRevision.count()
    before = await stored_full()
    body = await create_kpi(client, "bad-formula", expression)
    assert codes(body) == ["BAD_USER_INPUT"]
    assert body["data"] is None
    message = body["errors"][0]["message"]
    assert f"position {position}" in message, message
    assert await KpiDefinition.count().where(KpiDefinition.slug == "bad-formula") == 0
    assert await KpiRevision.count() == revisions_before
    assert await stored_full() == before
    assert (await ok(client, KPI, {"slug": "bad-formula"}, persona="admin"))["kpi"] is None


@pytest.mark.parametrize(("expression", "position"), [("minutes(", 8), ("avg(surveys.scor)", 12)])
async def test_an_invalid_expression_on_update_changes_nothing(
    client: Any, expression: str, position: int
) -> None:
    await five_incidents(client)
    kpi_before = await ok(client, KPI, {"slug": "mttr"}, persona="admin")
    rows_before = await stored_full()
    body = await gql(
        client, UPDATE, {"slug": "mttr", "input": {"expression": expression}}, persona="admin"
    )
    assert codes(body) == ["BAD_USER_INPUT"]
    assert f"position {position}" in body["errors"][0]["message"]
    assert await ok(client, KPI, {"slug": "mttr"}, persona="admin") == kpi_before
    assert await stored_full() == rows_before


async def test_expression_mutations_are_for_admins_only(client: Any) -> None:
    await incident(client, "INC-1", at(10), at(11))
    before = await stored_full()
    body = await gql(
        client,
        UPDATE,
        {"slug": "mttr", "input": {"expression": "hours(resolved_at - detected_at)"}},
        persona="ingest",
    )
    assert codes(body) == ["FORBIDDEN"]
    assert await stored_full() == before


# --- the CLI -------------------------------------------------------------------------------


def mim(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `mim` against the test database."""
    env = {**os.environ, "DATABASE_URL": DATABASE_URL, "MIM_JWT_SECRET": TEST_SECRET}
    return subprocess.run(
        [MIM, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


_DUMP = """
import asyncio, json
from registry.tables import Incident, KpiObservation

async def main():
    keys = {r["id"]: r["key"] for r in await Incident.select(Incident.id, Incident.key)}
    rows = await KpiObservation.select()
    print(json.dumps(sorted(
        [r["kpi"], keys[r["incident"]], r["timestamp"].isoformat(), r["value"], r["source"],
         r["confidence"], r["definition_version"]]
        for r in rows
    )))

asyncio.run(main())
"""


def dumped_rows() -> list[tuple[Any, ...]]:
    """Read every observation in a subprocess (this test's event loop is not for running)."""
    env = {**os.environ, "DATABASE_URL": DATABASE_URL}
    done = subprocess.run(
        [sys.executable, "-c", _DUMP], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return sorted(
        (r[0], r[1], _utc(datetime.fromisoformat(r[2])), *r[3:]) for r in json.loads(done.stdout)
    )


def summary_lines(stdout: str) -> dict[str, tuple[int, int, int]]:
    """Return {slug: (scanned, written, skipped)} from the backfill's per-KPI lines."""
    found = {}
    pattern = re.compile(
        r"^(?P<slug>[a-z][a-z0-9-]*)\b.*?scanned\D*(\d+).*?written\D*(\d+).*?skipped\D*(\d+)",
        re.IGNORECASE,
    )
    for line in stdout.splitlines():
        match = pattern.search(line.strip())
        if match:
            found[match["slug"]] = (int(match[2]), int(match[3]), int(match[4]))
    return found


needs_mim = pytest.mark.skipif(not Path(MIM).exists(), reason="the mim command is not installed")


@pytest.fixture
async def cli_data(client: Any) -> list[tuple[Any, ...]]:
    """Six incidents in 2026 (one at its first instant) and one in 2025; return the live rows,
    then drop the computed ones so that only a backfill can bring them back."""
    await five_incidents(client)
    await incident(
        client,
        "INC-OLD",
        datetime(2025, 12, 31, 23, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 30, tzinfo=UTC),
    )
    await incident(
        client,
        "INC-EDGE",
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 10, tzinfo=UTC),
    )
    live = await stored()
    await drop_computed()
    return live


@needs_mim
def test_cli_backfill_all_recomputes_every_computed_kpi(cli_data: list[tuple[Any, ...]]) -> None:
    done = mim("kpi", "backfill", "--all")
    assert done.returncode == 0, done.stderr
    assert summary_lines(done.stdout) == {
        "cadence-adherence": (7, 1, 6),
        "mtta": (7, 2, 5),
        "mttr": (7, 5, 2),
        "stakeholder-satisfaction": (7, 1, 6),
    }
    assert dumped_rows() == cli_data
    # a second run writes nothing and leaves the same rows
    again = mim("kpi", "backfill", "--all")
    assert again.returncode == 0, again.stderr
    assert summary_lines(again.stdout) == {
        "cadence-adherence": (7, 0, 6),
        "mtta": (7, 0, 5),
        "mttr": (7, 0, 2),
        "stakeholder-satisfaction": (7, 0, 6),
    }
    assert dumped_rows() == cli_data


@needs_mim
def test_cli_backfill_one_kpi_writes_only_its_rows(cli_data: list[tuple[Any, ...]]) -> None:
    done = mim("kpi", "backfill", "--kpi", "mttr")
    assert done.returncode == 0, done.stderr
    assert summary_lines(done.stdout) == {"mttr": (7, 5, 2)}
    assert dumped_rows() == [r for r in cli_data if r[0] == "mttr"]
    assert computed_row("mttr", "INC-OLD", datetime(2026, 1, 1, 0, 30, tzinfo=UTC), 90.0) in (
        dumped_rows()
    )


@needs_mim
def test_cli_backfill_since_a_date_scans_only_incidents_detected_from_then(
    cli_data: list[tuple[Any, ...]],
) -> None:
    done = mim("kpi", "backfill", "--all", "--since", "2026-01-01")
    assert done.returncode == 0, done.stderr
    assert summary_lines(done.stdout) == {
        "cadence-adherence": (6, 1, 5),
        "mtta": (6, 2, 4),
        "mttr": (6, 4, 2),
        "stakeholder-satisfaction": (6, 1, 5),
    }
    assert dumped_rows() == [r for r in cli_data if r[1] != "INC-OLD"]


@needs_mim
def test_cli_backfill_without_a_choice_is_a_usage_error() -> None:
    done = mim("kpi", "backfill")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "usage" in done.stderr.lower()
    assert dumped_rows() == []


@needs_mim
def test_cli_backfill_of_an_unknown_kpi_fails_with_exit_1(cli_data: list[tuple[Any, ...]]) -> None:
    done = mim("kpi", "backfill", "--kpi", "nope")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "nope" in done.stderr
    assert "Traceback" not in done.stderr
    assert dumped_rows() == []


async def test_backfill_over_live_rows_finds_them_current(client: Any) -> None:
    await five_incidents(client)
    before = await stored_full()
    for slug in SEEDS:
        result = await backfill(client, slug)
        assert result["incidentsScanned"] == 5
        assert result["observationsWritten"] == 0
    assert await stored_full() == before


@needs_mim
def test_cli_backfill_in_small_batches_gives_the_same_rows(
    cli_data: list[tuple[Any, ...]],
) -> None:
    done = mim("kpi", "backfill", "--all", "--batch-size", "2")
    assert done.returncode == 0, done.stderr
    assert summary_lines(done.stdout)["mttr"] == (7, 5, 2)
    assert dumped_rows() == cli_data


@needs_mim
def test_cli_backfill_of_a_formula_less_kpi_fails_with_exit_1(
    formula_less: None,
) -> None:
    done = mim("kpi", "backfill", "--kpi", "manual-only")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "manual-only" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
async def formula_less(client: Any) -> None:
    body = await create_kpi(client, "manual-only", None)
    assert "errors" not in body, body
