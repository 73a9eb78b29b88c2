"""Incidents and the data KPIs are computed from: alerts, timeline, milestones, surveys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from piccolo.table import Table

from registry import compute, db, opaque, policy, validate
from registry import tables as t
from registry.errors import BadInput, NotFound
from registry.model import (
    Alert,
    Incident,
    Milestone,
    Severity,
    SurveyResponse,
    TimelineEvent,
    Viewer,
)
from registry.rows import (
    INCIDENT_COLUMNS,
    alert_from_row,
    event_from_row,
    incident_from_row,
    milestone_from_row,
    survey_from_row,
)

MAX_PAGE = 100


@dataclass(frozen=True, slots=True)
class IncidentFilter:
    severity: Severity | None = None
    detected_from: datetime | None = None
    detected_to: datetime | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """Which page to read (Relay's rules): `first` after a cursor, or `last` before one.

    Neither first nor last: the first 20; `before` alone: the last 20 before it.
    """

    first: int | None = None
    after: str | None = None
    last: int | None = None
    before: str | None = None

    @property
    def backward(self) -> bool:
        return self.last is not None or self.before is not None

    @property
    def size(self) -> int:
        return self.last if self.backward and self.last is not None else self.first or 20

    def check(self) -> None:
        """Raise BadInput for a mix of directions or a size outside 1..100."""
        if self.first is not None and self.last is not None:
            raise BadInput("Give first (with after) or last (with before), not both.")
        if self.after is not None and (self.last is not None or self.before is not None):
            raise BadInput("after pages forward with first; page backward with last and before.")
        if self.before is not None and self.first is not None:
            raise BadInput("before pages backward with last; page forward with first and after.")
        for name, size in (("first", self.first), ("last", self.last)):
            if size is not None and not 1 <= size <= MAX_PAGE:
                raise BadInput(f"{name} must be between 1 and {MAX_PAGE}")

    async def position(self) -> tuple[datetime, int] | None:
        """Return where the window's cursor points, if it has one (BadInput if not ours)."""
        name, cursor = ("before", self.before) if self.backward else ("after", self.after)
        if cursor is None:
            return None
        await opaque.load()
        return opaque.open_cursor(cursor, name)


@dataclass(frozen=True, slots=True)
class IncidentPage:
    incidents: list[Incident]
    cursors: list[str]
    has_next_page: bool


async def page(
    *, viewer: Viewer, first: int, after: str | None, where: IncidentFilter
) -> IncidentPage:
    """Return up to `first` incidents newest first, after an opaque cursor."""
    rows, has_next_page = await page_rows(
        viewer=viewer, window=Window(first=first, after=after), where=where
    )
    await opaque.load()
    incidents = [incident_from_row(row) for row in rows]
    return IncidentPage(
        incidents=incidents,
        cursors=[encode_cursor(i) for i in incidents],
        has_next_page=has_next_page,
    )


async def page_rows(
    *, viewer: Viewer, window: Window, where: IncidentFilter
) -> tuple[Sequence[Mapping[str, Any]], bool]:
    """Return a page of incident rows newest first, and whether more lie beyond it (after it
    going forward, before it going backward)."""
    policy.require(viewer, policy.Action.READ)
    window.check()
    statement = db.statement()
    clauses = _filter_sql(where, statement)
    if (position := await window.position()) is not None:
        at, pk = position
        newer = ">" if window.backward else "<"
        clauses.append(
            f"(detected_at {newer} {statement.arg(at)}"
            f" OR (detected_at = {statement.arg(at)} AND id {newer} {statement.arg(pk)}))"
        )
    order = "ASC" if window.backward else "DESC"  # read from the cursor outwards
    sql = f"SELECT {INCIDENT_COLUMNS} FROM incident"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    size = window.size
    sql += f" ORDER BY detected_at {order}, id {order} LIMIT {statement.arg(size + 1)}"
    rows = await db.fetch(sql, statement.args)
    found = list(rows[:size])
    if window.backward:
        found.reverse()
    return found, len(rows) > size


async def behind_cursor(*, viewer: Viewer, window: Window, where: IncidentFilter) -> bool:
    """Return whether incidents lie on the cursor's side of a page: before a page after `after`,
    after a page before `before` (the cursor's own incident included); False without a cursor."""
    policy.require(viewer, policy.Action.READ)
    window.check()
    if (position := await window.position()) is None:
        return False
    at, pk = position
    statement = db.statement()
    clauses = _filter_sql(where, statement)
    side = "<" if window.backward else ">"
    clauses.append(
        f"(detected_at {side} {statement.arg(at)}"
        f" OR (detected_at = {statement.arg(at)} AND id {side}= {statement.arg(pk)}))"
    )
    sql = "SELECT 1 FROM incident WHERE " + " AND ".join(clauses) + " LIMIT 1"
    return bool(await db.fetch(sql, statement.args))


def _filter_sql(where: IncidentFilter, statement: db.Statement) -> list[str]:
    clauses = []
    if where.severity is not None:
        clauses.append(f"severity = {statement.arg(where.severity.value)}")
    if where.detected_from is not None:
        start = validate.utc(where.detected_from, "detectedFrom")
        clauses.append(f"detected_at >= {statement.arg(start)}")
    if where.detected_to is not None:
        end = validate.utc(where.detected_to, "detectedTo")
        clauses.append(f"detected_at < {statement.arg(end)}")
    return clauses


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
    return cursor_for(incident.detected_at, incident.pk)


def cursor_for(detected_at: datetime, pk: int) -> str:
    """Return the opaque cursor just past the incident detected then with this row id."""
    return opaque.cursor(detected_at, pk)


async def by_key(*, viewer: Viewer, key: str) -> Incident | None:
    """Return the incident with an external id, if any."""
    row = await key_row(viewer=viewer, key=key)
    return incident_from_row(row) if row is not None else None


async def key_row(*, viewer: Viewer, key: str) -> Mapping[str, Any] | None:
    """Return the row of the incident with an external id, if any."""
    policy.require(viewer, policy.Action.READ)
    if not validate.is_incident_key(key):
        return None
    statement = db.statement()
    sql = f"SELECT {INCIDENT_COLUMNS} FROM incident WHERE key = {statement.arg(key)}"
    rows = await db.fetch(sql, statement.args)
    return rows[0] if rows else None


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
        for row in await _child_rows(table, pks, order):
            found[row["incident"]].append(row)
    return found


# The lists of data an incident holds, each in its reading order.
CHILDREN: dict[str, tuple[type[Table], Any]] = {
    "alerts": (t.Alert, t.Alert.issue_time),
    "timeline": (t.TimelineEvent, t.TimelineEvent.occurred_at),
    "milestones": (t.Milestone, t.Milestone.committed_eta),
    "survey_responses": (t.SurveyResponse, t.SurveyResponse.submitted_at),
}


async def child_rows(
    *, viewer: Viewer, kind: str, pks: Sequence[int]
) -> Sequence[Mapping[str, Any]]:
    """Return the rows of one kind of incident data (a CHILDREN key) for these incidents."""
    policy.require(viewer, policy.Action.READ)
    table, order = CHILDREN[kind]
    return await _child_rows(table, pks, order)


async def _child_rows(
    table: type[Table], pks: Sequence[int], order: Any
) -> Sequence[Mapping[str, Any]]:
    if not pks:
        return []
    statement = db.statement()
    sql = (
        f"SELECT * FROM {table._meta.tablename}"
        f" WHERE incident {statement.one_of(sorted(set(pks)))}"
        f" ORDER BY {order._meta.db_column_name}, id"
    )
    return await db.fetch(sql, statement.args)


async def alerts_rows(pks: Sequence[int]) -> dict[int, list[Alert]]:
    """Return each incident's alerts by issue time."""
    rows = await _rows(t.Alert, pks, t.Alert.issue_time)
    return {pk: [alert_from_row(r) for r in rs] for pk, rs in rows.items()}


async def timeline_rows(pks: Sequence[int]) -> dict[int, list[TimelineEvent]]:
    """Return each incident's timeline in the order it happened."""
    rows = await _rows(t.TimelineEvent, pks, t.TimelineEvent.occurred_at)
    return {pk: [event_from_row(r) for r in rs] for pk, rs in rows.items()}


async def milestones_rows(pks: Sequence[int]) -> dict[int, list[Milestone]]:
    """Return each incident's milestones by committed ETA."""
    rows = await _rows(t.Milestone, pks, t.Milestone.committed_eta)
    return {pk: [milestone_from_row(r) for r in rs] for pk, rs in rows.items()}


async def surveys_rows(pks: Sequence[int]) -> dict[int, list[SurveyResponse]]:
    """Return each incident's survey responses by submission time."""
    rows = await _rows(t.SurveyResponse, pks, t.SurveyResponse.submitted_at)
    return {pk: [survey_from_row(r) for r in rs] for pk, rs in rows.items()}


async def alerts_for(*, viewer: Viewer, pks: Sequence[int]) -> dict[int, list[Alert]]:
    """Return each incident's alerts, for a reader."""
    policy.require(viewer, policy.Action.READ)
    await opaque.load()  # their ids are sealed
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
    await opaque.load()  # its id is sealed
    async with db.transaction():
        pk = await _incident_pk(incident_key)
        rows = await t.Alert.insert(
            t.Alert(incident=pk, issue_time=issued, source=source)
        ).returning(*t.Alert.all_columns())
        await compute.recompute_incidents([pk])
    return alert_from_row(rows[0])


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
    return event_from_row(rows[0])


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
    return milestone_from_row(rows[0])


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
    return survey_from_row(rows[0])
