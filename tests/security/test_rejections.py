"""The bad-input catalogue: ingest mutations refuse bad fields with BAD_USER_INPUT, writing nothing.

Each case starts from a valid input (proven valid by the control tests), changes one field, and
checks the answer is BAD_USER_INPUT (never INTERNAL, never HTTP 500, never a stack trace) and that
no table the ingest mutations write to changed: not its row count, not a single row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from _pytest.mark.structures import ParameterSet
from piccolo.table import Table

from registry.tables import (
    Alert,
    Incident,
    KpiObservation,
    Milestone,
    SurveyResponse,
    TimelineEvent,
)
from tests.conftest import codes, gql

WRITTEN: tuple[type[Table], ...] = (
    Incident,
    Alert,
    TimelineEvent,
    Milestone,
    SurveyResponse,
    KpiObservation,
)

# mutation -> (input type, a valid input that the fixture's data makes acceptable)
MUTATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "upsertIncident": (
        "IncidentInput",
        {
            "id": "INC-2",
            "title": "Checkout down",
            "severity": "P1",
            "detectedAt": "2026-02-01T10:00:00Z",
            "resolvedAt": "2026-02-01T12:00:00Z",
        },
    ),
    "recordAlert": (
        "AlertInput",
        {"incidentId": "INC-1", "issueTime": "2026-01-01T09:55:00Z", "source": "pagerduty"},
    ),
    "recordTimelineEvent": (
        "TimelineEventInput",
        {
            "incidentId": "INC-1",
            "kind": "phase-entered",
            "phase": "gather",
            "occurredAt": "2026-01-01T10:05:00Z",
            "note": "MIM engaged",
        },
    ),
    "recordMilestone": (
        "MilestoneInput",
        {
            "incidentId": "INC-1",
            "name": "Update 1",  # exists: a partial write of the upsert would show
            "committedEta": "2026-01-01T11:30:00Z",
            "deliveredAt": "2026-01-01T11:25:00Z",
        },
    ),
    "recordSurveyResponse": (
        "SurveyResponseInput",
        {"incidentId": "INC-1", "score": 4, "submittedAt": "2026-01-02T09:00:00Z"},
    ),
    "recordObservation": (
        "RecordObservationInput",
        {
            "kpiSlug": "mttr",
            "incidentId": "INC-1",
            "timestamp": "2026-01-01T13:00:00Z",
            "value": 95.0,
            "source": "import",
            "confidence": 0.9,
        },
    ),
}

pytestmark = pytest.mark.security


class Raw(str):
    """A token written into a GraphQL document as is, such as 1e309."""


MISSING = object()


def literal(value: Any, *, enum: bool = False) -> str:
    """Return `value` as a GraphQL input literal."""
    if isinstance(value, Raw) or (enum and isinstance(value, str)):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    fields = (f"{k}: {literal(v, enum=k == 'severity')}" for k, v in value.items())
    return "{" + ", ".join(fields) + "}"


def changed(mutation: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Return the mutation's valid input with `changes` applied (MISSING removes a field)."""
    given = {**MUTATIONS[mutation][1], **changes}
    return {k: v for k, v in given.items() if v is not MISSING}


def as_variables(changes: dict[str, Any]) -> dict[str, Any]:
    if any(isinstance(v, Raw) for v in changes.values()):
        raise AssertionError("a Raw token can only be sent inline")
    return changes


async def send(
    client: Any, mutation: str, given: dict[str, Any], *, inline: bool
) -> dict[str, Any]:
    input_type = MUTATIONS[mutation][0]
    if inline:
        query = f"mutation {{ {mutation}(input: {literal(given)}) {{ __typename }} }}"
        return await gql(client, query, persona="ingest")
    query = f"mutation ($input: {input_type}!) {{ {mutation}(input: $input) {{ __typename }} }}"
    return await gql(client, query, {"input": as_variables(given)}, persona="ingest")


async def counts() -> dict[str, int]:
    return {table._meta.tablename: await table.count() for table in WRITTEN}


async def rows() -> dict[str, list[dict[str, Any]]]:
    return {
        table._meta.tablename: await table.select().order_by(table._meta.primary_key)
        for table in WRITTEN
    }


