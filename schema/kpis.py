"""KPI definitions: types, queries and the admin mutations."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from datetime import datetime
from typing import Annotated, Any

import strawberry

from registry import kpis, model, policy, recompute, trends
from registry.errors import BadInput
from registry.rows import REVIEW_DUE_COLUMNS, review_due, review_overdue, string_tuple
from schema.context import Info
from schema.enums import (
    Bucket,
    Comparison,
    KpiStatus,
    Persona,
    RecomputeState,
    Severity,
    Visibility,
)
from schema.fields import from_row


@strawberry.type(name="Viewer")
class ViewerType:
    subject: str
    personas: list[Persona]
    visibilities: list[Visibility]


@strawberry.type(name="KpiTarget")
class KpiTarget:
    severity: Severity | None = strawberry.field(description="null: every severity")
    persona: Persona | None = strawberry.field(description="null: every persona")
    comparison: Comparison
    threshold: float

    @classmethod
    def of(cls, target: model.Target | None) -> KpiTarget | None:
        if target is None:
            return None
        return cls(
            severity=target.severity,
            persona=target.persona,
            comparison=target.comparison,
            threshold=target.threshold,
        )


@strawberry.type
class FieldChange:
    field: str
    before: str | None = strawberry.field(description="JSON-encoded")
    after: str | None = strawberry.field(description="JSON-encoded")


@strawberry.type
class KpiRevision:
    version: int
    changed_at: datetime
    changed_by: str
    note: str | None
    changes: list[FieldChange]

    @classmethod
    def of(cls, revision: model.Revision) -> KpiRevision:
        return cls(
            version=revision.version,
            changed_at=revision.changed_at,
            changed_by=revision.changed_by,
            note=revision.note,
            changes=[
                FieldChange(field=c.field, before=c.before, after=c.after) for c in revision.changes
            ],
        )


AS_OF = (
    "when the observations summarised last changed (written, rewritten or removed); the KPI's "
    "creation when none ever were"
)


@strawberry.type
class KpiSummary:
    count: int = strawberry.field(description="observations aggregated")
    value: float | None = strawberry.field(description="their mean; null when count is 0")
    target: KpiTarget | None = strawberry.field(description="the target that applies")
    meets_target: bool | None = strawberry.field(description="null when no value or no target")
    as_of: datetime = strawberry.field(description=AS_OF)


@strawberry.type(
    description="One bucket of a series. count and mean are exact; p50 and p90 are exact while "
    "each day, week or month the bucket sums (per severity) holds at most 128 observations, "
    "and otherwise estimated with a rank error of at most 1% of the bucket's observations."
)
class KpiPoint:
    start: datetime
    count: int
    mean: float | None
    p50: float | None = strawberry.field(
        description="the median, interpolated as percentile_cont; rank error at most 1%"
    )
    p90: float | None = strawberry.field(
        description="the 90th percentile, interpolated as percentile_cont; rank error at most 1%"
    )
    target: KpiTarget | None
    meets_target: bool | None
    as_of: datetime = strawberry.field(description=AS_OF)

    @classmethod
    def of(cls, point: trends.Point) -> KpiPoint:
        return cls(
            start=point.start,
            count=point.count,
            mean=point.mean,
            p50=point.p50,
            p90=point.p90,
            target=KpiTarget.of(point.target),
            meets_target=point.meets_target,
            as_of=point.as_of,
        )


@strawberry.type(
    description="A KPI's recompute from incident data, run in the background batch by batch."
)
class KpiRecompute:
    state: RecomputeState
    version: int = strawberry.field(description="the definition version that queued it")
    done: int = strawberry.field(description="incidents computed so far")
    total: int = strawberry.field(description="incidents to compute (those there were when queued)")
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None = strawberry.field(description="why it failed; null unless FAILED")

    @classmethod
    def of(cls, job: model.Recompute) -> KpiRecompute:
        return cls(
            state=job.state,
            version=job.version,
            done=job.done,
            total=job.total,
            queued_at=job.queued_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            error=job.error,
        )


@strawberry.type
class BackfillResult:
    kpi_slug: str
    incidents_scanned: int
    observations_written: int
    skipped: int
    recompute: KpiRecompute = strawberry.field(
        description="The job: the counts above are final once its state is DONE."
    )


@strawberry.type(name="KpiDefinition")
class KpiDefinitionType:
    # Fields read from the definition's row are declared once, here (schema/fields.py): the
    # executor, the compiled plans and the REST mirror all read them from this declaration.
    slug: str = from_row("slug")
    name: str = from_row("name")
    description: str = from_row("description")
    formula: str = from_row("formula")
    expression: str | None = from_row("expression")
    units: str = from_row("units")
    targets: list[KpiTarget] = strawberry.field(resolver=lambda root: root.target_list())
    data_sources: list[str] = from_row("data_sources", value=string_tuple)
    visibility: Visibility = from_row("visibility", value=Visibility)
    owner: str = from_row("owner")
    review_cadence: str = from_row("review_cadence", description="ISO 8601 duration, e.g. P90D")
    status: KpiStatus = from_row(
        "status",
        value=KpiStatus,
        description="RETIRED: kept with its history and observations, answered by slug, left "
        "out of kpis unless includeRetired, computed no more, taking no new observations.",
    )
    last_reviewed_at: datetime | None = from_row("last_reviewed_at")
    review_due_at: datetime | None = from_row(*REVIEW_DUE_COLUMNS, value=review_due)
    review_overdue: bool = from_row(
        *REVIEW_DUE_COLUMNS,
        value=review_overdue,
        description="Whether the review is past due: reviewDueAt is earlier than now.",
    )
    version: int = from_row("version")
    created_at: datetime = from_row("created_at")
    updated_at: datetime = from_row("updated_at")
    definition: strawberry.Private[model.Definition]
    row: strawberry.Private[Mapping[str, Any]]
    # Set for a definition as of a date: its revisions are those up to its version.
    historical: strawberry.Private[bool] = False

    @classmethod
    def of(cls, d: model.Definition, *, historical: bool = False) -> KpiDefinitionType:
        return cls(definition=d, row=d.row, historical=historical)

    def target_list(self) -> list[KpiTarget]:
        return [t for t in map(KpiTarget.of, self.definition.targets) if t is not None]

    @strawberry.field(
        description="The latest recompute of this KPI's observations; null if there was none."
    )
    async def recompute(self, info: Info) -> KpiRecompute | None:
        job = await info.context.loaders.recompute.load(self.definition.slug)
        return KpiRecompute.of(job) if job is not None else None

    @strawberry.field(description="Newest first: the audit trail.")
    async def revisions(self, info: Info) -> list[KpiRevision]:
        found = await info.context.loaders.revisions.load(self.definition.slug)
        if self.historical:
            found = [r for r in found if r.version <= self.definition.version]
        return [KpiRevision.of(r) for r in found]

    # summary and series check their window before anything is awaited, so that when several
    # KPIs of a list refuse it, the error reported is always the first KPI's.
    @strawberry.field(graphql_type=KpiSummary)
    def summary(
        self,
        info: Info,
        from_: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        to: datetime | None = None,
        severity: Severity | None = None,
    ) -> Awaitable[KpiSummary]:
        window = kpis.SummaryWindow.checked(from_, to, severity)
        return self._summary(info, window)

    async def _summary(self, info: Info, window: kpis.SummaryWindow) -> KpiSummary:
        s = await info.context.loaders.summary.load((self.definition, window))
        return KpiSummary(
            count=s.count,
            value=s.value,
            target=KpiTarget.of(s.target),
            meets_target=s.meets_target,
            as_of=s.as_of,
        )

    @strawberry.field(
        graphql_type=list[KpiPoint],
        description="One point per bucket from `from` (inclusive) to `to`.",
    )
    def series(
        self,
        info: Info,
        bucket: Bucket,
        from_: Annotated[datetime, strawberry.argument(name="from")],
        to: datetime,
        severity: Severity | None = None,
    ) -> Awaitable[list[KpiPoint]]:
        window = trends.Window.checked(bucket, from_, to, severity)
        return self._series(info, window)

    async def _series(self, info: Info, window: trends.Window) -> list[KpiPoint]:
        points = await info.context.loaders.series.load((self.definition, window))
        return [KpiPoint.of(p) for p in points]


@strawberry.type
class KpiQuery:
    @strawberry.field
    def viewer(self, info: Info) -> ViewerType:
        viewer = info.context.viewer
        policy.require(viewer, policy.Action.READ)
        visible = policy.visibilities(viewer)
        return ViewerType(
            subject=viewer.subject,
            personas=sorted(viewer.personas, key=list(Persona).index),
            visibilities=sorted(visible, key=list(Visibility).index),
        )

    @strawberry.field
    async def kpis(
        self,
        info: Info,
        visibility: Visibility | None = None,
        include_retired: Annotated[
            bool, strawberry.argument(description="Also list retired KPIs.")
        ] = False,
    ) -> list[KpiDefinitionType]:
        found = await kpis.list_definitions(
            viewer=info.context.viewer, visibility=visibility, include_retired=include_retired
        )
        return [KpiDefinitionType.of(d) for d in found]

    @strawberry.field
    async def kpi(
        self,
        info: Info,
        slug: str,
        as_of: Annotated[
            datetime | None,
            strawberry.argument(
                name="asOf",
                description="The definition as it stood then (every field, its version), "
                "rebuilt from the revisions; null before the KPI existed or when the caller "
                "may not see it as it stood then.",
            ),
        ] = None,
    ) -> KpiDefinitionType | None:
        viewer = info.context.viewer
        if as_of is not None:
            then = await kpis.definition_as_of(viewer=viewer, slug=slug, as_of=as_of)
            return KpiDefinitionType.of(then, historical=True) if then else None
        found = await kpis.get_definition(viewer=viewer, slug=slug)
        return KpiDefinitionType.of(found) if found else None


@strawberry.input
class KpiTargetInput:
    severity: Severity | None = None
    persona: Persona | None = None
    comparison: Comparison
    threshold: float

    def to_model(self) -> model.Target:
        return model.Target(
            comparison=self.comparison,
            threshold=self.threshold,
            severity=self.severity,
            persona=self.persona,
        )


@strawberry.input
class CreateKpiDefinitionInput:
    slug: str
    name: str
    description: str
    formula: str
    expression: str | None = None
    units: str
    targets: list[KpiTargetInput] | None = strawberry.field(default_factory=list)
    data_sources: list[str] | None = strawberry.field(default_factory=list)
    visibility: Visibility
    owner: str
    review_cadence: str


@strawberry.input(description="Every field optional; slug never changes.")
class UpdateKpiDefinitionInput:
    name: str | None = strawberry.UNSET
    description: str | None = strawberry.UNSET
    formula: str | None = strawberry.UNSET
    expression: str | None = strawberry.UNSET
    units: str | None = strawberry.UNSET
    targets: list[KpiTargetInput] | None = strawberry.UNSET
    data_sources: list[str] | None = strawberry.UNSET
    visibility: Visibility | None = strawberry.UNSET
    owner: str | None = strawberry.UNSET
    review_cadence: str | None = strawberry.UNSET


def _fields(given: Any) -> dict[str, Any]:
    """Return the input's fields that were given, with targets as domain values."""
    fields: dict[str, Any] = {}
    for name in (*kpis.EDITABLE, "slug"):
        value = getattr(given, name, strawberry.UNSET)
        if value is strawberry.UNSET:
            continue
        if name == "targets" and value is not None:
            value = [t.to_model() for t in value]
        fields[name] = value
    return fields


