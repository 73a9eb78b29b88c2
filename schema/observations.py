"""KPI observations: the type, and the ingest mutations."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import strawberry

from registry import model, observations, targets
from schema.cache_keys import keyed
from schema.context import Info
from schema.fields import from_row
from schema.incidents import IncidentType
from schema.kpis import KpiDefinitionType


@strawberry.type(
    description="One value of a KPI for an incident: computed by the service from its "
    "expression, or ingested. Unique by (KPI, incident, timestamp)."
    + keyed("kpi { slug }, incident { id }, timestamp")
)
class KpiObservation:
    # Fields read from the observation's row, declared once (schema/fields.py).
    timestamp: datetime = from_row(
        "timestamp",
        description="When the value holds; for a computed one, taken from the data it came "
        "from (docs/formulas.md; mttr: resolvedAt).",
    )
    value: float = from_row(
        "value",
        value=float,
        description="In the KPI's units; finite, at most 10^12 in magnitude.",
    )
    source: str = from_row(
        "source",
        description='"computed" for values the service computes; for ingested ones what '
        "the ingester gave, e.g. manual, import.",
    )
    confidence: float = from_row(
        "confidence", value=float, description="0 to 1; 1 for computed values."
    )
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

    @strawberry.field(description="The KPI it is a value of (always one the caller may see).")
    async def kpi(self, info: Info) -> KpiDefinitionType:
        definition = await info.context.loaders.definition.load(self.observation.kpi_slug)
        if definition is None:
            # Observations are only read through the visibility filter, so this cannot happen.
            raise RuntimeError("an observation's KPI is not visible to its reader")
        return KpiDefinitionType.of(definition)

    @strawberry.field(description="The incident it measures.")
    async def incident(
        self, info: Info
    ) -> Annotated[IncidentType, strawberry.lazy("schema.incidents")]:
        if self.known_incident is not None:
            return self.known_incident
        found = await info.context.loaders.incident.load(self.observation.incident_pk)
        if found is None:
            raise RuntimeError("an observation's incident is missing")
        return IncidentType.of(found)

    @strawberry.field(
        description="Whether value meets the target for the incident's severity (else one for "
        "every severity; a target for one of the caller's personas beats one for every "
        "persona); null when no target applies."
    )
    async def meets_target(self, info: Info) -> bool | None:
        definition = await info.context.loaders.definition.load(self.observation.kpi_slug)
        incident = await info.context.loaders.incident.load(self.observation.incident_pk)
        if definition is None or incident is None:
            return None
        target = targets.applicable(
            definition.targets, severity=incident.severity, personas=info.context.viewer.personas
        )
        return targets.meets(target, self.observation.value)


@strawberry.input(
    description="An ingested value of a KPI for an incident. Recording one that exists with "
    "the same value returns the stored row; another value for the same (KPI, incident, "
    "timestamp) is CONFLICT."
)
class RecordObservationInput:
    kpi_slug: str = strawberry.field(
        description="The slug of an active KPI the caller may see (else BAD_USER_INPUT)."
    )
    incident_id: strawberry.ID = strawberry.field(
        description="An existing incident's id, its external key (e.g. INC-2041: 1 to 64 "
        "letters, digits or . _ : / -, starting with a letter or digit); any other is "
        "BAD_USER_INPUT."
    )
    timestamp: datetime = strawberry.field(description="When the value holds.")
    value: float = strawberry.field(
        description="In the KPI's units; finite, at most 10^12 in magnitude (else BAD_USER_INPUT)."
    )
    source: str = strawberry.field(
        description="Where it comes from, e.g. manual, import; not blank, at most 64 "
        "characters; computed is reserved for the service."
    )
    confidence: float | None = strawberry.field(
        default=1.0, description="0 to 1 (else BAD_USER_INPUT); null: 1."
    )

    def to_service(self) -> observations.ObservationInput:
        return observations.ObservationInput(
            kpi_slug=self.kpi_slug,
            incident_key=str(self.incident_id),
            timestamp=self.timestamp,
            value=self.value,
            source=self.source,
            confidence=1.0 if self.confidence is None else self.confidence,
        )


INGEST = "Ingest and admin only (others: FORBIDDEN)."


@strawberry.type
class ObservationMutation:
    @strawberry.mutation(description="Record one observation. " + INGEST)
    async def record_observation(
        self,
        info: Info,
        input: Annotated[
            RecordObservationInput, strawberry.argument(description="The observation.")
        ],
    ) -> KpiObservation:
        recorded = await observations.record(
            viewer=info.context.viewer, inputs=[input.to_service()]
        )
        return KpiObservation.of(recorded[0])

    @strawberry.mutation(
        description="Record 1 to 1,000 observations, all or nothing; answered in the order "
        "sent. " + INGEST
    )
    async def record_observations(
        self,
        info: Info,
        inputs: Annotated[
            list[RecordObservationInput],
            strawberry.argument(
                description="1 to 1,000 observations; two different values for one (KPI, "
                "incident, timestamp) are CONFLICT."
            ),
        ],
    ) -> list[KpiObservation]:
        recorded = await observations.record(
            viewer=info.context.viewer, inputs=[i.to_service() for i in inputs]
        )
        return [KpiObservation.of(o) for o in recorded]