def assert_bad_user_input(body: dict[str, Any], field: str) -> None:
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert (body.get("data") or {}).get(field) is None
    for error in body["errors"]:
        message = error["message"]
        assert "Traceback" not in message and 'File "' not in message, message
        assert message != "Internal error.", message


@pytest.fixture(autouse=True)
async def existing(client) -> None:
    """One incident with a little of everything, so a partial write would show as a change."""
    body = await gql(
        client,
        """mutation {
          upsertIncident(input: {id: "INC-1", title: "Search slow", severity: P2,
                                 detectedAt: "2026-01-01T10:00:00Z",
                                 resolvedAt: "2026-01-01T12:00:00Z"}) { id }
          recordAlert(input: {incidentId: "INC-1", issueTime: "2026-01-01T09:50:00Z"}) { id }
          recordTimelineEvent(input: {incidentId: "INC-1", kind: "declared",
                                      occurredAt: "2026-01-01T10:01:00Z"}) { kind }
          recordMilestone(input: {incidentId: "INC-1", name: "Update 1",
                                  committedEta: "2026-01-01T11:00:00Z"}) { name }
          recordSurveyResponse(input: {incidentId: "INC-1", score: 3,
                                       submittedAt: "2026-01-02T08:00:00Z"}) { score }
          recordObservation(input: {kpiSlug: "mttr", incidentId: "INC-1", value: 120,
                                    timestamp: "2026-01-01T12:00:00Z", source: "import"}) { value }
        }""",
        persona="ingest",
    )
    assert "errors" not in body, body
    assert (await counts())["milestone"] == 1


# --- controls: the valid inputs the cases start from are accepted ------------------------------


@pytest.mark.parametrize("inline", [False, True], ids=["variables", "inline"])
@pytest.mark.parametrize("mutation", list(MUTATIONS))
async def test_the_valid_input_is_accepted_and_written(client, mutation, inline) -> None:
    before = await rows()
    body = await send(client, mutation, changed(mutation, {}), inline=inline)
    assert "errors" not in body, body
    assert body["data"][mutation] is not None
    assert await rows() != before


# --- the catalogue ---------------------------------------------------------------------------


def case(
    mutation: str, label: str, /, *, inline: bool = False, marks: Any = (), **changes: Any
) -> ParameterSet:
    suffix = "-inline" if inline else ""
    return pytest.param(mutation, changes, inline, id=f"{mutation}-{label}{suffix}", marks=marks)


DATE_TIME_FIELDS = {
    "upsertIncident": {"detectedAt": True, "resolvedAt": False},
    "recordAlert": {"issueTime": True},
    "recordTimelineEvent": {"occurredAt": True},
    "recordMilestone": {"committedEta": True, "deliveredAt": False},
    "recordSurveyResponse": {"submittedAt": True},
    "recordObservation": {"timestamp": True},
}


def date_time_cases() -> Iterator[ParameterSet]:
    for mutation, fields in DATE_TIME_FIELDS.items():
        for field, required in fields.items():
            bad: dict[str, Any] = {
                "naive": "2026-01-01T10:00:00",
                "date-only": "2026-01-01",
                "not-a-date-time": "yesterday",
                "february-30": "2026-02-30T10:00:00Z",
                "epoch-number": 1767261600,
                "overflows-in-utc": "9999-12-31T23:59:59-23:59",
            }
            if required:
                bad["null"] = None
            for name, value in bad.items():
                yield case(mutation, f"{field}-{name}", **{field: value})
            yield case(mutation, f"{field}-naive", inline=True, **{field: "2026-01-01T10:00:00"})
            yield case(mutation, f"{field}-not-a-date-time", inline=True, **{field: "yesterday"})


def reference_cases() -> Iterator[ParameterSet]:
    """incidentId on the mutations that record data against an existing incident."""
    for mutation in MUTATIONS:
        if mutation == "upsertIncident":
            continue
        for name, value in {
            "unknown": "INC-404",
            "other-case": "inc-1",
            "empty": "",
            "spaces": "INC 1",
            "too-long": "I" * 65,
            "nul": "INC-\x001",
            "null": None,
            "missing": MISSING,
            "boolean": True,
        }.items():
            yield case(mutation, f"incidentId-{name}", incidentId=value)


