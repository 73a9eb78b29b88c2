"""Incidents over GraphQL: upsert, the data recorded against them, and the newest-first page."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from registry.tables import Alert, Incident, Milestone, SurveyResponse, TimelineEvent
from tests.conftest import codes, gql

UPSERT = """
mutation ($input: IncidentInput!) {
  upsertIncident(input: $input) { id title severity detectedAt resolvedAt }
}
"""
RECORD_ALERT = """
mutation ($input: AlertInput!) { recordAlert(input: $input) { id issueTime source } }
"""
RECORD_EVENT = """
mutation ($input: TimelineEventInput!) {
  recordTimelineEvent(input: $input) { kind phase occurredAt note }
}
"""
RECORD_MILESTONE = """
mutation ($input: MilestoneInput!) {
  recordMilestone(input: $input) { name committedEta deliveredAt }
}
"""
RECORD_SURVEY = """
mutation ($input: SurveyResponseInput!) {
  recordSurveyResponse(input: $input) { score submittedAt }
}
"""
INCIDENT = """
query ($id: ID!) {
  incident(id: $id) {
    id title severity detectedAt resolvedAt
    alerts { issueTime source }
    timeline { kind phase occurredAt note }
    milestones { name committedEta deliveredAt }
    surveyResponses { score submittedAt }
  }
}
"""
PAGE = """
query ($first: Int, $after: String, $severity: Severity, $from: DateTime, $to: DateTime) {
  incidents(first: $first, after: $after, severity: $severity,
            detectedFrom: $from, detectedTo: $to) {
    totalCount
    edges { cursor node { id severity detectedAt } }
    pageInfo { hasNextPage endCursor }
  }
}
"""

PLUS_TWO = timezone(timedelta(hours=2))
MINUS_FIVE = timezone(timedelta(hours=-5))


def at(text: str) -> datetime:
    """Return the instant a response gives, asserting it is expressed in UTC."""
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == timedelta(0), f"{text} is not in UTC"
    return parsed


def utc(text: str) -> datetime:
    """Return the instant an input string names (any offset)."""
    return datetime.fromisoformat(text).astimezone(UTC)


async def ok(client: Any, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run an ingest request that must succeed; return its data."""
    body = await gql(client, query, variables, persona="ingest")
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


async def upsert(client: Any, key: str, **fields: Any) -> dict[str, Any]:
    incident = {
        "id": key,
        "title": f"Incident {key}",
        "severity": "P2",
        "detectedAt": "2026-01-01T10:00:00Z",
        **fields,
    }
    data = await ok(client, UPSERT, {"input": incident})
    upserted: dict[str, Any] = data["upsertIncident"]
    return upserted


async def page(client: Any, **arguments: Any) -> dict[str, Any]:
    """Return one incidents page; arguments left out are omitted, not sent as null."""
    body = await gql(client, PAGE, arguments, persona="responder")
    assert "errors" not in body, body
    connection: dict[str, Any] = body["data"]["incidents"]
    return connection


def keys(connection: dict[str, Any]) -> list[str]:
    return [edge["node"]["id"] for edge in connection["edges"]]


# --- upsert ----------------------------------------------------------------------------------


async def test_upsert_creates_an_incident(client) -> None:
    created = await upsert(
        client,
        "INC-2041",
        title="Checkout down",
        severity="P1",
        detectedAt="2026-01-01T10:00:00Z",
        resolvedAt="2026-01-01T11:30:00Z",
    )
    assert created["id"] == "INC-2041"
    assert (created["title"], created["severity"]) == ("Checkout down", "P1")
    assert at(created["detectedAt"]) == utc("2026-01-01T10:00:00Z")
    assert at(created["resolvedAt"]) == utc("2026-01-01T11:30:00Z")
    assert await Incident.count() == 1
    fetched = (await ok(client, INCIDENT, {"id": "INC-2041"}))["incident"]
    assert {k: fetched[k] for k in created} == created


