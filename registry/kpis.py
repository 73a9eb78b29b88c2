"""KPI definitions: read under the visibility policy, changed by admins with a revision each."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from registry import compute, db, policy, recompute, rollups, targets, validate
from registry.errors import BadInput, Conflict, NotFound
from registry.formulas import compile_formula
from registry.model import (
    Definition,
    FieldChange,
    KpiScope,
    KpiStatus,
    Revision,
    Severity,
    Summary,
    Target,
    Viewer,
    Visibility,
)
from registry.rows import (
    DEFINITION_COLUMNS,
    REVIEW_DUE_COLUMNS,
    checked_columns,
    definition_from_row,
    review_due,
)
from registry.tables import KpiDefinition, KpiRevision

# Domain field -> the name clients know it by, used in revisions.
PUBLIC_NAMES = {
    "slug": "slug",
    "name": "name",
    "description": "description",
    "formula": "formula",
    "expression": "expression",
    "units": "units",
    "targets": "targets",
    "data_sources": "dataSources",
    "visibility": "visibility",
    "owner": "owner",
    "review_cadence": "reviewCadence",
    "status": "status",
    "last_reviewed_at": "lastReviewedAt",
}
# Changed by updateKpiDefinition; the status by retirement and reactivation only.
EDITABLE = tuple(f for f in PUBLIC_NAMES if f not in ("slug", "last_reviewed_at", "status"))
MAX_TARGETS = 50
MAX_DATA_SOURCES = 50


@dataclass(frozen=True, slots=True)
class SummaryWindow:
    start: datetime | None = None
    end: datetime | None = None
    severity: Severity | None = None

    @classmethod
    def checked(
        cls, start: datetime | None, end: datetime | None, severity: Severity | None
    ) -> SummaryWindow:
        """Return a window whose bounds are valid UTC date-times, `from` before `to`."""
        start = validate.optional_utc(start, "from")
        end = validate.optional_utc(end, "to")
        if start is not None and end is not None and end <= start:
            raise BadInput("to must be after from")
        return cls(start=start, end=end, severity=severity)


async def definition_rows(
    *,
    viewer: Viewer,
    columns: Sequence[str] = DEFINITION_COLUMNS,
    visibility: Visibility | None = None,
    slugs: Sequence[str] | None = None,
    include_retired: bool = True,
) -> Sequence[Mapping[str, Any]]:
    """Return the rows of the definitions the viewer may see, by slug: only `columns`."""
    statement = db.statement()
    sql = (
        f"SELECT {_column_list(columns)} FROM kpi_definition"
        f" WHERE {policy.visible(viewer, 'visibility', statement)}"
    )
    if visibility is not None:
        sql += f" AND visibility = {statement.arg(visibility.value)}"
    if not include_retired:
        sql += f" AND status = {statement.arg(KpiStatus.ACTIVE.value)}"
    if slugs is not None:
        slugs = sorted({s for s in slugs if validate.is_slug(s)})
        if not slugs:
            return []
        sql += f" AND slug {statement.one_of(slugs)}"
    return await db.fetch(sql + " ORDER BY slug", statement.args)


def _column_list(columns: Sequence[str]) -> str:
    if not columns:
        raise ValueError("name at least one column")
    return ", ".join(checked_columns(columns))


async def review_dues(*, viewer: Viewer) -> tuple[datetime, ...]:
    """Return, in order, when each definition the viewer may see is next due for review."""
    rows = await definition_rows(viewer=viewer, columns=("slug", *REVIEW_DUE_COLUMNS))
    return tuple(
        sorted(
            review_due(row["last_reviewed_at"], row["created_at"], row["review_cadence"])
            for row in rows
        )
    )


async def list_definitions(
    *, viewer: Viewer, visibility: Visibility | None = None, include_retired: bool = False
) -> list[Definition]:
    """Return the definitions the viewer may see, by slug: the active ones unless asked."""
    found = await definition_rows(
        viewer=viewer, visibility=visibility, include_retired=include_retired
    )
    return [definition_from_row(row) for row in found]


async def get_definition(*, viewer: Viewer, slug: str) -> Definition | None:
    """Return one definition, or None when it does not exist or the viewer may not see it."""
    found = await definitions_by_slug(viewer=viewer, slugs=[slug])
    return found.get(slug)


async def definition_as_of(*, viewer: Viewer, slug: str, as_of: datetime) -> Definition | None:
    """Return the definition as it stood at `as_of`, rebuilt from its revisions (every field and
    the version then); None before it existed, or when the viewer may not see it as it stood
    then, or now (a KPI made internal since stays hidden from exec personas, history and all)."""
    moment = validate.utc(as_of, "asOf")
    if not validate.is_slug(slug):
        return None
    rows = await (
        KpiRevision.select()
        .where(
            # Visible now (the KPI's current visibility), and below: visible then.
            policy.visible(viewer, KpiRevision.kpi._.visibility),
            KpiRevision.kpi == slug,
            KpiRevision.changed_at <= moment,
        )
        .order_by(KpiRevision.version)
        .output(load_json=True)
    )
    if not rows:
        return None
    then: dict[str, Any] = {
        "expression": None,
        "targets": [],
        "data_sources": [],
        "status": KpiStatus.ACTIVE.value,
        "last_reviewed_at": None,
    }
    for row in rows:
        for change in row["changes"] or []:
            name = _FIELD_OF.get(change["field"])
            if name is not None:
                after = change["after"]
                then[name] = None if after is None else json.loads(after)
    if then.get("last_reviewed_at") is not None:
        then["last_reviewed_at"] = datetime.fromisoformat(then["last_reviewed_at"])
    then.update(
        slug=slug,
        version=rows[-1]["version"],
        created_at=rows[0]["changed_at"],
        updated_at=rows[-1]["changed_at"],
    )
    missing = [c for c in DEFINITION_COLUMNS if c not in then]
    if missing:
        return None  # revisions that do not describe it whole (none the service writes)
    if Visibility(then["visibility"]) not in policy.visibilities(viewer):
        return None
    return definition_from_row(then)


# Revisions name fields as clients do; the columns they are kept in.
_FIELD_OF = {public: name for name, public in PUBLIC_NAMES.items()}


async def definitions_by_slug(*, viewer: Viewer, slugs: Sequence[str]) -> dict[str, Definition]:
    """Return the visible definitions among `slugs`, keyed by slug."""
    found = await definition_rows(viewer=viewer, slugs=slugs)
    return {row["slug"]: definition_from_row(row) for row in found}


async def revisions_by_slug(*, viewer: Viewer, slugs: Sequence[str]) -> dict[str, list[Revision]]:
    """Return each visible definition's revisions, newest first."""
    if not slugs:
        return {}
    rows = await (
        KpiRevision.select()
        .where(
            policy.visible(viewer, KpiRevision.kpi._.visibility),
            KpiRevision.kpi.is_in(list(set(slugs))),
        )
        .order_by(KpiRevision.version, ascending=False)
        .output(load_json=True)
    )
    found: dict[str, list[Revision]] = {slug: [] for slug in slugs}
    for row in rows:
        found[row["kpi"]].append(_revision(row))
    return found