LONG = {"title": 500, "kind": 64, "phase": 64, "note": 4000, "name": 200}


def field_cases() -> Iterator[ParameterSet]:
    # upsertIncident
    for name, value in {
        "empty": "",
        "blank": "   ",
        "inner-space": "INC 1",
        "leading-space": " INC-2",
        "trailing-newline": "INC-2\n",
        "leading-dash": "-INC-2",
        "non-ascii": "INC-\u00e92",
        "too-long": "I" * 65,
        "nul": "INC-\x002",
        "boolean": True,
        "null": None,
        "missing": MISSING,
    }.items():
        yield case("upsertIncident", f"id-{name}", id=value)
    for name, value in {
        "empty": "",
        "blank": "   ",
        "whitespace": "\t\n",
        "too-long": "t" * 501,
        "nul": "bad\x00title",
        "int": 42,
        "list": ["Checkout down"],
        "null": None,
        "missing": MISSING,
    }.items():
        yield case("upsertIncident", f"title-{name}", title=value)
    for name, value in {
        "unknown": "P5",
        "lower-case": "p1",
        "empty": "",
        "int": 1,
        "null": None,
        "missing": MISSING,
    }.items():
        yield case("upsertIncident", f"severity-{name}", severity=value)
    yield case("upsertIncident", "severity-unknown", inline=True, severity="P5")
    yield case("upsertIncident", "resolvedAt-before-detectedAt", resolvedAt="2026-02-01T09:59:59Z")
    yield case(
        "upsertIncident",
        "resolvedAt-before-detectedAt-by-offset",  # 11:00+02:00 is 09:00Z
        resolvedAt="2026-02-01T11:00:00+02:00",
    )
    yield case(
        "upsertIncident",
        "existing-resolvedAt-before-detectedAt",
        id="INC-1",
        resolvedAt="2026-02-01T09:00:00Z",
    )
    yield case("upsertIncident", "existing-title-too-long", id="INC-1", title="t" * 501)
    yield case("upsertIncident", "existing-title-blank", id="INC-1", title=" ")

    # recordAlert
    for name, value in {"too-long": "s" * 201, "nul": "graf\x00ana", "int": 42}.items():
        yield case("recordAlert", f"source-{name}", source=value)

    # recordTimelineEvent
    for field in ("kind", "phase", "note"):
        required = field == "kind"
        bad: dict[str, Any] = {
            "too-long": "x" * (LONG[field] + 1),
            "nul": "a\x00b",
            "int": 42,
        }
        if required:
            bad |= {"empty": "", "blank": "  ", "null": None, "missing": MISSING}
        for name, value in bad.items():
            yield case("recordTimelineEvent", f"{field}-{name}", **{field: value})

    # recordMilestone
    for name, value in {
        "empty": "",
        "blank": "  ",
        "too-long": "n" * 201,
        "nul": "Update\x001",
        "int": 1,
        "null": None,
        "missing": MISSING,
    }.items():
        yield case("recordMilestone", f"name-{name}", name=value)

    # recordSurveyResponse
    for name, value in {
        "zero": 0,
        "six": 6,
        "negative": -1,
        "fraction": 2.5,
        "string": "4",
        "beyond-int32": 2**31,
        "boolean": True,
        "null": None,
        "missing": MISSING,
    }.items():
        yield case("recordSurveyResponse", f"score-{name}", score=value)
    yield case("recordSurveyResponse", "score-six", inline=True, score=6)
    yield case("recordSurveyResponse", "score-fraction", inline=True, score=4.5)

    # recordObservation
    for name, value in {
        "unknown": "no-such-kpi",
        "upper-case": "MTTR",
        "padded": "mttr ",
        "empty": "",
        "nul": "mt\x00tr",
        "int": 42,
        "null": None,
        "missing": MISSING,
    }.items():
        yield case("recordObservation", f"kpiSlug-{name}", kpiSlug=value)
    for name, value in {
        "string": "95",
        "boolean": True,
        "nan": float("nan"),
        "infinity": float("inf"),
        "minus-infinity": float("-inf"),
        "null": None,
        "missing": MISSING,
    }.items():
        yield case("recordObservation", f"value-{name}", value=value)
    yield case("recordObservation", "value-overflow", inline=True, value=Raw("1e309"))
    yield case("recordObservation", "value-minus-overflow", inline=True, value=Raw("-1e309"))
    yield case("recordObservation", "value-string", inline=True, value="95")
    for name, value in {
        "empty": "",
        "blank": "  ",
        "too-long": "s" * 65,
        "nul": "imp\x00ort",
        "int": 42,
        "null": None,
        "missing": MISSING,
    }.items():
        yield case("recordObservation", f"source-{name}", source=value)
    for name, value in {
        "below-zero": -0.1,
        "above-one": 1.5,
        "just-above-one": 1.0000001,
        "string": "high",
        "boolean": True,
        "nan": float("nan"),
        "infinity": float("inf"),
    }.items():
        yield case("recordObservation", f"confidence-{name}", confidence=value)
    yield case("recordObservation", "confidence-above-one", inline=True, confidence=1.5)
    yield case("recordObservation", "confidence-overflow", inline=True, confidence=Raw("1e309"))