async def test_upsert_with_the_same_id_replaces_the_fields_of_the_one_row(client) -> None:
    await upsert(
        client,
        "INC-7",
        title="Slow search",
        severity="P3",
        detectedAt="2026-01-01T10:00:00Z",
        resolvedAt="2026-01-01T12:00:00Z",
    )
    alert = {"incidentId": "INC-7", "issueTime": "2026-01-01T09:59:00Z"}
    await ok(client, RECORD_ALERT, {"input": alert})
    updated = await upsert(
        client,
        "INC-7",
        title="Search down everywhere",
        severity="P1",
        detectedAt="2026-01-01T09:00:00Z",
        resolvedAt="2026-01-01T13:00:00Z",
    )
    expected = {
        "id": "INC-7",
        "title": "Search down everywhere",
        "severity": "P1",
        "detectedAt": utc("2026-01-01T09:00:00Z"),
        "resolvedAt": utc("2026-01-01T13:00:00Z"),
    }
    fetched = (await ok(client, INCIDENT, {"id": "INC-7"}))["incident"]
    for shown in (updated, fetched):
        instants = {"detectedAt": at(shown["detectedAt"]), "resolvedAt": at(shown["resolvedAt"])}
        assert {**{k: shown[k] for k in expected}, **instants} == expected
    assert await Incident.count() == 1
    # Updated in place, not replaced: what was recorded against it is still there.
    assert [at(a["issueTime"]) for a in fetched["alerts"]] == [utc("2026-01-01T09:59:00Z")]


async def test_upsert_with_resolved_at_null_clears_it(client) -> None:
    await upsert(client, "INC-8", resolvedAt="2026-01-01T12:00:00Z")
    updated = await upsert(client, "INC-8", resolvedAt=None)
    assert updated["resolvedAt"] is None
    fetched = (await ok(client, INCIDENT, {"id": "INC-8"}))["incident"]
    assert fetched["resolvedAt"] is None
    assert await Incident.count() == 1


async def test_upsert_leaves_other_incidents_alone(client) -> None:
    await upsert(client, "INC-1", title="first")
    await upsert(client, "INC-2", title="second")
    await upsert(client, "INC-1", title="first, renamed")
    second = (await ok(client, INCIDENT, {"id": "INC-2"}))["incident"]
    assert second["title"] == "second"
    assert await Incident.count() == 2


async def test_resolved_at_equal_to_detected_at_is_accepted(client) -> None:
    created = await upsert(
        client, "INC-0", detectedAt="2026-01-01T10:00:00Z", resolvedAt="2026-01-01T12:00:00+02:00"
    )
    assert at(created["resolvedAt"]) == at(created["detectedAt"])


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2026-01-01T10:00:00+02:00", "2026-01-01T08:00:00+00:00"),
        ("2026-01-01T10:00:00-05:00", "2026-01-01T15:00:00+00:00"),
        ("2026-01-01T01:30:00+05:30", "2025-12-31T20:00:00+00:00"),
        ("2026-01-01T10:00:00.250000Z", "2026-01-01T10:00:00.250000+00:00"),
        ("2026-01-01T10:00:00+00:00", "2026-01-01T10:00:00+00:00"),
    ],
    ids=["plus-two", "minus-five", "half-hour-offset-crossing-midnight", "fractional-z", "utc"],
)
async def test_date_times_with_offsets_come_back_in_utc(client, given, expected) -> None:
    created = await upsert(client, "INC-TZ", detectedAt=given, resolvedAt=given)
    fetched = (await ok(client, INCIDENT, {"id": "INC-TZ"}))["incident"]
    for shown in (created, fetched):
        assert at(shown["detectedAt"]) == datetime.fromisoformat(expected)
        assert at(shown["resolvedAt"]) == datetime.fromisoformat(expected)


# --- alerts, timeline, surveys, milestones ---------------------------------------------------


