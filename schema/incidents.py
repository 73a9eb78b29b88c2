"""Incidents and their data: types, the paged query and the ingest mutations."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry

from registry import incidents, model, opaque
from schema.context import Info
from schema.enums import Severity
from schema.fields import from_row

if TYPE_CHECKING:
    from schema.observations import KpiObservation


# An incident's data, each type's fields declared once on its row (schema/fields.py).


@strawberry.type
class Alert:
    id: strawberry.ID = from_row(
        "id", value=opaque.alert_id, description="Opaque and stable; reveals no row id."
    )
    issue_time: datetime = from_row("issue_time")
    source: str | None = from_row("source")
    row: strawberry.Private[Mapping[str, Any]]

    @classmethod
    def of(cls, alert: model.Alert) -> Alert:
        return cls(row=alert.row)


@strawberry.type
class TimelineEvent:
    kind: str = from_row("kind")
    phase: str | None = from_row("phase")
    occurred_at: datetime = from_row("occurred_at")
    note: str | None = from_row("note")
    row: strawberry.Private[Mapping[str, Any]]

    @classmethod
    def of(cls, event: model.TimelineEvent) -> TimelineEvent:
        return cls(row=event.row)


@strawberry.type
class Milestone:
    name: str = from_row("name")
    committed_eta: datetime = from_row("committed_eta")
    delivered_at: datetime | None = from_row("delivered_at")
    row: strawberry.Private[Mapping[str, Any]]

    @classmethod
    def of(cls, milestone: model.Milestone) -> Milestone:
        return cls(row=milestone.row)


@strawberry.type
class SurveyResponse:
    score: int = from_row("score")
    submitted_at: datetime = from_row("submitted_at")
    row: strawberry.Private[Mapping[str, Any]]

    @classmethod
    def of(cls, response: model.SurveyResponse) -> SurveyResponse:
        return cls(row=response.row)


@strawberry.type(name="Incident")
class IncidentType:
    # Fields read from the incident's row, declared once (schema/fields.py).
    id: strawberry.ID = from_row("key", description="The external incident key, e.g. INC-2041.")
    title: str = from_row("title")
    severity: Severity = from_row("severity", value=Severity)
    detected_at: datetime = from_row("detected_at")
    resolved_at: datetime | None = from_row("resolved_at")
    pk: strawberry.Private[int]
    row: strawberry.Private[Mapping[str, Any]]

    @classmethod
    def of(cls, incident: model.Incident) -> IncidentType:
        return cls(pk=incident.pk, row=incident.row)

    @strawberry.field
    async def alerts(self, info: Info) -> list[Alert]:
        return [Alert.of(a) for a in await info.context.loaders.alerts.load(self.pk)]

    @strawberry.field
    async def timeline(self, info: Info) -> list[TimelineEvent]:
        return [TimelineEvent.of(e) for e in await info.context.loaders.timeline.load(self.pk)]

    @strawberry.field
    async def milestones(self, info: Info) -> list[Milestone]:
        return [Milestone.of(m) for m in await info.context.loaders.milestones.load(self.pk)]

    @strawberry.field
    async def survey_responses(self, info: Info) -> list[SurveyResponse]:
        return [SurveyResponse.of(s) for s in await info.context.loaders.surveys.load(self.pk)]

    @strawberry.field(description="Only KPIs the caller may see.")
    async def kpis(
        self, info: Info, slugs: list[str] | None = None
    ) -> list[Annotated[KpiObservation, strawberry.lazy("schema.observations")]]:
        from schema.observations import KpiObservation

        key = (self.pk, tuple(sorted(set(slugs))) if slugs is not None else None)
        found = await info.context.loaders.observations.load(key)
        return [KpiObservation.of(o, incident=self) for o in found]


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class IncidentEdge:
    cursor: str
    node: IncidentType


@strawberry.type
class IncidentConnection:
    edges: list[IncidentEdge]
    page_info: PageInfo
    where: strawberry.Private[incidents.IncidentFilter]

    @strawberry.field
    async def total_count(self, info: Info) -> int:
        return await incidents.count(viewer=info.context.viewer, where=self.where)


@strawberry.type
class IncidentQuery:
    @strawberry.field(description="Newest first. first: 1..100.")
    async def incidents(
        self,
        info: Info,
        first: int | None = 20,
        after: str | None = None,
        severity: Severity | None = None,
        detected_from: datetime | None = None,
        detected_to: datetime | None = None,
    ) -> IncidentConnection:
        where = incidents.IncidentFilter(
            severity=severity, detected_from=detected_from, detected_to=detected_to
        )
        page = await incidents.page(
            viewer=info.context.viewer,
            first=20 if first is None else first,
            after=after,
            where=where,
        )
        edges = [
            IncidentEdge(cursor=cursor, node=IncidentType.of(incident))
            for incident, cursor in zip(page.incidents, page.cursors, strict=True)
        ]
        info_ = PageInfo(
            has_next_page=page.has_next_page, end_cursor=page.cursors[-1] if page.cursors else None
        )
        return IncidentConnection(edges=edges, page_info=info_, where=where)

    @strawberry.field
    async def incident(self, info: Info, id: strawberry.ID) -> IncidentType | None:
        found = await incidents.by_key(viewer=info.context.viewer, key=str(id))
        return IncidentType.of(found) if found else None


@strawberry.input
class IncidentInput:
    id: strawberry.ID
    title: str
    severity: Severity
    detected_at: datetime
    resolved_at: datetime | None = None


@strawberry.input
class AlertInput:
    incident_id: strawberry.ID
    issue_time: datetime
    source: str | None = None


@strawberry.input
class TimelineEventInput:
    incident_id: strawberry.ID
    kind: str
    phase: str | None = None
    occurred_at: datetime
    note: str | None = None


@strawberry.input(description="Upsert by (incident, name).")
class MilestoneInput:
    incident_id: strawberry.ID
    name: str
    committed_eta: datetime
    delivered_at: datetime | None = None


@strawberry.input
class SurveyResponseInput:
    incident_id: strawberry.ID
    score: int
    submitted_at: datetime


@strawberry.type
class IncidentMutation:
    @strawberry.mutation
    async def upsert_incident(self, info: Info, input: IncidentInput) -> IncidentType:
        incident = await incidents.upsert(
            viewer=info.context.viewer,
            key=str(input.id),
            title=input.title,
            severity=input.severity,
            detected_at=input.detected_at,
            resolved_at=input.resolved_at,
        )
        return IncidentType.of(incident)

    @strawberry.mutation
    async def record_alert(self, info: Info, input: AlertInput) -> Alert:
        alert = await incidents.record_alert(
            viewer=info.context.viewer,
            incident_key=str(input.incident_id),
            issue_time=input.issue_time,
            source=input.source,
        )
        return Alert.of(alert)

    @strawberry.mutation
    async def record_timeline_event(self, info: Info, input: TimelineEventInput) -> TimelineEvent:
        event = await incidents.record_timeline_event(
            viewer=info.context.viewer,
            incident_key=str(input.incident_id),
            kind=input.kind,
            phase=input.phase,
            occurred_at=input.occurred_at,
            note=input.note,
        )
        return TimelineEvent.of(event)

    @strawberry.mutation
    async def record_milestone(self, info: Info, input: MilestoneInput) -> Milestone:
        milestone = await incidents.record_milestone(
            viewer=info.context.viewer,
            incident_key=str(input.incident_id),
            name=input.name,
            committed_eta=input.committed_eta,
            delivered_at=input.delivered_at,
        )
        return Milestone.of(milestone)

    @strawberry.mutation
    async def record_survey_response(
        self, info: Info, input: SurveyResponseInput
    ) -> SurveyResponse:
        response = await incidents.record_survey_response(
            viewer=info.context.viewer,
            incident_key=str(input.incident_id),
            score=input.score,
            submitted_at=input.submitted_at,
        )
        return SurveyResponse.of(response)