async def summaries(
    *, viewer: Viewer, keys: Sequence[tuple[KpiScope, SummaryWindow]]
) -> list[Summary]:
    """Return a summary per (definition, window): one statement per distinct window, from the
    rollups (registry/rollups.py)."""
    by_window: dict[SummaryWindow, list[str]] = {}
    for definition, window in keys:
        by_window.setdefault(window, []).append(definition.slug)
    found: dict[tuple[SummaryWindow, str], rollups.Total] = {}
    for window, slugs in by_window.items():
        totals = await rollups.totals(
            viewer=viewer,
            slugs=slugs,
            start=window.start,
            end=window.end,
            severity=window.severity,
        )
        found.update(((window, slug), total) for slug, total in totals.items())
    summaries = []
    for d, window in keys:
        total = found.get((window, d.slug))
        count = total.count if total else 0
        summary = targets.summarize(
            count,
            total.total / count if total and count else None,
            d.targets,
            severity=window.severity,
            personas=viewer.personas,
            as_of=(total.as_of if total else None) or d.created_at,
        )
        summaries.append(summary)
    return summaries


async def create_definition(*, viewer: Viewer, fields: Mapping[str, Any]) -> Definition:
    """Create a definition at version 1 with its first revision; admins only."""
    policy.require(viewer, policy.Action.DEFINE)
    values = checked({**fields, "slug": validate.slug(fields["slug"])}, creating=True)
    now = datetime.now(UTC)
    async with db.transaction():
        if await KpiDefinition.exists().where(KpiDefinition.slug == values["slug"]):
            raise Conflict(f"a KPI with slug {values['slug']!r} already exists")
        await KpiDefinition.insert(
            KpiDefinition(**_stored(values), version=1, created_at=now, updated_at=now)
        )
        changes = [
            FieldChange(PUBLIC_NAMES[f], None, encode(values[f]))
            for f in PUBLIC_NAMES
            if f in values
        ]
        await _record_revision(values["slug"], 1, now, viewer.subject, None, changes)
        if values["expression"] is not None:
            # Computed in the background (registry/recompute.py): this commits at once.
            await recompute.queue(values["slug"], 1)
    return await _require(viewer, values["slug"])