async def test_alerts_append_and_come_back_by_issue_time(client) -> None:
    await upsert(client, "INC-1")
    await upsert(client, "INC-2")
    # Recorded out of order and with offsets, so only a sort by instant gives the expected order.
    for issue_time, source in (
        ("2026-01-01T10:02:00+02:00", "grafana"),  # 08:02Z
        ("2026-01-01T07:59:00-01:00", None),  # 08:59Z
        ("2026-01-01T08:00:00Z", "pagerduty"),  # 08:00Z
    ):
        alert = (
            await ok(
                client,
                RECORD_ALERT,
                {"input": {"incidentId": "INC-1", "issueTime": issue_time, "source": source}},
            )
        )["recordAlert"]
        assert at(alert["issueTime"]) == utc(issue_time)
        assert alert["source"] == source
        assert alert["id"]
    await ok(
        client,
        RECORD_ALERT,
        {"input": {"incidentId": "INC-2", "issueTime": "2026-01-01T07:00:00Z", "source": "other"}},
    )

    incident = (await ok(client, INCIDENT, {"id": "INC-1"}))["incident"]
    assert [(at(a["issueTime"]), a["source"]) for a in incident["alerts"]] == [
        (utc("2026-01-01T08:00:00Z"), "pagerduty"),
        (utc("2026-01-01T08:02:00Z"), "grafana"),
        (utc("2026-01-01T08:59:00Z"), None),
    ]
    other = (await ok(client, INCIDENT, {"id": "INC-2"}))["incident"]
    assert [a["source"] for a in other["alerts"]] == ["other"]
    assert await Alert.count() == 4


async def test_timeline_events_append_and_come_back_in_the_order_they_happened(client) -> None:
    await upsert(client, "INC-1")
    await upsert(client, "INC-2")
    for kind, phase, occurred_at, note in (
        ("resolved", None, "2026-01-01T12:00:00+01:00", "fixed"),  # 11:00Z
        ("phase-entered", "gather", "2026-01-01T10:05:00Z", None),  # 10:05Z
        ("phase-entered", "mitigate", "2026-01-01T10:30:00.500000Z", "rollback"),  # 10:30:00.5Z
        ("note", None, "2026-01-01T10:30:00Z", "just before"),  # 10:30:00Z
    ):
        event = (
            await ok(
                client,
                RECORD_EVENT,
                {
                    "input": {
                        "incidentId": "INC-1",
                        "kind": kind,
                        "phase": phase,
                        "occurredAt": occurred_at,
                        "note": note,
                    }
                },
            )
        )["recordTimelineEvent"]
        assert (event["kind"], event["phase"], event["note"]) == (kind, phase, note)
        assert at(event["occurredAt"]) == utc(occurred_at)
    await ok(
        client,
        RECORD_EVENT,
        {"input": {"incidentId": "INC-2", "kind": "other", "occurredAt": "2026-01-01T09:00:00Z"}},
    )

    incident = (await ok(client, INCIDENT, {"id": "INC-1"}))["incident"]
    assert [
        (e["kind"], e["phase"], at(e["occurredAt"]), e["note"]) for e in incident["timeline"]
    ] == [
        ("phase-entered", "gather", utc("2026-01-01T10:05:00Z"), None),
        ("note", None, utc("2026-01-01T10:30:00Z"), "just before"),
        ("phase-entered", "mitigate", utc("2026-01-01T10:30:00.5Z"), "rollback"),
        ("resolved", None, utc("2026-01-01T11:00:00Z"), "fixed"),
    ]
    other = (await ok(client, INCIDENT, {"id": "INC-2"}))["incident"]
    assert [e["kind"] for e in other["timeline"]] == ["other"]
    assert await TimelineEvent.count() == 5


