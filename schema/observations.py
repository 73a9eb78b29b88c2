"""KPI observations: the type, and the ingest mutations."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import strawberry

from registry import model, observations, targets
from schema.context import Info
from schema.fields import from_row
from schema.incidents import IncidentType
from schema.kpis import KpiDefinitionType


@strawberry.type
class KpiObservation:
    # Fields read from the observation's row, declared once (schema/fields.py).
    timestamp: datetime = from_row("timestamp")
    value: float = from_row("value", value=float)
    source: str = from_row("source", description="e.g. computed, manual, import")
    confidence: float = from_row("confidence", value=float, description="0..1")
    definition_version: int | None = from_row(
        "definition_version",
        description="The definition version that computed it; null for ingested rows.",
    )
    observation: strawberry.Private[model.Observation]
    known_incident: strawberry.Private[IncidentType | None]
    row: strawberry.Private[Mapping[str, Any]]

    @classmethod
    def of(cls, o: model.Observation, incident: IncidentType | None = None) -> KpiObservation:
        return cls(observation=o, known_incident=incident, row=o.row)

    @strawberry.field
    async def kpi(self, info: Info) -> KpiDefinitionType:
        definition = await info.context.loaders.definition.load(self.observation.kpi_slug)
        if definition is None:
            # Observations are only read through the visibility filter, so this cannot happen.
            raise RuntimeError("an observation's KPI is not visible to its reader")
        return KpiDefinitionType.of(definition)

    @strawberry.field
    async def incident(
        self, info: Info
    ) -> Annotated[IncidentType, strawberry.lazy("schema.incidents")]:
        if self.known_incident is not None:
            return self.known_incident
        found = await info.context.loaders.incident.load(self.observation.incident_pk)
        if found is None:
            raise RuntimeError("an observation's incident is missing")
        return IncidentType.of(found)

    @strawberry.field(description="Against the target for the incident's severity.")
    async def meets_target(self, info: Info) -> bool | None:
        definition = await info.context.loaders.definition.load(self.observation.kpi_slug)
        incident = await info.context.loaders.incident.load(self.observation.incident_pk)
        if definition is None or incident is None:
            return None
        target = targets.applicable(
            definition.targets, severity=incident.severity, personas=info.context.viewer.personas
        )
        return targets.meets(target, self.observation.value)


@strawberry.input
class RecordObservationInput:
    kpi_slug: str
    incident_id: strawberry.ID
    timestamp: datetime
    value: float
    source: str
    confidence: float | None = 1.0

    def to_service(self) -> observations.ObservationInput:
        return observations.ObservationInput(
            kpi_slug=self.kpi_slug,
            incident_key=str(self.incident_id),
            timestamp=self.timestamp,
            value=self.value,
            source=self.source,
            confidence=1.0 if self.confidence is None else self.confidence,
        )


@strawberry.type
class ObservationMutation:
    @strawberry.mutation
    async def record_observation(self, info: Info, input: RecordObservationInput) -> KpiObservation:
        recorded = await observations.record(
            viewer=info.context.viewer, inputs=[input.to_service()]
        )
        return KpiObservation.of(recorded[0])

    @strawberry.mutation(description="1..1000 observations, all or nothing.")
    async def record_observations(
        self, info: Info, inputs: list[RecordObservationInput]
    ) -> list[KpiObservation]:
        recorded = await observations.record(
            viewer=info.context.viewer, inputs=[i.to_service() for i in inputs]
        )
        return [KpiObservation.of(o) for o in recorded]