async def update_definition(
    *, viewer: Viewer, slug: str, fields: Mapping[str, Any], note: str | None
) -> Definition:
    """Apply the given fields; a change bumps the version and records a revision."""
    policy.require(viewer, policy.Action.DEFINE)
    values = checked(fields, creating=False)
    note = validate.optional_text(note, "note", max_length=4000)
    async with db.transaction():
        current = await _require(viewer, slug)
        changes = [
            FieldChange(PUBLIC_NAMES[f], encode(getattr(current, f)), encode(v))
            for f, v in values.items()
            if encode(getattr(current, f)) != encode(v)
        ]
        if not changes:
            return current
        await _bump(current, _stored(values), changes, viewer.subject, note)
        # A retired KPI is computed no more; reactivation computes it from its expression then.
        if current.status is KpiStatus.ACTIVE and any(c.field == "expression" for c in changes):
            if values["expression"] is None:
                await compute.forget_kpi(slug)
                await recompute.cancel(slug)
            else:
                await recompute.queue(slug, current.version + 1)
    return await _require(viewer, slug)


async def set_status(
    *, viewer: Viewer, slug: str, status: KpiStatus, note: str | None
) -> Definition:
    """Retire a KPI or make it active again, with a revision; admins only.

    A retired KPI keeps its history and observations and still answers by slug, but is left out
    of lists, computed no more and takes no new observations. Reactivation recomputes it from its
    expression (or, without one, forgets what an earlier expression computed), as an expression
    change does.
    """
    policy.require(viewer, policy.Action.DEFINE)
    note = validate.optional_text(note, "note", max_length=4000)
    async with db.transaction():
        current = await _require(viewer, slug)
        if current.status is status:
            return current
        change = FieldChange("status", encode(current.status), encode(status))
        await _bump(current, {"status": status.value}, [change], viewer.subject, note)
        if status is KpiStatus.RETIRED:
            await recompute.cancel(slug)
        elif current.expression is None:
            await compute.forget_kpi(slug)
        else:
            await recompute.queue(slug, current.version + 1)
    return await _require(viewer, slug)


class PlanAction(enum.Enum):
    """What applying a definitions file does to one KPI (registry/definitions_file.py)."""

    CREATE = "create"
    CHANGE = "change"
    RETIRE = "retire"
    REACTIVATE = "reactivate"
    UNCHANGED = "unchanged"
    ABSENT = "absent"  # in the registry, not in the file: left alone


@dataclass(frozen=True, slots=True)
class PlannedKpi:
    slug: str
    action: PlanAction
    changes: tuple[FieldChange, ...] = ()


# The fields a definitions file gives, in the seed page's order (and the status).
FILE_FIELDS = (*EDITABLE, "status")


async def plan_definitions(
    *, viewer: Viewer, desired: Sequence[Mapping[str, Any]]
) -> list[PlannedKpi]:
    """Return what applying `desired` (checked values of every FILE_FIELDS, and the slug)
    would change, KPI by KPI; admins only."""
    policy.require(viewer, policy.Action.DEFINE)
    return _plan(desired, await _current())


async def apply_definitions(
    *, viewer: Viewer, desired: Sequence[Mapping[str, Any]], note: str, author: str
) -> list[PlannedKpi]:
    """Apply `desired` in one transaction: each created or changed KPI gets one revision by
    `author` with `note`, recomputed as updateKpiDefinition would; admins only."""
    policy.require(viewer, policy.Action.DEFINE)
    note = validate.text(note, "note", max_length=4000)
    author = validate.text(author, "author", max_length=200)
    async with db.transaction():
        current = await _current()
        plan = _plan(desired, current)
        now = datetime.now(UTC)
        by_slug = {values["slug"]: values for values in desired}
        for planned in plan:
            values = by_slug.get(planned.slug)
            if values is None or planned.action is PlanAction.UNCHANGED:
                continue
            if planned.action is PlanAction.CREATE:
                await _insert(values, now, author, note)
            else:
                await _change(current[planned.slug], values, planned.changes, author, note)
    return plan