async def test_survey_responses_append_and_come_back_by_submission_time(client) -> None:
    await upsert(client, "INC-1")
    await upsert(client, "INC-2")
    for score, submitted_at in (
        (5, "2026-01-03T09:00:00Z"),
        (2, "2026-01-02T09:00:00+03:00"),  # 06:00Z
        (4, "2026-01-02T08:00:00Z"),
        (4, "2026-01-02T08:00:00Z"),  # a second, identical response is a second response
    ):
        survey = (
            await ok(
                client,
                RECORD_SURVEY,
                {"input": {"incidentId": "INC-1", "score": score, "submittedAt": submitted_at}},
            )
        )["recordSurveyResponse"]
        assert survey["score"] == score
        assert at(survey["submittedAt"]) == utc(submitted_at)
    await ok(
        client,
        RECORD_SURVEY,
        {"input": {"incidentId": "INC-2", "score": 1, "submittedAt": "2026-01-01T00:00:00Z"}},
    )

    incident = (await ok(client, INCIDENT, {"id": "INC-1"}))["incident"]
    assert [(s["score"], at(s["submittedAt"])) for s in incident["surveyResponses"]] == [
        (2, utc("2026-01-02T06:00:00Z")),
        (4, utc("2026-01-02T08:00:00Z")),
        (4, utc("2026-01-02T08:00:00Z")),
        (5, utc("2026-01-03T09:00:00Z")),
    ]
    other = (await ok(client, INCIDENT, {"id": "INC-2"}))["incident"]
    assert [s["score"] for s in other["surveyResponses"]] == [1]
    assert await SurveyResponse.count() == 5


async def test_a_new_incident_has_empty_lists(client) -> None:
    await upsert(client, "INC-1")
    incident = (await ok(client, INCIDENT, {"id": "INC-1"}))["incident"]
    assert incident["alerts"] == incident["timeline"] == []
    assert incident["milestones"] == incident["surveyResponses"] == []


async def test_recording_the_same_alert_twice_appends_two(client) -> None:
    await upsert(client, "INC-1")
    alert = {"incidentId": "INC-1", "issueTime": "2026-01-01T09:00:00Z", "source": "grafana"}
    first = (await ok(client, RECORD_ALERT, {"input": alert}))["recordAlert"]
    second = (await ok(client, RECORD_ALERT, {"input": alert}))["recordAlert"]
    assert first["id"] != second["id"]
    incident = (await ok(client, INCIDENT, {"id": "INC-1"}))["incident"]
    assert len(incident["alerts"]) == 2
    assert await Alert.count() == 2


async def test_milestone_is_upserted_by_incident_and_name(client) -> None:
    await upsert(client, "INC-1")
    await upsert(client, "INC-2")
    first = (
        await ok(
            client,
            RECORD_MILESTONE,
            {
                "input": {
                    "incidentId": "INC-1",
                    "name": "Status update 1",
                    "committedEta": "2026-01-01T11:00:00Z",
                    "deliveredAt": "2026-01-01T11:05:00Z",
                }
            },
        )
    )["recordMilestone"]
    assert first["name"] == "Status update 1"
    assert at(first["committedEta"]) == utc("2026-01-01T11:00:00Z")
    assert at(first["deliveredAt"]) == utc("2026-01-01T11:05:00Z")
    second = (
        await ok(
            client,
            RECORD_MILESTONE,
            {
                "input": {
                    "incidentId": "INC-1",
                    "name": "Status update 1",
                    "committedEta": "2026-01-01T13:30:00+02:00",
                    "deliveredAt": "2026-01-01T11:20:00Z",
                }
            },
        )
    )["recordMilestone"]
    assert at(second["committedEta"]) == utc("2026-01-01T11:30:00Z")
    assert at(second["deliveredAt"]) == utc("2026-01-01T11:20:00Z")
    # The same name on another incident is another milestone.
    await ok(
        client,
        RECORD_MILESTONE,
        {
            "input": {
                "incidentId": "INC-2",
                "name": "Status update 1",
                "committedEta": "2026-01-01T09:00:00Z",
            }
        },
    )

    milestones = (await ok(client, INCIDENT, {"id": "INC-1"}))["incident"]["milestones"]
    assert [(m["name"], at(m["committedEta"]), at(m["deliveredAt"])) for m in milestones] == [
        ("Status update 1", utc("2026-01-01T11:30:00Z"), utc("2026-01-01T11:20:00Z"))
    ]
    other = (await ok(client, INCIDENT, {"id": "INC-2"}))["incident"]["milestones"]
    assert [(m["name"], at(m["committedEta"]), m["deliveredAt"]) for m in other] == [
        ("Status update 1", utc("2026-01-01T09:00:00Z"), None)
    ]
    assert await Milestone.count() == 2