@strawberry.type
class KpiMutation:
    @strawberry.mutation
    async def create_kpi_definition(
        self, info: Info, input: CreateKpiDefinitionInput
    ) -> KpiDefinitionType:
        created = await kpis.create_definition(viewer=info.context.viewer, fields=_fields(input))
        await info.context.settle(created.slug)
        return KpiDefinitionType.of(created)

    @strawberry.mutation
    async def update_kpi_definition(
        self, info: Info, slug: str, input: UpdateKpiDefinitionInput, note: str | None = None
    ) -> KpiDefinitionType:
        updated = await kpis.update_definition(
            viewer=info.context.viewer, slug=slug, fields=_fields(input), note=note
        )
        await info.context.settle(slug)
        return KpiDefinitionType.of(updated)

    @strawberry.mutation(
        description="Recompute a KPI's observations from incident data: queued at once, then "
        "run in the background; the answer comes when it is done or after a few seconds."
    )
    async def backfill_kpi(self, info: Info, slug: str) -> BackfillResult:
        viewer = info.context.viewer
        await recompute.request(viewer=viewer, slug=slug)
        await info.context.settle(slug)
        job = (await recompute.jobs_by_slug(viewer=viewer, slugs=[slug])).get(slug)
        if job is None:
            # Its expression was removed while it was queued, and the job with it.
            raise BadInput(f"KPI {slug!r} no longer has an expression")
        return BackfillResult(
            kpi_slug=slug,
            incidents_scanned=job.done,
            observations_written=job.written,
            skipped=job.skipped,
            recompute=KpiRecompute.of(job),
        )

    @strawberry.mutation(
        description="Retire a KPI: kept with its history, left out of lists, computed no more."
    )
    async def retire_kpi_definition(
        self, info: Info, slug: str, note: str | None = None
    ) -> KpiDefinitionType:
        retired = await kpis.set_status(
            viewer=info.context.viewer, slug=slug, status=KpiStatus.RETIRED, note=note
        )
        return KpiDefinitionType.of(retired)

    @strawberry.mutation(
        description="Make a retired KPI active again; it is recomputed from its expression."
    )
    async def reactivate_kpi_definition(
        self, info: Info, slug: str, note: str | None = None
    ) -> KpiDefinitionType:
        active = await kpis.set_status(
            viewer=info.context.viewer, slug=slug, status=KpiStatus.ACTIVE, note=note
        )
        await info.context.settle(slug)
        return KpiDefinitionType.of(active)

    @strawberry.mutation
    async def mark_kpi_reviewed(
        self, info: Info, slug: str, note: str | None = None
    ) -> KpiDefinitionType:
        reviewed = await kpis.mark_reviewed(viewer=info.context.viewer, slug=slug, note=note)
        return KpiDefinitionType.of(reviewed)
