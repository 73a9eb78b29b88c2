"""Incidents and the data KPIs are computed from: alerts, timeline, milestones, surveys."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from piccolo.columns.combination import Or
from piccolo.table import Table

from server import compute, db, policy, validate
from server import tables as t
from server.auth import Viewer
from server.errors import BadInput, NotFound
from server.model import Alert, Incident, Milestone, Severity, SurveyResponse, TimelineEvent

MAX_PAGE = 100
MAX_ROW_ID = 2**31  # row ids are 32-bit serials on PostgreSQL


@dataclass(frozen=True, slots=True)
class IncidentFilter:
    severity: Severity | None = None
    detected_from: datetime | None = None
    detected_to: datetime | None = None


@dataclass(frozen=True, slots=True)
class IncidentPage:
    incidents: list[Incident]
    cursors: list[str]
    has_next_page: bool


async def page(
    *, viewer: Viewer, first: int, after: str | None, where: IncidentFilter
) -> IncidentPage:
    """Return up to `first` incidents newest first, after an opaque cursor."""
    policy.require(viewer, policy.Action.READ)
    if not 1 <= first <= MAX_PAGE:
        raise BadInput(f"first must be between 1 and {MAX_PAGE}")
    clauses = _filter_clauses(where)
    if after is not None:
        detected_at, pk = decode_cursor(after)
        clauses.append(
            Or(
                t.Incident.detected_at < detected_at,
                (t.Incident.detected_at == detected_at) & (t.Incident.id < pk),
            )
        )
    query = t.Incident.select().order_by(t.Incident.detected_at, t.Incident.id, ascending=False)
    if clauses:
        query = query.where(*clauses)
    rows = await query.limit(first + 1)
    incidents = [incident_from_row(row) for row in rows[:first]]
    return IncidentPage(
        incidents=incidents,
        cursors=[encode_cursor(i) for i in incidents],
        has_next_page=len(rows) > first,
    )


async def count(*, viewer: Viewer, where: IncidentFilter) -> int:
    """Return how many incidents match the filter."""
    policy.require(viewer, policy.Action.READ)
    clauses = _filter_clauses(where)
    query = t.Incident.count()
    if clauses:
        query = query.where(*clauses)
    return await query


def _filter_clauses(where: IncidentFilter) -> list[Any]:
    clauses: list[Any] = []
    if where.severity is not None:
        clauses.append(t.Incident.severity == where.severity.value)
    if where.detected_from is not None:
        clauses.append(t.Incident.detected_at >= validate.utc(where.detected_from, "detectedFrom"))
    if where.detected_to is not None:
        clauses.append(t.Incident.detected_at < validate.utc(where.detected_to, "detectedTo"))
    return clauses


def encode_cursor(incident: Incident) -> str:
    """Return the opaque cursor just past `incident` in the newest-first order."""
    raw = f"{incident.detected_at.isoformat()}|{incident.pk}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """Return the (detected_at, id) a cursor encodes."""
    try:
        stamp, _, raw_pk = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        pk = int(raw_pk)
        if not 0 < pk < MAX_ROW_ID:
            raise ValueError(raw_pk)
        return validate.utc(datetime.fromisoformat(stamp), "after"), pk
    except (ValueError, OverflowError, UnicodeError, binascii.Error, BadInput):
        raise BadInput("after is not a cursor this service issued") from None


async def by_key(*, viewer: Viewer, key: str) -> Incident | None:
    """Return the incident with an external id, if any."""
    policy.require(viewer, policy.Action.READ)
    if not validate.is_incident_key(key):
        return None
    rows = await t.Incident.select().where(t.Incident.key == key)
    return incident_from_row(rows[0]) if rows else None


async def by_pk(*, viewer: Viewer, pks: Sequence[int]) -> dict[int, Incident]:
    """Return incidents by row id."""
    policy.require(viewer, policy.Action.READ)
    if not pks:
        return {}
    rows = await t.Incident.select().where(t.Incident.id.is_in(list(set(pks))))
    return {row["id"]: incident_from_row(row) for row in rows}


async def _rows(table: type[Table], pks: Sequence[int], order: Any) -> dict[int, list[Any]]:
    found: dict[int, list[Any]] = {pk: [] for pk in pks}
    if pks:
        incident = table._meta.get_column_by_name("incident")
        rows = (
            await table.select()
            .where(incident.is_in(list(set(pks))))
            .order_by(order, table._meta.primary_key)
        )
        for row in rows:
            found[row["incident"]].append(row)
    return found


async def alerts_rows(pks: Sequence[int]) -> dict[int, list[Alert]]:
    """Return each incident's alerts by issue time."""
    rows = await _rows(t.Alert, pks, t.Alert.issue_time)
    return {pk: [_alert(r) for r in rs] for pk, rs in rows.items()}