async def test_milestones_come_back_by_committed_eta(client) -> None:
    await upsert(client, "INC-1")
    for name, eta in (
        ("Update 3", "2026-01-01T13:00:00Z"),
        ("Update 1", "2026-01-01T11:00:00Z"),
        ("Update 2", "2026-01-01T14:00:00+02:00"),
    ):
        await ok(
            client,
            RECORD_MILESTONE,
            {"input": {"incidentId": "INC-1", "name": name, "committedEta": eta}},
        )
    milestones = (await ok(client, INCIDENT, {"id": "INC-1"}))["incident"]["milestones"]
    assert [m["name"] for m in milestones] == ["Update 1", "Update 2", "Update 3"]
    assert all(m["deliveredAt"] is None for m in milestones)


# --- incident(id) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "INC-404",
        "inc-1",
        "INC 1",
        "",
        "X" * 300,
        "INC-\x001",
    ],
    ids=["unknown", "other-case", "spaces", "empty", "too-long", "nul"],
)
async def test_incident_is_null_for_an_unknown_id(client, key) -> None:
    await upsert(client, "INC-1")
    body = await gql(client, INCIDENT, {"id": key}, persona="responder")
    assert body == {"data": {"incident": None}}


# --- the incidents page ----------------------------------------------------------------------

BASE = datetime(2026, 3, 1, tzinfo=UTC)