CASES = [*field_cases(), *date_time_cases(), *reference_cases()]


@pytest.mark.parametrize(("mutation", "changes", "inline"), CASES)
async def test_bad_input_is_bad_user_input_and_writes_nothing(
    client, mutation, changes, inline
) -> None:
    counted, before = await counts(), await rows()
    body = await send(client, mutation, changed(mutation, changes), inline=inline)
    assert_bad_user_input(body, mutation)
    assert await counts() == counted
    assert await rows() == before


# The cases the service itself must catch; a batch refused while its variables are coerced never
# reaches the service, so repeating those here would prove nothing more.
IN_BATCH = {
    "kpiSlug-unknown",
    "incidentId-unknown",
    "incidentId-too-long",
    "value-overflow-inline",
    "source-blank",
    "source-too-long",
    "source-nul",
    "confidence-below-zero",
    "confidence-above-one",
    "confidence-overflow-inline",
    "kpiSlug-nul",
    "incidentId-nul",
}
OBSERVATION_CASES = [c for c in CASES if c.id.removeprefix("recordObservation-") in IN_BATCH]


@pytest.mark.parametrize(("mutation", "changes", "inline"), OBSERVATION_CASES)
async def test_a_bad_observation_after_a_good_one_in_a_batch_writes_nothing(
    client, mutation, changes, inline
) -> None:
    good = changed(mutation, {"timestamp": "2026-01-01T14:00:00Z", "value": 1.0})
    inputs = [good, changed(mutation, changes)]
    counted, before = await counts(), await rows()
    if inline:
        query = f"mutation {{ recordObservations(inputs: {literal(inputs)}) {{ value }} }}"
        body = await gql(client, query, persona="ingest")
    else:
        query = (
            "mutation ($inputs: [RecordObservationInput!]!) "
            "{ recordObservations(inputs: $inputs) { value } }"
        )
        body = await gql(client, query, {"inputs": inputs}, persona="ingest")
    assert_bad_user_input(body, "recordObservations")
    assert await counts() == counted
    assert await rows() == before


def test_the_catalogue_covers_every_input_field() -> None:
    """A field added to an ingest input without a rejection case here fails this test."""
    from schema import schema

    covered: dict[str, set[str]] = {m: set() for m in MUTATIONS}
    for parameters in CASES:
        mutation, changes, _ = parameters.values
        covered[mutation] |= set(changes)  # type: ignore[index, arg-type]
    for mutation, (input_type, _) in MUTATIONS.items():
        graphql_type = schema._schema.type_map[input_type]
        fields = set(graphql_type.fields)  # type: ignore[attr-defined]
        assert fields == set(MUTATIONS[mutation][1]), f"{input_type} has fields the base lacks"
        assert covered[mutation] >= fields, f"{mutation}: no case for {fields - covered[mutation]}"
    assert len(OBSERVATION_CASES) == len(IN_BATCH), "IN_BATCH names a case that does not exist"
