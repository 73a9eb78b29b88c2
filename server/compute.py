"""Computed observations: evaluate each KPI's formula per incident and store the results.

Backfill streams incidents in id order, one batch at a time, so memory stays flat; live recompute
runs the same code for one incident inside the ingest transaction that changed it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from piccolo.querystring import QueryString

from server import db, incidents, policy
from server.auth import Viewer
from server.errors import NotFound
from server.formulas import Formula, IncidentData, compile_formula
from server.model import Incident
from server.tables import Incident as IncidentTable
from server.tables import KpiDefinition

COMPUTED = "computed"
BATCH_SIZE = 1000
# Ingested values are direct measurements; a computed value is only as good as its inputs.
COMPUTED_CONFIDENCE = 1.0


@dataclass(frozen=True, slots=True)
class ComputedKpi:
    slug: str
    version: int
    formula: Formula


@dataclass(slots=True)
class BackfillResult:
    kpi_slug: str
    incidents_scanned: int = 0
    observations_written: int = 0
    skipped: int = 0


async def computed_kpis(slugs: Sequence[str] | None = None) -> list[ComputedKpi]:
    """Return the definitions that have an expression, compiled."""
    query = KpiDefinition.select(
        KpiDefinition.slug, KpiDefinition.version, KpiDefinition.expression
    ).where(KpiDefinition.expression.is_not_null())
    if slugs is not None:
        query = query.where(KpiDefinition.slug.is_in(list(slugs)))
    rows = await query.order_by(KpiDefinition.slug)
    return [
        ComputedKpi(row["slug"], row["version"], compile_formula(row["expression"])) for row in rows
    ]


async def backfill(
    *,
    viewer: Viewer,
    slugs: Sequence[str] | None,
    since: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> list[BackfillResult]:
    """Recompute the named KPIs (all computed KPIs when None) for every incident; admins only."""
    policy.require(viewer, policy.Action.DEFINE)
    kpis = await computed_kpis(slugs)
    if slugs is not None:
        missing = sorted(set(slugs) - {k.slug for k in kpis})
        if missing:
            raise NotFound(f"unknown or formula-less KPI slug {missing[0]!r}")
    return await run(kpis, since=since, batch_size=batch_size, progress=progress)


async def recompute_kpi(slug: str) -> BackfillResult | None:
    """Recompute one KPI for every incident (its caller holds the definition's transaction)."""
    results = await run(await computed_kpis([slug]))
    return results[0] if results else None


async def run(
    kpis: Sequence[ComputedKpi],
    *,
    since: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> list[BackfillResult]:
    """Compute `kpis` for all incidents (detected since `since`), one batch per transaction."""
    results = {k.slug: BackfillResult(k.slug) for k in kpis}
    if not kpis:
        return []
    after = 0
    while True:
        batch = await _incident_batch(after, since, batch_size)
        if not batch:
            break
        after = batch[-1].pk
        async with db.transaction():
            await _compute(kpis, batch, results)
        if progress is not None:
            progress(len(batch))
    return [results[k.slug] for k in kpis]


async def recompute_incidents(pks: Sequence[int]) -> None:
    """Recompute every computed KPI for these incidents (called inside the ingest transaction)."""
    kpis = await computed_kpis()
    if not kpis or not pks:
        return
    rows = await IncidentTable.select().where(IncidentTable.id.is_in(list(pks)))
    batch = [incidents.incident_from_row(r) for r in rows]
    await _compute(kpis, batch, {k.slug: BackfillResult(k.slug) for k in kpis})


async def _incident_batch(after: int, since: datetime | None, size: int) -> list[Incident]:
    query = IncidentTable.select().where(IncidentTable.id > after)
    if since is not None:
        query = query.where(IncidentTable.detected_at >= since)
    rows = await query.order_by(IncidentTable.id).limit(size)
    return [incidents.incident_from_row(r) for r in rows]


async def _compute(
    kpis: Sequence[ComputedKpi], batch: Sequence[Incident], results: dict[str, BackfillResult]
) -> None:
    data = await incident_data(batch)
    now = datetime.now(UTC)
    for kpi in kpis:
        result = results[kpi.slug]
        rows: list[tuple[int, datetime, float]] = []
        for item in data:
            computed = kpi.formula.evaluate(item)
            result.incidents_scanned += 1
            if computed is None:
                result.skipped += 1
            else:
                rows.append((item.incident.pk, computed.as_of, computed.value))
        result.observations_written += await _upsert(kpi, rows, now)
        await _delete_stale(kpi.slug, [i.pk for i in batch], rows)


async def incident_data(batch: Sequence[Incident]) -> list[IncidentData]:
    """Return each incident with its alerts, timeline, milestones and surveys: four queries."""
    pks = [i.pk for i in batch]
    alerts = await incidents.alerts_rows(pks)
    timeline = await incidents.timeline_rows(pks)
    milestones = await incidents.milestones_rows(pks)
    surveys = await incidents.surveys_rows(pks)
    return [
        IncidentData(
            incident=i,
            alerts=alerts.get(i.pk, []),
            timeline=timeline.get(i.pk, []),
            milestones=milestones.get(i.pk, []),
            surveys=surveys.get(i.pk, []),
        )
        for i in batch
    ]


async def _upsert(kpi: ComputedKpi, rows: list[tuple[int, datetime, float]], now: datetime) -> int:
    """Write computed rows, overwriting computed ones by key; never an ingested row."""
    written = 0
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        values = ", ".join("({}, {}, {}, {}, {}, {}, {}, {})" for _ in chunk)
        args: list[Any] = []
        for pk, stamp, value in chunk:
            args += [kpi.slug, pk, stamp, value, COMPUTED, COMPUTED_CONFIDENCE, kpi.version, now]
        sql = (
            "INSERT INTO kpi_observation (kpi, incident, timestamp, value, source, confidence, "
            f"definition_version, recorded_at) VALUES {values} "
            "ON CONFLICT (kpi, incident, timestamp) DO UPDATE SET value = excluded.value, "
            "confidence = excluded.confidence, definition_version = excluded.definition_version, "
            "recorded_at = excluded.recorded_at WHERE kpi_observation.source = 'computed' "
            "RETURNING id"
        )
        written += len(await db.engine().run_querystring(QueryString(sql, *args)))
    return written


async def _delete_stale(slug: str, pks: list[int], rows: list[tuple[int, datetime, float]]) -> None:
    """Remove computed rows of these incidents that the current data no longer produces."""
    keep = {(pk, stamp) for pk, stamp, _ in rows}
    existing = await db.engine().run_querystring(
        QueryString(
            "SELECT id, incident, timestamp FROM kpi_observation WHERE kpi = {} AND source = {} "
            f"AND incident IN ({', '.join('{}' for _ in pks)})",
            slug,
            COMPUTED,
            *pks,
        )
    )
    stale = [r["id"] for r in existing if (r["incident"], r["timestamp"]) not in keep]
    for start in range(0, len(stale), 500):
        chunk = stale[start : start + 500]
        await db.engine().run_querystring(
            QueryString(
                f"DELETE FROM kpi_observation WHERE id IN ({', '.join('{}' for _ in chunk)})",
                *chunk,
            )
        )