async def make_incidents(client: Any, count: int) -> dict[str, datetime]:
    """Create `count` incidents in shuffled order, three to a detectedAt; return key -> instant."""
    made = {f"INC-{n:03d}": BASE + timedelta(hours=n // 3) for n in range(count)}
    order = list(made)
    random.Random(2041).shuffle(order)
    for n, key in enumerate(order):
        zone = (UTC, PLUS_TWO, MINUS_FIVE)[n % 3]
        await upsert(client, key, detectedAt=made[key].astimezone(zone).isoformat())
    return made


async def test_walking_the_pages_gives_every_incident_once_newest_first(client) -> None:
    made = await make_incidents(client, 25)
    walked: list[str] = []
    sizes: list[int] = []
    after = None
    for _ in range(10):
        arguments: dict[str, Any] = {"first": 7}
        if after is not None:
            arguments["after"] = after
        connection = await page(client, **arguments)
        assert connection["totalCount"] == 25
        walked += keys(connection)
        sizes.append(len(connection["edges"]))
        for edge in connection["edges"]:
            assert at(edge["node"]["detectedAt"]) == made[edge["node"]["id"]]
        if connection["edges"]:
            assert connection["pageInfo"]["endCursor"] == connection["edges"][-1]["cursor"]
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    assert sizes == [7, 7, 7, 4]
    assert len(walked) == len(set(walked)) == 25
    assert set(walked) == set(made)
    instants = [made[key] for key in walked]
    assert instants == sorted(instants, reverse=True)
    # Ties keep one order: the walk agrees with a single page, and with itself when repeated.
    whole = await page(client, first=100)
    assert keys(whole) == walked
    assert not whole["pageInfo"]["hasNextPage"]
    assert keys(await page(client, first=100)) == walked


async def test_a_page_after_the_last_cursor_is_empty(client) -> None:
    await make_incidents(client, 3)
    last = await page(client, first=3)
    assert not last["pageInfo"]["hasNextPage"]
    beyond = await page(client, first=3, after=last["pageInfo"]["endCursor"])
    assert beyond["edges"] == []
    assert beyond["pageInfo"] == {"hasNextPage": False, "endCursor": None}
    assert beyond["totalCount"] == 3


async def test_first_defaults_to_20(client) -> None:
    await make_incidents(client, 25)
    connection = await page(client)
    assert len(connection["edges"]) == 20
    assert connection["pageInfo"]["hasNextPage"] is True
    assert connection["totalCount"] == 25


@pytest.mark.parametrize("first", [1, 100])
async def test_first_accepts_1_to_100(client, first) -> None:
    await make_incidents(client, 3)
    connection = await page(client, first=first)
    assert len(connection["edges"]) == min(first, 3)
    assert connection["pageInfo"]["hasNextPage"] is (first < 3)


@pytest.mark.parametrize("first", [0, -1, 101, 100_000])
async def test_first_outside_1_to_100_is_bad_user_input(client, first) -> None:
    await make_incidents(client, 3)
    body = await gql(client, PAGE, {"first": first}, persona="responder")
    assert codes(body) == ["BAD_USER_INPUT"]
    assert body["data"] == {"incidents": None}  # the failing root field alone is null


def cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode()


@pytest.mark.parametrize(
    "after",
    [
        "garbage",
        "!!!",
        "",
        "eyJpZCI6MX0=",  # base64 of a JSON object
        cursor("not a cursor"),
        cursor("2026-03-01T00:00:00|5"),
        cursor("2026-03-01T00:00:00+00:00|five"),
        cursor("2026-03-01T00:00:00+00:00"),
        base64.urlsafe_b64encode(b"\xff\xfe|1").decode(),
        cursor("2026-03-01T00:00:00+00:00|99999999999999999999999"),
        cursor("9999-12-31T23:59:59-23:59|1"),
        cursor("2026-03-01T00:00:00+00:00|5"),
    ],
    ids=[
        "word",
        "punctuation",
        "empty",
        "base64-json",
        "base64-text",
        "naive-stamp",
        "non-numeric-id",
        "no-id",
        "not-utf8",
        "id-beyond-bigint",
        "stamp-overflows-utc",
        "unsealed-cursor-of-an-earlier-release",
    ],
)
async def test_a_garbage_after_cursor_is_bad_user_input(client, after) -> None:
    await make_incidents(client, 3)
    body = await gql(client, PAGE, {"first": 2, "after": after}, persona="responder")
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert body["data"] == {"incidents": None}


BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def unpadded_bytes(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def test_every_changed_character_of_a_cursor_is_refused_never_another_page(client) -> None:
    await make_incidents(client, 9)
    first = await page(client, first=3)
    cursor_text = first["pageInfo"]["endCursor"]
    expected = keys(await page(client, first=3, after=cursor_text))
    assert len(expected) == 3
    tried = 0
    for position, character in enumerate(cursor_text):
        for replacement in (BASE64URL[(BASE64URL.index(character) + 1) % 64], "A"):
            if replacement == character:
                continue
            forged = cursor_text[:position] + replacement + cursor_text[position + 1 :]
            body = await gql(client, PAGE, {"first": 3, "after": forged}, persona="responder")
            assert codes(body) == ["BAD_USER_INPUT"], (position, body)
            assert body["data"] == {"incidents": None}
            tried += 1
    for forged in (cursor_text[:-1], cursor_text + "A", cursor_text[::-1]):
        body = await gql(client, PAGE, {"first": 3, "after": forged}, persona="responder")
        assert codes(body) == ["BAD_USER_INPUT"], body
    assert tried >= len(cursor_text)
    # The genuine cursor still pages on.
    assert keys(await page(client, first=3, after=cursor_text)) == expected


async def test_cursors_and_alert_ids_reveal_no_row_id(client) -> None:
    await make_incidents(client, 4)
    incident = await Incident.select(Incident.id, Incident.key).first()
    assert incident is not None
    alert = {"incidentId": incident["key"], "issueTime": "2026-01-01T09:00:00Z"}
    alert_id = (await ok(client, RECORD_ALERT, {"input": alert}))["recordAlert"]["id"]
    [row] = await Alert.select(Alert.id)
    assert not alert_id.isdigit()
    connection = await page(client, first=4)
    rows = {r["key"]: r["id"] for r in await Incident.select(Incident.id, Incident.key)}
    for edge in connection["edges"]:
        pk = rows[edge["node"]["id"]]
        sealed = unpadded_bytes(edge["cursor"])
        for plain in (f"|{pk}".encode(), pk.to_bytes(8, "big"), pk.to_bytes(4, "big")):
            assert plain not in sealed, (edge, plain)
        assert edge["node"]["detectedAt"][:10].encode() not in sealed
    assert row["id"].to_bytes(8, "big") not in unpadded_bytes(alert_id)
    # Stable: the same alert reads back with the same id, on every read.
    query = "query ($id: ID!) { incident(id: $id) { alerts { id } } }"
    for _ in range(2):
        read = await gql(client, query, {"id": incident["key"]}, persona="responder")
        assert read["data"]["incident"]["alerts"] == [{"id": alert_id}]
    # An alert id is sealed for another use: it is no cursor.
    body = await gql(client, PAGE, {"first": 2, "after": alert_id}, persona="responder")
    assert codes(body) == ["BAD_USER_INPUT"] and body["data"] == {"incidents": None}


async def test_the_key_is_kept_in_the_database_so_every_worker_seals_alike(client) -> None:
    from registry import opaque
    from registry.tables import ServiceKey

    await make_incidents(client, 4)
    before = (await page(client, first=2))["pageInfo"]["endCursor"]
    opaque._sealer = None  # as a worker that starts now: it reads the key, it makes none
    await opaque.load()
    assert (await page(client, first=2))["pageInfo"]["endCursor"] == before
    assert await ServiceKey.count() == 1


# --- filters ---------------------------------------------------------------------------------


async def make_filtered(client: Any) -> None:
    for key, severity, detected_at in (
        ("A", "P1", "2026-01-01T00:00:00Z"),
        ("B", "P2", "2026-01-02T00:00:00Z"),
        ("C", "P1", "2026-01-03T00:00:00Z"),
        ("D", "P1", "2026-01-04T00:00:00Z"),
        ("E", "P3", "2026-01-05T00:00:00Z"),
    ):
        await upsert(client, key, severity=severity, detectedAt=detected_at)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({}, ["E", "D", "C", "B", "A"]),
        ({"severity": "P1"}, ["D", "C", "A"]),
        ({"severity": "P4"}, []),
        ({"from": "2026-01-02T00:00:00Z"}, ["E", "D", "C", "B"]),
        ({"from": "2026-01-02T02:00:00+02:00"}, ["E", "D", "C", "B"]),
        ({"from": "2026-01-02T00:00:00.000001Z"}, ["E", "D", "C"]),
        ({"to": "2026-01-04T00:00:00Z"}, ["C", "B", "A"]),
        ({"to": "2026-01-03T19:00:00-05:00"}, ["C", "B", "A"]),
        ({"to": "2026-01-04T00:00:00.000001Z"}, ["D", "C", "B", "A"]),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-04T00:00:00Z"}, ["C", "B"]),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-02T00:00:00Z"}, []),
        (
            {"severity": "P1", "from": "2026-01-02T00:00:00Z", "to": "2026-01-05T00:00:00Z"},
            ["D", "C"],
        ),
    ],
    ids=[
        "none",
        "severity",
        "severity-without-incidents",
        "from-inclusive",
        "from-with-offset",
        "from-just-after",
        "to-exclusive",
        "to-with-offset",
        "to-just-after",
        "from-and-to",
        "empty-range",
        "severity-from-and-to",
    ],
)
async def test_filters_and_total_count(client, arguments, expected) -> None:
    await make_filtered(client)
    connection = await page(client, **arguments)
    assert keys(connection) == expected
    assert connection["totalCount"] == len(expected)
    assert connection["pageInfo"]["hasNextPage"] is False


async def test_total_count_honours_filters_but_not_the_cursor(client) -> None:
    await make_filtered(client)
    walked = []
    after = None
    while True:
        arguments: dict[str, Any] = {"first": 1, "severity": "P1", "from": "2026-01-01T00:00:00Z"}
        if after:
            arguments["after"] = after
        connection = await page(client, **arguments)
        assert connection["totalCount"] == 3
        walked += keys(connection)
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    assert walked == ["D", "C", "A"]


@pytest.mark.parametrize("argument", ["from", "to"])
async def test_a_naive_filter_date_time_is_bad_user_input(client, argument) -> None:
    body = await gql(client, PAGE, {argument: "2026-01-02T00:00:00"}, persona="responder")
    assert codes(body) == ["BAD_USER_INPUT"]