async def timeline_rows(pks: Sequence[int]) -> dict[int, list[TimelineEvent]]:
    """Return each incident's timeline in the order it happened."""
    rows = await _rows(t.TimelineEvent, pks, t.TimelineEvent.occurred_at)
    return {pk: [_event(r) for r in rs] for pk, rs in rows.items()}


async def milestones_rows(pks: Sequence[int]) -> dict[int, list[Milestone]]:
    """Return each incident's milestones by committed ETA."""
    rows = await _rows(t.Milestone, pks, t.Milestone.committed_eta)
    return {pk: [_milestone(r) for r in rs] for pk, rs in rows.items()}


async def surveys_rows(pks: Sequence[int]) -> dict[int, list[SurveyResponse]]:
    """Return each incident's survey responses by submission time."""
    rows = await _rows(t.SurveyResponse, pks, t.SurveyResponse.submitted_at)
    return {pk: [_survey(r) for r in rs] for pk, rs in rows.items()}


async def alerts_for(*, viewer: Viewer, pks: Sequence[int]) -> dict[int, list[Alert]]:
    """Return each incident's alerts, for a reader."""
    policy.require(viewer, policy.Action.READ)
    return await alerts_rows(pks)


async def timeline_for(*, viewer: Viewer, pks: Sequence[int]) -> dict[int, list[TimelineEvent]]:
    """Return each incident's timeline, for a reader."""
    policy.require(viewer, policy.Action.READ)
    return await timeline_rows(pks)


async def milestones_for(*, viewer: Viewer, pks: Sequence[int]) -> dict[int, list[Milestone]]:
    """Return each incident's milestones, for a reader."""
    policy.require(viewer, policy.Action.READ)
    return await milestones_rows(pks)


async def surveys_for(*, viewer: Viewer, pks: Sequence[int]) -> dict[int, list[SurveyResponse]]:
    """Return each incident's survey responses, for a reader."""
    policy.require(viewer, policy.Action.READ)
    return await surveys_rows(pks)


async def upsert(
    *,
    viewer: Viewer,
    key: str,
    title: str,
    severity: Severity,
    detected_at: datetime,
    resolved_at: datetime | None,
) -> Incident:
    """Create the incident with this external id, or replace its fields."""
    policy.require(viewer, policy.Action.INGEST)
    detected = validate.utc(detected_at, "detectedAt")
    resolved = validate.optional_utc(resolved_at, "resolvedAt")
    if resolved is not None and resolved < detected:
        raise BadInput("resolvedAt must not be before detectedAt")
    row = t.Incident(
        key=validate.incident_key(key),
        title=validate.text(title, "title", max_length=500),
        severity=Severity(severity).value,
        detected_at=detected,
        resolved_at=resolved,
    )
    replaced = [
        t.Incident.title,
        t.Incident.severity,
        t.Incident.detected_at,
        t.Incident.resolved_at,
    ]
    async with db.transaction():
        rows = await (
            t.Incident.insert(row)
            .on_conflict(target=t.Incident.key, action="DO UPDATE", values=replaced)
            .returning(*t.Incident.all_columns())
        )
        await compute.recompute_incidents([rows[0]["id"]])
    return incident_from_row(rows[0])


async def _incident_pk(key: str) -> int:
    """Return an incident's row id, locking it for this transaction's recompute.

    Two writes to one incident must not each recompute its KPIs from data missing the other's
    row: on PostgreSQL the row lock makes them take turns (SQLite's writers already do).
    """
    validate.incident_key(key)
    query = t.Incident.select(t.Incident.id).where(t.Incident.key == key)
    if not db.is_sqlite():
        query = query.lock_rows("UPDATE")
    rows = await query
    if not rows:
        raise NotFound(f"unknown incident {key!r}")
    return int(rows[0]["id"])


