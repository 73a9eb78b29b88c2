"""Incidents and their data: types, the paged query and the ingest mutations."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry

from registry import incidents, model, opaque
from registry.rows import incident_from_row
from schema.cache_keys import VALUE, keyed
from schema.context import Info
from schema.enums import Severity
from schema.fields import from_row

if TYPE_CHECKING:
    from schema.observations import KpiObservation


# An incident's data, each type's fields declared once on its row (schema/fields.py).

INCIDENT_KEY = (
    "e.g. INC-2041: 1 to 64 letters, digits or . _ : / -, starting with a letter or digit"
)
INCIDENT_ID = (
    f"An existing incident's id, its external key ({INCIDENT_KEY}); any other is BAD_USER_INPUT."
)


@strawberry.type(description="An alert raised for an incident." + keyed("id"))
class Alert:
    id: strawberry.ID = from_row(
        "id", value=opaque.alert_id, description="Opaque and stable; reveals no row id."
    )
    issue_time: datetime = from_row("issue_time", description="When the alert was issued.")
    source: str | None = from_row(
        "source", description="What raised it, as recorded; null when not given."
    )
    row: strawberry.Private[Mapping[str, Any]]

    @classmethod
    def of(cls, alert: model.Alert) -> Alert:
        return cls(row=alert.row)


@strawberry.type(description="Something that happened during an incident." + VALUE)
class TimelineEvent:
    kind: str = from_row("kind", description="What happened, e.g. phase_entered.")
    phase: str | None = from_row(
        "phase",
        description="The incident phase it belongs to, e.g. gather; the earliest event of a "
        "phase is when the incident entered it. Null: none.",
    )
    occurred_at: datetime = from_row("occurred_at", description="When it happened.")
    note: str | None = from_row("note", description="Free text; null when not given.")
    row: strawberry.Private[Mapping[str, Any]]

    @classmethod
    def of(cls, event: model.TimelineEvent) -> TimelineEvent:
        return cls(row=event.row)


@strawberry.type(
    description="A commitment made during an incident: when it was promised for and when it "
    "was delivered. Unique by name within the incident." + VALUE
)
class Milestone:
    name: str = from_row("name", description="Its name, unique within the incident.")
    committed_eta: datetime = from_row("committed_eta", description="When it was promised for.")
    delivered_at: datetime | None = from_row(
        "delivered_at", description="When it was delivered; null while it is not."
    )
    row: strawberry.Private[Mapping[str, Any]]

    @classmethod
    def of(cls, milestone: model.Milestone) -> Milestone:
        return cls(row=milestone.row)


@strawberry.type(description="A stakeholder's post-incident survey answer." + VALUE)
class SurveyResponse:
    score: int = from_row("score", description="1 to 5.")
    submitted_at: datetime = from_row("submitted_at", description="When it was submitted.")
    row: strawberry.Private[Mapping[str, Any]]

    @classmethod
    def of(cls, response: model.SurveyResponse) -> SurveyResponse:
        return cls(row=response.row)


@strawberry.type(
    name="Incident",
    description="An incident and the data its KPIs are computed from. Every persona sees every "
    "incident; only its KPIs are filtered by visibility." + keyed("id"),
)
class IncidentType:
    # Fields read from the incident's row, declared once (schema/fields.py).
    id: strawberry.ID = from_row(
        "key",
        description="The external incident key, e.g. INC-2041: 1 to 64 letters, digits or "
        ". _ : / -, starting with a letter or digit.",
    )
    title: str = from_row("title", description="Not blank, at most 500 characters.")
    severity: Severity = from_row("severity", value=Severity, description="Its severity.")
    detected_at: datetime = from_row("detected_at", description="When it was detected.")
    resolved_at: datetime | None = from_row(
        "resolved_at",
        description="When it was resolved, never before detectedAt; null while unresolved.",
    )
    pk: strawberry.Private[int]
    row: strawberry.Private[Mapping[str, Any]]

    @classmethod
    def of(cls, incident: model.Incident) -> IncidentType:
        return cls(pk=incident.pk, row=incident.row)

    @strawberry.field(description="Its alerts by issueTime (ties: in the order recorded).")
    async def alerts(self, info: Info) -> list[Alert]:
        return [Alert.of(a) for a in await info.context.loaders.alerts.load(self.pk)]

    @strawberry.field(description="Its timeline by occurredAt (ties: in the order recorded).")
    async def timeline(self, info: Info) -> list[TimelineEvent]:
        return [TimelineEvent.of(e) for e in await info.context.loaders.timeline.load(self.pk)]

    @strawberry.field(
        description="Its milestones by committedEta (ties: in the order first recorded)."
    )
    async def milestones(self, info: Info) -> list[Milestone]:
        return [Milestone.of(m) for m in await info.context.loaders.milestones.load(self.pk)]

    @strawberry.field(
        description="Its survey responses by submittedAt (ties: in the order recorded)."
    )
    async def survey_responses(self, info: Info) -> list[SurveyResponse]:
        return [SurveyResponse.of(s) for s in await info.context.loaders.surveys.load(self.pk)]

    @strawberry.field(
        description="Its observations of the KPIs the caller may see, by KPI slug, then timestamp."
    )
    async def kpis(
        self,
        info: Info,
        slugs: Annotated[
            list[str] | None,
            strawberry.argument(
                description="Only these KPIs (at most 100); a slug that does not exist or "
                "that the caller may not see is simply absent. Null: every KPI."
            ),
        ] = None,
    ) -> list[Annotated[KpiObservation, strawberry.lazy("schema.observations")]]:
        from schema.observations import KpiObservation

        key = (self.pk, tuple(sorted(set(slugs))) if slugs is not None else None)
        found = await info.context.loaders.observations.load(key)
        return [KpiObservation.of(o, incident=self) for o in found]


@strawberry.type(description="Where a page of incidents stands." + VALUE)
class PageInfo:
    start_cursor: str | None = strawberry.field(
        description="The first edge's cursor, to pass as before for the page before this one; "
        "null when the page is empty."
    )
    end_cursor: str | None = strawberry.field(
        description="The last edge's cursor, to pass as after for the next page; null when the "
        "page is empty."
    )
    more: strawberry.Private[bool]
    window: strawberry.Private[incidents.Window]
    where: strawberry.Private[incidents.IncidentFilter]

    @strawberry.field(
        description="Whether more incidents follow this page (going backward: whether any "
        "follow before's incident, that one included)."
    )
    async def has_next_page(self, info: Info) -> bool:
        if not self.window.backward:
            return self.more
        return await incidents.behind_cursor(
            viewer=info.context.viewer, window=self.window, where=self.where
        )

    @strawberry.field(
        description="Whether incidents precede this page: going forward, whether any precede "
        "after's incident, that one included (false without after); going backward, whether "
        "more precede this page."
    )
    async def has_previous_page(self, info: Info) -> bool:
        if self.window.backward:
            return self.more
        return await incidents.behind_cursor(
            viewer=info.context.viewer, window=self.window, where=self.where
        )


@strawberry.type(description="One incident of a page, with its cursor." + VALUE)
class IncidentEdge:
    cursor: str = strawberry.field(
        description="Opaque; pass it as incidents(after:) to continue after this incident, or "
        "as incidents(before:) to page back from it."
    )
    node: IncidentType = strawberry.field(description="The incident.")


@strawberry.type(description="A page of incidents, newest first." + VALUE)
class IncidentConnection:
    edges: list[IncidentEdge] = strawberry.field(
        description="The page: at most `first` (or `last`) incidents, newest first by detectedAt."
    )
    page_info: PageInfo = strawberry.field(description="Whether more follow, and from where.")
    where: strawberry.Private[incidents.IncidentFilter]

    @strawberry.field(
        description="How many incidents match the filters (severity, detectedFrom, "
        "detectedTo), on every page: not only this one."
    )
    async def total_count(self, info: Info) -> int:
        return await incidents.count(viewer=info.context.viewer, where=self.where)


@strawberry.type
class IncidentQuery:
    @strawberry.field(
        description="Incidents, a page at a time, newest first by detectedAt (ties: the more "
        "recently created first)."
    )
    async def incidents(
        self,
        info: Info,
        first: Annotated[
            int | None,
            strawberry.argument(
                description="How many to answer from the start (or from after), 1 to 100 "
                "(else BAD_USER_INPUT); null: 20, unless last is given. Not with last or before."
            ),
        ] = None,
        after: Annotated[
            str | None,
            strawberry.argument(
                description="A cursor from an earlier page: the page starts after its "
                "incident. One this service did not issue is BAD_USER_INPUT. Null: from the "
                "newest. Not with last or before."
            ),
        ] = None,
        last: Annotated[
            int | None,
            strawberry.argument(
                description="Page backward: how many to answer from the end (or just before "
                "before), 1 to 100 (else BAD_USER_INPUT), still newest first; null: 20 when "
                "before is given. Not with first or after."
            ),
        ] = None,
        before: Annotated[
            str | None,
            strawberry.argument(
                description="A cursor from an earlier page: the page ends just before its "
                "incident. One this service did not issue is BAD_USER_INPUT. Not with first "
                "or after."
            ),
        ] = None,
        severity: Annotated[
            Severity | None,
            strawberry.argument(description="Only incidents of this severity; null: every one."),
        ] = None,
        detected_from: Annotated[
            datetime | None,
            strawberry.argument(
                description="Only incidents detected at or after this (inclusive); null: no "
                "lower bound."
            ),
        ] = None,
        detected_to: Annotated[
            datetime | None,
            strawberry.argument(
                description="Only incidents detected before this (exclusive); null: no upper bound."
            ),
        ] = None,
    ) -> IncidentConnection | None:
        where = incidents.IncidentFilter(
            severity=severity, detected_from=detected_from, detected_to=detected_to
        )
        window = incidents.Window(first=first, after=after, last=last, before=before)
        viewer = info.context.viewer
        rows, more = await incidents.page_rows(viewer=viewer, window=window, where=where)
        await opaque.load()  # the key the cursors are sealed with
        found = [incident_from_row(row) for row in rows]
        cursors = [incidents.encode_cursor(incident) for incident in found]
        edges = [
            IncidentEdge(cursor=cursor, node=IncidentType.of(incident))
            for incident, cursor in zip(found, cursors, strict=True)
        ]
        info_ = PageInfo(
            start_cursor=cursors[0] if cursors else None,
            end_cursor=cursors[-1] if cursors else None,
            more=more,
            window=window,
            where=where,
        )
        return IncidentConnection(edges=edges, page_info=info_, where=where)

    @strawberry.field(description="One incident by id; null when there is none.")
    async def incident(
        self,
        info: Info,
        id: Annotated[
            strawberry.ID,
            strawberry.argument(
                description=f"The external incident key ({INCIDENT_KEY}); any other string "
                "finds none (null)."
            ),
        ],
    ) -> IncidentType | None:
        found = await incidents.by_key(viewer=info.context.viewer, key=str(id))
        return IncidentType.of(found) if found else None


@strawberry.input(description="An incident, created or replaced by id.")
class IncidentInput:
    id: strawberry.ID = strawberry.field(
        description="The external incident key, e.g. INC-2041: 1 to 64 letters, digits or "
        ". _ : / -, starting with a letter or digit."
    )
    title: str = strawberry.field(description="Not blank, at most 500 characters.")
    severity: Severity = strawberry.field(description="Its severity.")
    detected_at: datetime = strawberry.field(description="When it was detected.")
    resolved_at: datetime | None = strawberry.field(
        default=None,
        description="When it was resolved, not before detectedAt; null: unresolved (an upsert "
        "with null clears it).",
    )


@strawberry.input(description="An alert raised for an existing incident.")
class AlertInput:
    incident_id: strawberry.ID = strawberry.field(description=INCIDENT_ID)
    issue_time: datetime = strawberry.field(description="When the alert was issued.")
    source: str | None = strawberry.field(
        default=None, description="What raised it; at most 200 characters."
    )


@strawberry.input(description="A timeline event of an existing incident.")
class TimelineEventInput:
    incident_id: strawberry.ID = strawberry.field(description=INCIDENT_ID)
    kind: str = strawberry.field(
        description="What happened, e.g. phase_entered; not blank, at most 64 characters."
    )
    phase: str | None = strawberry.field(
        default=None,
        description="The incident phase it belongs to, e.g. gather; at most 64 characters.",
    )
    occurred_at: datetime = strawberry.field(description="When it happened.")
    note: str | None = strawberry.field(
        default=None, description="Free text, at most 4,000 characters."
    )


@strawberry.input(description="A milestone of an existing incident: upsert by (incident, name).")
class MilestoneInput:
    incident_id: strawberry.ID = strawberry.field(description=INCIDENT_ID)
    name: str = strawberry.field(
        description="Not blank, at most 200 characters; a name the incident already has "
        "replaces that milestone's committedEta and deliveredAt."
    )
    committed_eta: datetime = strawberry.field(description="When it is promised for.")
    delivered_at: datetime | None = strawberry.field(
        default=None, description="When it was delivered; null: not yet."
    )


@strawberry.input(description="A stakeholder's post-incident survey answer.")
class SurveyResponseInput:
    incident_id: strawberry.ID = strawberry.field(description=INCIDENT_ID)
    score: int = strawberry.field(description="1 to 5 (else BAD_USER_INPUT).")
    submitted_at: datetime = strawberry.field(description="When it was submitted.")


INGEST = (
    "Ingest and admin only (others: FORBIDDEN). The incident's computed KPIs are recomputed in "
    "the same transaction."
)


@strawberry.type
class IncidentMutation:
    @strawberry.mutation(
        description="Create the incident with this id, or replace its title, severity, "
        "detectedAt and resolvedAt. " + INGEST
    )
    async def upsert_incident(
        self,
        info: Info,
        input: Annotated[IncidentInput, strawberry.argument(description="The incident.")],
    ) -> IncidentType:
        incident = await incidents.upsert(
            viewer=info.context.viewer,
            key=str(input.id),
            title=input.title,
            severity=input.severity,
            detected_at=input.detected_at,
            resolved_at=input.resolved_at,
        )
        return IncidentType.of(incident)

    @strawberry.mutation(description="Record an alert raised for an incident. " + INGEST)
    async def record_alert(
        self,
        info: Info,
        input: Annotated[AlertInput, strawberry.argument(description="The alert.")],
    ) -> Alert:
        alert = await incidents.record_alert(
            viewer=info.context.viewer,
            incident_key=str(input.incident_id),
            issue_time=input.issue_time,
            source=input.source,
        )
        return Alert.of(alert)

    @strawberry.mutation(description="Record a timeline event, such as entering a phase. " + INGEST)
    async def record_timeline_event(
        self,
        info: Info,
        input: Annotated[TimelineEventInput, strawberry.argument(description="The event.")],
    ) -> TimelineEvent:
        event = await incidents.record_timeline_event(
            viewer=info.context.viewer,
            incident_key=str(input.incident_id),
            kind=input.kind,
            phase=input.phase,
            occurred_at=input.occurred_at,
            note=input.note,
        )
        return TimelineEvent.of(event)

    @strawberry.mutation(
        description="Create or replace the incident's milestone of this name. " + INGEST
    )
    async def record_milestone(
        self,
        info: Info,
        input: Annotated[MilestoneInput, strawberry.argument(description="The milestone.")],
    ) -> Milestone:
        milestone = await incidents.record_milestone(
            viewer=info.context.viewer,
            incident_key=str(input.incident_id),
            name=input.name,
            committed_eta=input.committed_eta,
            delivered_at=input.delivered_at,
        )
        return Milestone.of(milestone)

    @strawberry.mutation(description="Record a stakeholder's post-incident survey score. " + INGEST)
    async def record_survey_response(
        self,
        info: Info,
        input: Annotated[
            SurveyResponseInput, strawberry.argument(description="The survey answer.")
        ],
    ) -> SurveyResponse:
        response = await incidents.record_survey_response(
            viewer=info.context.viewer,
            incident_key=str(input.incident_id),
            score=input.score,
            submitted_at=input.submitted_at,
        )
        return SurveyResponse.of(response)