async def _current() -> dict[str, Definition]:
    """Every definition, retired ones too, read in the caller's transaction if there is one."""
    rows = await KpiDefinition.select(*(getattr(KpiDefinition, c) for c in DEFINITION_COLUMNS))
    return {row["slug"]: definition_from_row(row) for row in rows}


def _plan(
    desired: Sequence[Mapping[str, Any]], current: Mapping[str, Definition]
) -> list[PlannedKpi]:
    plan = []
    for values in desired:
        slug = values["slug"]
        found = current.get(slug)
        if found is None:
            plan.append(PlannedKpi(slug, PlanAction.CREATE, _field_changes(None, values)))
            continue
        changes = _field_changes(found, values)
        action = PlanAction.CHANGE if changes else PlanAction.UNCHANGED
        if values["status"] is not found.status:
            retiring = values["status"] is KpiStatus.RETIRED
            action = PlanAction.RETIRE if retiring else PlanAction.REACTIVATE
        plan.append(PlannedKpi(slug, action, changes))
    named = {values["slug"] for values in desired}
    plan += [PlannedKpi(slug, PlanAction.ABSENT) for slug in current if slug not in named]
    return sorted(plan, key=lambda p: p.slug)


def _field_changes(found: Definition | None, values: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    changes = []
    for name in FILE_FIELDS:
        before = encode(getattr(found, name)) if found is not None else None
        after = encode(values[name])
        if found is None or before != after:
            changes.append(FieldChange(PUBLIC_NAMES[name], before, after))
    return tuple(changes)


async def _insert(values: Mapping[str, Any], now: datetime, who: str, note: str | None) -> None:
    """Create a definition at version 1 with its first revision, in the caller's transaction."""
    fields = {name: values[name] for name in (*EDITABLE, "slug")}
    status = values.get("status", KpiStatus.ACTIVE)
    await KpiDefinition.insert(
        KpiDefinition(
            **_stored(fields), status=status.value, version=1, created_at=now, updated_at=now
        )
    )
    changes = [FieldChange(PUBLIC_NAMES[f], None, encode(v)) for f, v in fields.items()]
    if status is not KpiStatus.ACTIVE:
        changes.append(FieldChange("status", None, encode(status)))
    await _record_revision(fields["slug"], 1, now, who, note, changes)
    if fields["expression"] is not None and status is KpiStatus.ACTIVE:
        # Computed in the background (registry/recompute.py): this commits at once.
        await recompute.queue(fields["slug"], 1)


async def _change(
    current: Definition,
    values: Mapping[str, Any],
    changes: Sequence[FieldChange],
    who: str,
    note: str | None,
) -> None:
    """Give a definition the values whose `changes` were planned, with one revision, and keep
    its observations as the change asks: recomputed when its expression changes or it comes
    back, no longer computed when retired."""
    stored = _stored({f: values[f] for f in EDITABLE})
    status: KpiStatus = values["status"]
    await _bump(current, {**stored, "status": status.value}, list(changes), who, note)
    if status is KpiStatus.RETIRED:
        await recompute.cancel(current.slug)
        return
    recompute_needed = status is not current.status or any(c.field == "expression" for c in changes)
    if not recompute_needed:
        return
    if values["expression"] is None:
        await compute.forget_kpi(current.slug)
        await recompute.cancel(current.slug)
    else:
        await recompute.queue(current.slug, current.version + 1)


async def mark_reviewed(*, viewer: Viewer, slug: str, note: str | None) -> Definition:
    """Record that the definition was re-validated now; the next review is due a cadence later."""
    policy.require(viewer, policy.Action.DEFINE)
    note = validate.optional_text(note, "note", max_length=4000)
    async with db.transaction():
        current = await _require(viewer, slug)
        now = datetime.now(UTC)
        change = FieldChange("lastReviewedAt", encode(current.last_reviewed_at), encode(now))
        await _bump(current, {"last_reviewed_at": now}, [change], viewer.subject, note, now=now)
    return await _require(viewer, slug)


async def _bump(
    current: Definition,
    stored: dict[str, Any],
    changes: list[FieldChange],
    who: str,
    note: str | None,
    now: datetime | None = None,
) -> None:
    now = now or datetime.now(UTC)
    version = current.version + 1
    updated = await (
        KpiDefinition.update(None, **stored, version=version, updated_at=now)
        .where(KpiDefinition.slug == current.slug, KpiDefinition.version == current.version)
        .returning(KpiDefinition.slug)
    )
    if not updated:
        raise Conflict(f"KPI {current.slug!r} changed while this update ran; retry it")
    await _record_revision(current.slug, version, now, who, note, changes)


async def _record_revision(
    slug: str, version: int, now: datetime, who: str, note: str | None, changes: list[FieldChange]
) -> None:
    payload = [{"field": c.field, "before": c.before, "after": c.after} for c in changes]
    await KpiRevision.insert(
        KpiRevision(
            kpi=slug, version=version, changed_at=now, changed_by=who, note=note, changes=payload
        )
    )


async def _require(viewer: Viewer, slug: str) -> Definition:
    found = await get_definition(viewer=viewer, slug=slug)
    if found is None:
        raise NotFound(f"unknown KPI slug {slug!r}")
    return found


def checked(fields: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """Return the given fields validated; on create every required field must be present."""
    values = dict(fields)
    for name in (
        "name",
        "description",
        "formula",
        "units",
        "owner",
        "review_cadence",
        "visibility",
    ):
        if name in values and values[name] is None:
            raise BadInput(f"{PUBLIC_NAMES[name]} must not be null")
    limits = {"name": 200, "description": 4000, "formula": 4000, "units": 64, "owner": 200}
    for name, limit in limits.items():
        if name in values:
            values[name] = validate.text(values[name], PUBLIC_NAMES[name], max_length=limit)
    if "review_cadence" in values:
        values["review_cadence"] = validate.duration(values["review_cadence"])
    if values.get("expression") is not None:
        text = validate.text(values["expression"], "expression", max_length=2000)
        values["expression"] = compile_formula(text).source
    if "targets" in values:
        values["targets"] = _targets(values["targets"] or [])
    elif creating:
        values["targets"] = ()
    if "data_sources" in values:
        values["data_sources"] = _data_sources(values["data_sources"] or [])
    elif creating:
        values["data_sources"] = ()
    if creating:
        values.setdefault("expression", None)
    return values


def _targets(raw: Sequence[Target]) -> tuple[Target, ...]:
    if len(raw) > MAX_TARGETS:
        raise BadInput(f"targets: at most {MAX_TARGETS}")
    seen: set[tuple[object, object]] = set()
    for target in raw:
        validate.measure(target.threshold, "targets.threshold")
        key = (target.severity, target.persona)
        if key in seen:
            raise BadInput("targets: at most one target per (severity, persona)")
        seen.add(key)
    return tuple(raw)


def _data_sources(raw: Sequence[str]) -> tuple[str, ...]:
    if len(raw) > MAX_DATA_SOURCES:
        raise BadInput(f"dataSources: at most {MAX_DATA_SOURCES}")
    return tuple(validate.text(s, "dataSources", max_length=200) for s in raw)


def _stored(values: Mapping[str, Any]) -> dict[str, Any]:
    """Return validated domain values as table column values."""
    stored: dict[str, Any] = {}
    for name, value in values.items():
        if name == "targets":
            stored[name] = [targets.to_json(t) for t in value]
        elif name == "data_sources":
            stored[name] = list(value)
        elif name == "visibility":
            stored[name] = Visibility(value).value
        else:
            stored[name] = value
    return stored


def encode(value: Any) -> str | None:
    """Return a field value JSON-encoded as revisions record it."""
    if value is None:
        return None
    if isinstance(value, Visibility | KpiStatus):
        value = value.value
    elif isinstance(value, datetime):
        value = value.isoformat()
    elif isinstance(value, tuple | list) and value and isinstance(value[0], Target):
        value = [targets.to_json(t) for t in value]
    elif isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


def _revision(row: Mapping[str, Any]) -> Revision:
    return Revision(
        version=row["version"],
        changed_at=row["changed_at"],
        changed_by=row["changed_by"],
        note=row["note"],
        changes=tuple(
            FieldChange(c["field"], c["before"], c["after"]) for c in row["changes"] or []
        ),
    )