async def record_alert(
    *, viewer: Viewer, incident_key: str, issue_time: datetime, source: str | None
) -> Alert:
    """Record an alert raised for an incident."""
    policy.require(viewer, policy.Action.INGEST)
    issued = validate.utc(issue_time, "issueTime")
    source = validate.optional_text(source, "source", max_length=200)
    async with db.transaction():
        pk = await _incident_pk(incident_key)
        rows = await t.Alert.insert(
            t.Alert(incident=pk, issue_time=issued, source=source)
        ).returning(*t.Alert.all_columns())
        await compute.recompute_incidents([pk])
    return _alert(rows[0])


async def record_timeline_event(
    *,
    viewer: Viewer,
    incident_key: str,
    kind: str,
    phase: str | None,
    occurred_at: datetime,
    note: str | None,
) -> TimelineEvent:
    """Record a timeline event, such as entering a phase."""
    policy.require(viewer, policy.Action.INGEST)
    values: dict[str, Any] = {
        "kind": validate.text(kind, "kind", max_length=64),
        "phase": validate.optional_text(phase, "phase", max_length=64),
        "occurred_at": validate.utc(occurred_at, "occurredAt"),
        "note": validate.optional_text(note, "note", max_length=4000),
    }
    async with db.transaction():
        pk = await _incident_pk(incident_key)
        row = t.TimelineEvent(incident=pk, **values)
        rows = await t.TimelineEvent.insert(row).returning(*t.TimelineEvent.all_columns())
        await compute.recompute_incidents([pk])
    return _event(rows[0])


async def record_milestone(
    *,
    viewer: Viewer,
    incident_key: str,
    name: str,
    committed_eta: datetime,
    delivered_at: datetime | None,
) -> Milestone:
    """Create or replace the incident's milestone of this name."""
    policy.require(viewer, policy.Action.INGEST)
    values: dict[str, Any] = {
        "name": validate.text(name, "name", max_length=200),
        "committed_eta": validate.utc(committed_eta, "committedEta"),
        "delivered_at": validate.optional_utc(delivered_at, "deliveredAt"),
    }
    async with db.transaction():
        pk = await _incident_pk(incident_key)
        row = t.Milestone(incident=pk, **values)
        rows = await (
            t.Milestone.insert(row)
            .on_conflict(
                target=(t.Milestone.incident, t.Milestone.name),
                action="DO UPDATE",
                values=[t.Milestone.committed_eta, t.Milestone.delivered_at],
            )
            .returning(*t.Milestone.all_columns())
        )
        await compute.recompute_incidents([pk])
    return _milestone(rows[0])


async def record_survey_response(
    *, viewer: Viewer, incident_key: str, score: int, submitted_at: datetime
) -> SurveyResponse:
    """Record a stakeholder's post-incident survey score (1 to 5)."""
    policy.require(viewer, policy.Action.INGEST)
    if not 1 <= score <= 5:
        raise BadInput("score must be between 1 and 5")
    submitted = validate.utc(submitted_at, "submittedAt")
    async with db.transaction():
        pk = await _incident_pk(incident_key)
        rows = await t.SurveyResponse.insert(
            t.SurveyResponse(incident=pk, score=score, submitted_at=submitted)
        ).returning(*t.SurveyResponse.all_columns())
        await compute.recompute_incidents([pk])
    return _survey(rows[0])


def incident_from_row(row: dict[str, Any]) -> Incident:
    return Incident(
        pk=row["id"],
        key=row["key"],
        title=row["title"],
        severity=Severity(row["severity"]),
        detected_at=row["detected_at"],
        resolved_at=row["resolved_at"],
    )


def _alert(row: dict[str, Any]) -> Alert:
    return Alert(
        pk=row["id"],
        incident_pk=row["incident"],
        issue_time=row["issue_time"],
        source=row["source"],
    )


def _event(row: dict[str, Any]) -> TimelineEvent:
    return TimelineEvent(
        incident_pk=row["incident"],
        kind=row["kind"],
        phase=row["phase"],
        occurred_at=row["occurred_at"],
        note=row["note"],
    )


def _milestone(row: dict[str, Any]) -> Milestone:
    return Milestone(
        incident_pk=row["incident"],
        name=row["name"],
        committed_eta=row["committed_eta"],
        delivered_at=row["delivered_at"],
    )


def _survey(row: dict[str, Any]) -> SurveyResponse:
    return SurveyResponse(
        incident_pk=row["incident"], score=row["score"], submitted_at=row["submitted_at"]
    )
