"""KPI definitions: types, queries and the admin mutations."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from datetime import datetime
from typing import Annotated, Any

import strawberry

from registry import kpis, model, policy, recompute, trends
from registry.errors import BadInput
from registry.rows import REVIEW_DUE_COLUMNS, review_due, review_overdue, string_tuple
from schema.cache_keys import VALUE, keyed
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


@strawberry.type(name="Viewer", description="Who is asking, as the bearer token proves it." + VALUE)
class ViewerType:
    subject: str = strawberry.field(description="The token's subject (its sub claim).")
    personas: list[Persona] = strawberry.field(
        description="The known personas the token names, in the enum's order; never empty "
        "(a token naming none gets FORBIDDEN)."
    )
    visibilities: list[Visibility] = strawberry.field(
        description="The KPI visibilities these personas may see, in the enum's order."
    )


@strawberry.type(
    name="KpiTarget",
    description="A threshold a KPI's values are judged against. Where several match, the one "
    "that applies is the most specific: a severity's own beats one for every severity, then a "
    "target for one of the caller's personas beats one for every persona." + VALUE,
)
class KpiTarget:
    severity: Severity | None = strawberry.field(
        description="The incident severity it applies to; null: every severity."
    )
    persona: Persona | None = strawberry.field(
        description="The persona it applies to (callers with it); null: every persona."
    )
    comparison: Comparison = strawberry.field(description="Whether lower or higher is better.")
    threshold: float = strawberry.field(
        description="In the KPI's units; finite, at most 10^12 in magnitude."
    )

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


@strawberry.type(description="One field's value before and after a change." + VALUE)
class FieldChange:
    field: str = strawberry.field(
        description="The field's GraphQL name, e.g. reviewCadence, status, lastReviewedAt."
    )
    before: str | None = strawberry.field(
        description='JSON-encoded as stored (e.g. "P90D"; visibility and status in lower '
        "case); null when the field had no value, as on creation."
    )
    after: str | None = strawberry.field(
        description="JSON-encoded as stored; null when the change cleared the field (e.g. an "
        "expression removed)."
    )


@strawberry.type(description="One change of a KPI definition: an entry of its audit trail." + VALUE)
class KpiRevision:
    version: int = strawberry.field(description="The version this change made; 1: creation.")
    changed_at: datetime = strawberry.field(description="When the change was made.")
    changed_by: str = strawberry.field(
        description="The subject of the token that made it (migration: the seed KPIs)."
    )
    note: str | None = strawberry.field(
        description="Why, as given with the change; null when none was given."
    )
    changes: list[FieldChange] = strawberry.field(
        description="The fields the change set, with their values before and after."
    )

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
    "When the observations summarised last changed (written, rewritten or removed); the KPI's "
    "creation when none ever were."
)
SEVERITY = (
    "Only observations of incidents of this severity, judged against its own target, else one "
    "for every severity; null: every incident, judged against a target for every severity."
)
SLUG_RULE = "^[a-z][a-z0-9]*(-[a-z0-9]+)*$, at most 64 characters"
SLUG = f"The KPI's slug ({SLUG_RULE}); any other string finds no KPI (null)."
EXPRESSION = (
    "The formula the service computes for every incident (docs/formulas.md), at most 2,000 "
    "characters; an invalid one is BAD_USER_INPUT with the position of the problem. Null: "
    "values are only ingested."
)
TARGETS = "At most 50, one per (severity, persona); null or []: none."
DATA_SOURCES = "At most 50, each not blank and at most 200 characters; null or []: none."
CADENCE = "A positive ISO 8601 duration of at most 10 years, e.g. P90D."
KNOWN_SLUG = f"An existing KPI's slug ({SLUG_RULE}); any other is BAD_USER_INPUT."
NOTE = "Why, recorded on the revision; at most 4,000 characters. Null: no note."
ADMIN = "Admin only (others: FORBIDDEN)."
WAIT = "which the answer waits for up to MIM_RECOMPUTE_WAIT seconds (default 2)."
NAME = "Not blank, at most 200 characters."
DESCRIPTION = "Not blank, at most 4,000 characters."
FORMULA = "For people, not computed; not blank, at most 4,000 characters."
UNITS = "Not blank, at most 64 characters."
VISIBILITY = "Which personas may see the KPI."
OWNER = "Not blank, at most 200 characters."
NOT_NULL = " Null is BAD_USER_INPUT."
TARGET = (
    "The target that applies: the severity's own, else one for every severity; a target for "
    "one of the caller's personas beats one for every persona. Null when none matches."
)


@strawberry.type(
    description="A KPI's observations in a window, aggregated, against its target." + VALUE
)
class KpiSummary:
    count: int = strawberry.field(description="Observations aggregated.")
    value: float | None = strawberry.field(
        description="Their mean, in the KPI's units; null when count is 0."
    )
    target: KpiTarget | None = strawberry.field(description=TARGET)
    meets_target: bool | None = strawberry.field(
        description="Whether value meets target; null when there is no value or no target."
    )
    as_of: datetime = strawberry.field(description=AS_OF)


@strawberry.type(
    description="One bucket of a series. count and mean are exact; p50 and p90 are exact while "
    "each day, week or month the bucket sums (per severity) holds at most 128 observations, "
    "and otherwise estimated with a rank error of at most 1% of the bucket's observations." + VALUE
)
class KpiPoint:
    start: datetime = strawberry.field(
        description="The bucket's start (00:00 UTC; weeks on Monday). The first bucket may start "
        "before `from` and the last end after `to`: only observations in [from, to) count."
    )
    count: int = strawberry.field(
        description="Observations in the bucket; 0 for a bucket without any (it is still listed)."
    )
    mean: float | None = strawberry.field(
        description="Their mean, in the KPI's units; null when count is 0."
    )
    p50: float | None = strawberry.field(
        description="The median, interpolated as percentile_cont; rank error at most 1%; null "
        "when count is 0."
    )
    p90: float | None = strawberry.field(
        description="The 90th percentile, interpolated as percentile_cont; rank error at most 1%; "
        "null when count is 0."
    )
    target: KpiTarget | None = strawberry.field(description=TARGET)
    meets_target: bool | None = strawberry.field(
        description="Whether mean meets target; null when count is 0 or there is no target."
    )
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
    + VALUE
)
class KpiRecompute:
    state: RecomputeState = strawberry.field(description="Where the job stands.")
    version: int = strawberry.field(description="The definition version it computes.")
    done: int = strawberry.field(description="Incidents computed so far.")
    total: int = strawberry.field(
        description="Incidents to compute: those there were when it was queued (raised to done "
        "when it ends, if more came meanwhile)."
    )
    queued_at: datetime = strawberry.field(description="When it was (last) queued.")
    started_at: datetime | None = strawberry.field(
        description="When a runner first claimed it; null while QUEUED."
    )
    finished_at: datetime | None = strawberry.field(
        description="When it ended; null unless DONE or FAILED."
    )
    error: str | None = strawberry.field(
        description="Why it failed, saying nothing of the internals; null unless FAILED."
    )

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


@strawberry.type(
    description="What backfillKpi has done so far: final once recompute.state is DONE." + VALUE
)
class BackfillResult:
    kpi_slug: str = strawberry.field(description="The KPI recomputed.")
    incidents_scanned: int = strawberry.field(description="Incidents computed so far.")
    observations_written: int = strawberry.field(
        description="Computed observations inserted or changed (rows left as they were, and "
        "rows removed, do not count): a second identical backfill writes 0."
    )
    skipped: int = strawberry.field(
        description="Incidents for which the expression gave no value (missing data, a division "
        "by zero, a result that is not finite or beyond 10^12)."
    )
    recompute: KpiRecompute = strawberry.field(
        description="The job: the counts above are final once its state is DONE."
    )


@strawberry.type(
    name="KpiDefinition",
    description="A KPI: what it measures, how it is computed, its targets, who may see it and "
    "who owns it. Exec and stakeholder callers see EXEC KPIs only."
    + keyed("slug")
    + " kpi(asOf:) answers a past state under the same key: read it uncached.",
)
class KpiDefinitionType:
    # Fields read from the definition's row are declared once, here (schema/fields.py): the
    # executor, the compiled plans and the REST mirror all read them from this declaration.
    slug: str = from_row(
        "slug",
        description="The KPI's identifier, never changed: ^[a-z][a-z0-9]*(-[a-z0-9]+)*$, at "
        "most 64 characters.",
    )
    name: str = from_row("name", description="Display name; not blank, at most 200 characters.")
    description: str = from_row(
        "description",
        description="What the KPI measures and why it matters; not blank, at most 4,000 "
        "characters.",
    )
    formula: str = from_row(
        "formula",
        description="The formula for people, not computed; not blank, at most 4,000 characters.",
    )
    expression: str | None = from_row(
        "expression",
        description="The formula the service computes for every incident (docs/formulas.md), "
        "at most 2,000 characters; null: values are only ingested.",
    )
    units: str = from_row(
        "units",
        description="The unit of its values, thresholds, means and percentiles (e.g. minutes, "
        "%, score); not blank, at most 64 characters.",
    )
    targets: list[KpiTarget] = strawberry.field(
        resolver=lambda root: root.target_list(),
        description="Every target, for every persona, in the order given; at most 50, one per "
        "(severity, persona).",
    )
    data_sources: list[str] = from_row(
        "data_sources",
        value=string_tuple,
        description="The events and fields its values come from (e.g. incident.resolved_at), in "
        "the order given; at most 50, each not blank and at most 200 characters.",
    )
    visibility: Visibility = from_row(
        "visibility", value=Visibility, description="Which personas may see the KPI."
    )
    owner: str = from_row(
        "owner",
        description="The role or person accountable for it; not blank, at most 200 characters.",
    )
    review_cadence: str = from_row(
        "review_cadence",
        description="How often the definition is re-validated: a positive ISO 8601 duration of "
        "at most 10 years, e.g. P90D.",
    )
    status: KpiStatus = from_row(
        "status",
        value=KpiStatus,
        description="RETIRED: kept with its history and observations, answered by slug, left "
        "out of kpis unless includeRetired, computed no more, taking no new observations.",
    )
    last_reviewed_at: datetime | None = from_row(
        "last_reviewed_at",
        description="When markKpiReviewed last recorded a review; null if it never did.",
    )
    review_due_at: datetime | None = from_row(
        *REVIEW_DUE_COLUMNS,
        value=review_due,
        description="When the next review is due: lastReviewedAt (else createdAt) plus "
        "reviewCadence, months and years by the calendar. This service always sets it.",
    )
    review_overdue: bool = from_row(
        *REVIEW_DUE_COLUMNS,
        value=review_overdue,
        description="Whether the review is past due: reviewDueAt is earlier than now, by the "
        "server's clock when the request is answered.",
    )
    version: int = from_row(
        "version",
        description="1 on create, +1 on every change (an update that changes nothing keeps it).",
    )
    created_at: datetime = from_row("created_at", description="When the KPI was created.")
    updated_at: datetime = from_row("updated_at", description="When its latest version was made.")
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
        description="The KPI's latest recompute job; null when there is none (never queued, or "
        "dropped when its expression was removed or it was retired)."
    )
    async def recompute(self, info: Info) -> KpiRecompute | None:
        job = await info.context.loaders.recompute.load(self.definition.slug)
        return KpiRecompute.of(job) if job is not None else None

    @strawberry.field(
        description="Newest first: the audit trail. For a definition as of a date, the "
        "revisions up to its version."
    )
    async def revisions(self, info: Info) -> list[KpiRevision]:
        found = await info.context.loaders.revisions.load(self.definition.slug)
        if self.historical:
            found = [r for r in found if r.version <= self.definition.version]
        return [KpiRevision.of(r) for r in found]

    # summary and series check their window before anything is awaited, so that when several
    # KPIs of a list refuse it, the error reported is always the first KPI's.
    @strawberry.field(
        graphql_type=KpiSummary,
        description="The KPI's observations whose timestamp falls from `from` (inclusive) to "
        "`to` (exclusive), aggregated.",
    )
    def summary(
        self,
        info: Info,
        from_: Annotated[
            datetime | None,
            strawberry.argument(
                name="from", description="Inclusive lower bound; null: from the first."
            ),
        ] = None,
        to: Annotated[
            datetime | None,
            strawberry.argument(
                description="Exclusive upper bound, after from; null: up to the last."
            ),
        ] = None,
        severity: Annotated[Severity | None, strawberry.argument(description=SEVERITY)] = None,
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
        description="One point per bucket, oldest first, over observations whose timestamp "
        "falls from `from` (inclusive) to `to` (exclusive); at most 1,000 buckets.",
    )
    def series(
        self,
        info: Info,
        bucket: Annotated[Bucket, strawberry.argument(description="The buckets' width.")],
        from_: Annotated[
            datetime,
            strawberry.argument(
                name="from",
                description="Inclusive lower bound; the first point is the bucket holding it.",
            ),
        ],
        to: Annotated[
            datetime, strawberry.argument(description="Exclusive upper bound, after from.")
        ],
        severity: Annotated[Severity | None, strawberry.argument(description=SEVERITY)] = None,
    ) -> Awaitable[list[KpiPoint]]:
        window = trends.Window.checked(bucket, from_, to, severity)
        return self._series(info, window)

    async def _series(self, info: Info, window: trends.Window) -> list[KpiPoint]:
        points = await info.context.loaders.series.load((self.definition, window))
        return [KpiPoint.of(p) for p in points]


@strawberry.type
class KpiQuery:
    @strawberry.field(description="Who is asking. FORBIDDEN for a token naming no known persona.")
    def viewer(self, info: Info) -> ViewerType | None:
        viewer = info.context.viewer
        policy.require(viewer, policy.Action.READ)
        visible = policy.visibilities(viewer)
        return ViewerType(
            subject=viewer.subject,
            personas=sorted(viewer.personas, key=list(Persona).index),
            visibilities=sorted(visible, key=list(Visibility).index),
        )

    @strawberry.field(
        description="The KPI definitions the caller may see, by slug; active ones only unless "
        "includeRetired."
    )
    async def kpis(
        self,
        info: Info,
        visibility: Annotated[
            Visibility | None,
            strawberry.argument(
                description="Only KPIs of this visibility, within what the caller may see (an "
                "exec asking for INTERNAL gets an empty list); null: every one it may see."
            ),
        ] = None,
        include_retired: Annotated[
            bool, strawberry.argument(description="Also list retired KPIs.")
        ] = False,
    ) -> list[KpiDefinitionType] | None:
        found = await kpis.list_definitions(
            viewer=info.context.viewer, visibility=visibility, include_retired=include_retired
        )
        return [KpiDefinitionType.of(d) for d in found]

    @strawberry.field(
        description="One KPI definition by slug, retired ones included; null when there is no "
        "such KPI or the caller may not see it."
    )
    async def kpi(
        self,
        info: Info,
        slug: Annotated[str, strawberry.argument(description=SLUG)],
        as_of: Annotated[
            datetime | None,
            strawberry.argument(
                name="asOf",
                description="The definition as it stood then (every field, its version), "
                "rebuilt from the revisions; null before the KPI existed or when the caller "
                "may not see it as it stood then, or now. Null: as it stands now.",
            ),
        ] = None,
    ) -> KpiDefinitionType | None:
        viewer = info.context.viewer
        if as_of is not None:
            then = await kpis.definition_as_of(viewer=viewer, slug=slug, as_of=as_of)
            return KpiDefinitionType.of(then, historical=True) if then else None
        found = await kpis.get_definition(viewer=viewer, slug=slug)
        return KpiDefinitionType.of(found) if found else None


@strawberry.input(description="A target of a KPI definition; see KpiTarget.")
class KpiTargetInput:
    severity: Severity | None = strawberry.field(
        default=None, description="The incident severity it applies to; null: every severity."
    )
    persona: Persona | None = strawberry.field(
        default=None, description="The persona it applies to; null: every persona."
    )
    comparison: Comparison = strawberry.field(description="Whether lower or higher is better.")
    threshold: float = strawberry.field(
        description="In the KPI's units; finite and at most 10^12 in magnitude (else "
        "BAD_USER_INPUT)."
    )

    def to_model(self) -> model.Target:
        return model.Target(
            comparison=self.comparison,
            threshold=self.threshold,
            severity=self.severity,
            persona=self.persona,
        )


@strawberry.input(
    description="A new KPI definition; the rules are those of KpiDefinition's fields."
)
class CreateKpiDefinitionInput:
    slug: str = strawberry.field(
        description="^[a-z][a-z0-9]*(-[a-z0-9]+)*$, at most 64 characters; unused (else "
        "CONFLICT); never changes."
    )
    name: str = strawberry.field(description=NAME)
    description: str = strawberry.field(description=DESCRIPTION)
    formula: str = strawberry.field(description=FORMULA)
    expression: str | None = strawberry.field(default=None, description=EXPRESSION)
    units: str = strawberry.field(description=UNITS)
    targets: list[KpiTargetInput] | None = strawberry.field(
        default_factory=list, description=TARGETS
    )
    data_sources: list[str] | None = strawberry.field(
        default_factory=list, description=DATA_SOURCES
    )
    visibility: Visibility = strawberry.field(description=VISIBILITY)
    owner: str = strawberry.field(description=OWNER)
    review_cadence: str = strawberry.field(description=CADENCE)


@strawberry.input(
    description="Every field optional: a field left out is kept; slug never changes. The rules "
    "are those of CreateKpiDefinitionInput."
)
class UpdateKpiDefinitionInput:
    name: str | None = strawberry.field(default=strawberry.UNSET, description=NAME + NOT_NULL)
    description: str | None = strawberry.field(
        default=strawberry.UNSET, description=DESCRIPTION + NOT_NULL
    )
    formula: str | None = strawberry.field(default=strawberry.UNSET, description=FORMULA + NOT_NULL)
    expression: str | None = strawberry.field(
        default=strawberry.UNSET,
        description="As on create. Null removes it: the KPI is then only ingested, and an "
        "active KPI's computed observations are removed.",
    )
    units: str | None = strawberry.field(default=strawberry.UNSET, description=UNITS + NOT_NULL)
    targets: list[KpiTargetInput] | None = strawberry.field(
        default=strawberry.UNSET,
        description="Replaces every target: at most 50, one per (severity, persona); null or "
        "[]: none.",
    )
    data_sources: list[str] | None = strawberry.field(
        default=strawberry.UNSET, description="Replaces the list. " + DATA_SOURCES
    )
    visibility: Visibility | None = strawberry.field(
        default=strawberry.UNSET, description=VISIBILITY + NOT_NULL
    )
    owner: str | None = strawberry.field(default=strawberry.UNSET, description=OWNER + NOT_NULL)
    review_cadence: str | None = strawberry.field(
        default=strawberry.UNSET, description=CADENCE + NOT_NULL
    )


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
    @strawberry.mutation(
        description="Create a KPI at version 1, with its first revision by the token's subject. "
        + ADMIN
        + " An existing slug is CONFLICT. An expression is computed for every incident in the "
        "background (see recompute), " + WAIT
    )
    async def create_kpi_definition(
        self,
        info: Info,
        input: Annotated[
            CreateKpiDefinitionInput, strawberry.argument(description="The new definition.")
        ],
    ) -> KpiDefinitionType:
        created = await kpis.create_definition(viewer=info.context.viewer, fields=_fields(input))
        await info.context.settle(created.slug)
        return KpiDefinitionType.of(created)

    @strawberry.mutation(
        description="Change the fields given: version +1 and one revision, unless nothing "
        "changes. "
        + ADMIN
        + " A concurrent change of the KPI is CONFLICT (retry). A changed expression is "
        "recomputed for every incident in the background (see recompute), " + WAIT
    )
    async def update_kpi_definition(
        self,
        info: Info,
        slug: Annotated[str, strawberry.argument(description=KNOWN_SLUG)],
        input: Annotated[
            UpdateKpiDefinitionInput, strawberry.argument(description="The fields to change.")
        ],
        note: Annotated[str | None, strawberry.argument(description=NOTE)] = None,
    ) -> KpiDefinitionType:
        updated = await kpis.update_definition(
            viewer=info.context.viewer, slug=slug, fields=_fields(input), note=note
        )
        await info.context.settle(slug)
        return KpiDefinitionType.of(updated)

    @strawberry.mutation(
        description="Recompute a KPI's observations from incident data: queued at once, then "
        "run in the background; the answer comes when it is done or after "
        "MIM_RECOMPUTE_WAIT seconds (default 2). Ingested observations are never overwritten. "
        "Admin only (others: FORBIDDEN, before any lookup). An unknown or retired KPI, or one "
        "without an expression, is BAD_USER_INPUT."
    )
    async def backfill_kpi(
        self,
        info: Info,
        slug: Annotated[
            str,
            strawberry.argument(
                description="The slug of an active KPI with an expression; any other is "
                "BAD_USER_INPUT."
            ),
        ],
    ) -> BackfillResult:
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
        description="Retire a KPI: kept with its history and observations and answered by "
        "kpi(slug), but left out of kpis unless includeRetired, computed no more, taking no new "
        "observations. One "
        "revision (field status); retiring a retired KPI changes nothing. " + ADMIN
    )
    async def retire_kpi_definition(
        self,
        info: Info,
        slug: Annotated[str, strawberry.argument(description=KNOWN_SLUG)],
        note: Annotated[str | None, strawberry.argument(description=NOTE)] = None,
    ) -> KpiDefinitionType:
        retired = await kpis.set_status(
            viewer=info.context.viewer, slug=slug, status=KpiStatus.RETIRED, note=note
        )
        return KpiDefinitionType.of(retired)

    @strawberry.mutation(
        description="Make a retired KPI active again, with one revision (field status). Its "
        "expression is recomputed for every incident in the background (see recompute), "
        + WAIT
        + " Without an expression, observations an earlier one computed are removed. "
        "Reactivating an active KPI changes nothing. " + ADMIN
    )
    async def reactivate_kpi_definition(
        self,
        info: Info,
        slug: Annotated[str, strawberry.argument(description=KNOWN_SLUG)],
        note: Annotated[str | None, strawberry.argument(description=NOTE)] = None,
    ) -> KpiDefinitionType:
        active = await kpis.set_status(
            viewer=info.context.viewer, slug=slug, status=KpiStatus.ACTIVE, note=note
        )
        await info.context.settle(slug)
        return KpiDefinitionType.of(active)

    @strawberry.mutation(
        description="Record that the definition was re-validated now: lastReviewedAt becomes "
        "now, so the next review is due a reviewCadence later; version +1 and one revision "
        "(field lastReviewedAt). " + ADMIN
    )
    async def mark_kpi_reviewed(
        self,
        info: Info,
        slug: Annotated[str, strawberry.argument(description=KNOWN_SLUG)],
        note: Annotated[str | None, strawberry.argument(description=NOTE)] = None,
    ) -> KpiDefinitionType:
        reviewed = await kpis.mark_reviewed(viewer=info.context.viewer, slug=slug, note=note)
        return KpiDefinitionType.of(reviewed)
