"""Computed observations: evaluate each KPI's formula per incident and store the results.

Backfill streams incidents in id order, one batch per transaction, so memory stays flat; live
recompute runs the same code for one incident inside the ingest transaction that changed it.
Rows are compared with what is stored first, so a recompute writes only what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from piccolo.engine.postgres import PostgresEngine
from piccolo.querystring import QueryString

from registry import db, policy, setbased, validate
from registry.errors import NotFound
from registry.formulas import Formula, IncidentData, compile_formula
from registry.formulas.lexer import tokenize
from registry.model import Incident, Viewer
from registry.rows import CHILD_RECORDS, COMPUTED, COMPUTED_CONFIDENCE, incident_from_row
from registry.tables import Incident as IncidentTable
from registry.tables import KpiDefinition

BATCH_SIZE = 2000
# The database computes set-based batches without Python holding rows; SQLite wants them large.
SET_BASED_BATCH = 20_000
COLLECTIONS = ("alerts", "timeline", "milestones", "surveys")


@dataclass(frozen=True, slots=True)
class ComputedKpi:
    slug: str
    version: int
    formula: Formula
    reads: frozenset[str]


@dataclass(slots=True)
class BackfillResult:
    kpi_slug: str
    incidents_scanned: int = 0
    observations_written: int = 0
    skipped: int = 0


@lru_cache(maxsize=256)
def compiled(source: str) -> tuple[Formula, frozenset[str]]:
    """Return a stored expression compiled, with the collections it reads; once per text.

    Every ingest write recomputes its incident, so this keeps parsing off that path.
    """
    return compile_formula(source), collections_read(source)


def collections_read(source: str) -> frozenset[str]:
    """Return which of an incident's collections a formula reads, so only those are loaded."""
    names = {t.text for t in tokenize(source) if t.kind == "name"}
    if "phase_entered_at" in names:
        names.add("timeline")
    return frozenset(names & set(COLLECTIONS))


async def computed_kpis(slugs: Sequence[str] | None = None) -> list[ComputedKpi]:
    """Return the definitions that have an expression, compiled."""
    query = KpiDefinition.select(
        KpiDefinition.slug, KpiDefinition.version, KpiDefinition.expression
    ).where(KpiDefinition.expression.is_not_null(), KpiDefinition.status == "active")
    if slugs is not None:
        query = query.where(KpiDefinition.slug.is_in(list(slugs) or [""]))
    rows = await query.order_by(KpiDefinition.slug)
    kpis = []
    for row in rows:
        formula, reads = compiled(row["expression"])
        kpis.append(ComputedKpi(row["slug"], row["version"], formula, reads))
    return kpis


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
    kpis = await computed_kpis([s for s in slugs if validate.is_slug(s)] if slugs else slugs)
    if slugs is not None:
        missing = sorted(set(slugs) - {k.slug for k in kpis})
        if missing:
            raise NotFound(
                f"unknown KPI slug, or one without an expression or retired: {missing[0]!r}"
            )
    return await run(kpis, since=since, batch_size=batch_size, progress=progress)


async def incident_count(*, since: datetime | None = None) -> int:
    """Return how many incidents a backfill since `since` will scan."""
    query = IncidentTable.count()
    if since is not None:
        query = query.where(IncidentTable.detected_at >= since)
    return await query


async def forget_kpi(slug: str) -> None:
    """Remove a KPI's computed rows once it has no formula: nothing produces them any more."""
    await _fetch("DELETE FROM kpi_observation WHERE kpi = {} AND source = {}", slug, COMPUTED)


async def run(
    kpis: Sequence[ComputedKpi],
    *,
    since: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> list[BackfillResult]:
    """Compute `kpis` for all incidents (detected since `since`), one batch per transaction.

    A formula that compiles to SQL is computed by the database (registry/setbased.py); the rest
    are evaluated here, incident by incident.
    """
    if not kpis:
        return []
    results = {k.slug: BackfillResult(k.slug) for k in kpis}
    rest: list[ComputedKpi] = []
    scanned = 0
    for kpi in kpis:
        counts = await setbased.backfill_kpi(
            kpi, since=since, batch_size=max(batch_size, SET_BASED_BATCH)
        )
        if counts is None:
            rest.append(kpi)
            continue
        result = results[kpi.slug]
        result.incidents_scanned, result.observations_written, result.skipped = counts
        scanned = counts[0]
    if rest:
        await _run_in_python(rest, results, since, batch_size, progress)
    elif progress is not None:
        progress(scanned)
    return [results[k.slug] for k in kpis]


async def run_one(
    kpi: ComputedKpi, *, after: int, batch_size: int = BATCH_SIZE, on_batch: setbased.BatchHook
) -> None:
    """Compute one KPI for the incidents after id `after`, each batch joined by `on_batch`."""
    counts = await setbased.backfill_kpi(
        kpi, since=None, batch_size=max(batch_size, SET_BASED_BATCH), after=after, on_batch=on_batch
    )
    if counts is None:
        results = {kpi.slug: BackfillResult(kpi.slug)}
        await _run_in_python([kpi], results, None, batch_size, None, after=after, on_batch=on_batch)


async def _run_in_python(
    kpis: Sequence[ComputedKpi],
    results: dict[str, BackfillResult],
    since: datetime | None,
    batch_size: int,
    progress: Callable[[int], None] | None,
    *,
    after: int = 0,
    on_batch: setbased.BatchHook | None = None,
) -> None:
    while True:
        async with db.transaction():
            batch = await _incident_batch(after, since, batch_size)
            if not batch:
                break
            before = [(r.observations_written, r.skipped) for r in results.values()]
            await _compute(kpis, batch, results)
            if on_batch is not None:
                written = sum(r.observations_written for r in results.values())
                skipped = sum(r.skipped for r in results.values())
                await on_batch(
                    batch[-1].pk,
                    len(batch),
                    written - sum(w for w, _ in before),
                    skipped - sum(k for _, k in before),
                )
        after = batch[-1].pk
        if progress is not None:
            progress(len(batch))


async def recompute_incidents(pks: Sequence[int]) -> None:
    """Recompute every computed KPI for these incidents (called inside the ingest transaction)."""
    kpis = await computed_kpis()
    if not kpis or not pks:
        return
    rows = await _fetch(
        f"SELECT id, key, title, severity, detected_at, resolved_at FROM incident "
        f"WHERE id IN ({_marks(pks)}) ORDER BY id",
        *pks,
    )
    results = {k.slug: BackfillResult(k.slug) for k in kpis}
    await _compute(kpis, [incident_from_row(r) for r in rows], results)


async def _incident_batch(after: int, since: datetime | None, size: int) -> list[Incident]:
    sql = "SELECT id, key, title, severity, detected_at, resolved_at FROM incident WHERE id > {}"
    args: list[Any] = [after]
    if since is not None:
        sql += " AND detected_at >= {}"
        args.append(since)
    sql += " ORDER BY id LIMIT {}"
    if not db.is_sqlite():
        # Ingest writes to these incidents wait until this batch's results are stored.
        sql += " FOR SHARE"
    rows = await _fetch(sql, *args, size)
    return [incident_from_row(r) for r in rows]


async def _compute(
    kpis: Sequence[ComputedKpi], batch: Sequence[Incident], results: dict[str, BackfillResult]
) -> None:
    data = await incident_data(batch, frozenset().union(*(k.reads for k in kpis)))
    stored = await _stored(kpis, batch)
    now = datetime.now(UTC)
    for kpi in kpis:
        result = results[kpi.slug]
        result.incidents_scanned += len(data)
        fresh: dict[tuple[int, datetime], float] = {}
        for item in data:
            computed = kpi.formula.evaluate(item)
            if computed is None:
                result.skipped += 1
            else:
                fresh[(item.incident.pk, computed.as_of)] = computed.value
        have = stored.get(kpi.slug, {})
        writes = [
            (pk, stamp, value)
            for (pk, stamp), value in fresh.items()
            if (pk, stamp) not in have
            or (have[(pk, stamp)][1] == COMPUTED and have[(pk, stamp)][2:] != (value, kpi.version))
        ]
        stale = [row[0] for key, row in have.items() if row[1] == COMPUTED and key not in fresh]
        result.observations_written += await _write(kpi, writes, now)
        await _delete(stale)


async def incident_data(
    batch: Sequence[Incident], reads: frozenset[str] = frozenset(COLLECTIONS)
) -> list[IncidentData]:
    """Return each incident with the collections named in `reads`: one query per collection."""
    if not batch:
        return []
    members = {i.pk for i in batch}
    span = (batch[0].pk, batch[-1].pk)
    loaded = {name: await _collection(name, span, members) for name in reads}
    alerts = loaded.get("alerts", {})
    timeline = loaded.get("timeline", {})
    milestones = loaded.get("milestones", {})
    surveys = loaded.get("surveys", {})
    return [
        IncidentData(
            incident=i,
            alerts=alerts.get(i.pk, ()),
            timeline=timeline.get(i.pk, ()),
            milestones=milestones.get(i.pk, ()),
            surveys=surveys.get(i.pk, ()),
        )
        for i in batch
    ]


# Per collection: the query over a range of incident ids, and the record each row becomes.
_COLLECTION_SQL = {
    "alerts": "SELECT id, incident, issue_time, source FROM alert",
    "timeline": "SELECT incident, kind, phase, occurred_at, note FROM timeline_event",
    "milestones": "SELECT incident, name, committed_eta, delivered_at FROM milestone",
    "surveys": "SELECT incident, score, submitted_at FROM survey_response",
}
_COLLECTION_ORDER = {
    "alerts": "issue_time, id",
    "timeline": "occurred_at, id",
    "milestones": "committed_eta, id",
    "surveys": "submitted_at, id",
}


async def _collection(name: str, span: tuple[int, int], members: set[int]) -> dict[int, list[Any]]:
    """Return a collection's records for the incidents in `members`, by incident, in order.

    Batches are ranges of incident ids, so a range scan of the incident index replaces a long
    IN list; rows of incidents outside the batch (a `since` filter) are dropped here.
    """
    rows = await _fetch(
        f"{_COLLECTION_SQL[name]} WHERE incident >= {{}} AND incident <= {{}} "
        f"ORDER BY incident, {_COLLECTION_ORDER[name]}",
        *span,
    )
    make = CHILD_RECORDS[name]
    found: dict[int, list[Any]] = {}
    for row in rows:
        pk = row["incident"]
        if pk in members:
            found.setdefault(pk, []).append(make(row))
    return found


async def _stored(
    kpis: Sequence[ComputedKpi], batch: Sequence[Incident]
) -> dict[str, dict[tuple[int, datetime], tuple[Any, ...]]]:
    """Return the stored observations of these KPIs for the batch: key -> (id, source, value, v)."""
    slugs = [k.slug for k in kpis]
    rows = await _fetch(
        "SELECT id, kpi, incident, timestamp, value, source, definition_version "
        f"FROM kpi_observation WHERE incident >= {{}} AND incident <= {{}} "
        f"AND kpi IN ({_marks(slugs)})",
        batch[0].pk,
        batch[-1].pk,
        *slugs,
    )
    members = {i.pk for i in batch}
    stored: dict[str, dict[tuple[int, datetime], tuple[Any, ...]]] = {}
    for r in rows:
        if r["incident"] in members:
            key = (r["incident"], r["timestamp"])
            stored.setdefault(r["kpi"], {})[key] = (
                r["id"],
                r["source"],
                r["value"],
                r["definition_version"],
            )
    return stored


_UPSERT_TAIL = (
    "ON CONFLICT (kpi, incident, timestamp) DO UPDATE SET value = excluded.value, "
    "confidence = excluded.confidence, definition_version = excluded.definition_version, "
    "recorded_at = excluded.recorded_at WHERE kpi_observation.source = 'computed'"
)


async def _write(kpi: ComputedKpi, rows: list[tuple[int, datetime, float]], now: datetime) -> int:
    """Upsert computed rows with one driver call; an ingested row at the same key is kept."""
    if not rows:
        return 0
    transaction = db.engine().current_transaction.get()
    assert transaction is not None, "computed rows are written inside a transaction"
    connection = transaction.connection
    if isinstance(db.engine(), PostgresEngine):
        status = await connection.execute(
            "INSERT INTO kpi_observation (kpi, incident, timestamp, value, source, confidence, "
            "definition_version, recorded_at) SELECT $1, u.incident, u.stamp, u.value, $2, $3, "
            "$4, $5 FROM unnest($6::integer[], $7::timestamptz[], $8::double precision[]) "
            f"AS u(incident, stamp, value) {_UPSERT_TAIL}",
            kpi.slug,
            COMPUTED,
            COMPUTED_CONFIDENCE,
            kpi.version,
            now,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
        )
        return int(status.rsplit(" ", 1)[-1])
    cursor = await connection.executemany(
        "INSERT INTO kpi_observation (kpi, incident, timestamp, value, source, confidence, "
        f"definition_version, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) {_UPSERT_TAIL}",
        [
            (kpi.slug, pk, stamp, value, COMPUTED, COMPUTED_CONFIDENCE, kpi.version, now)
            for pk, stamp, value in rows
        ],
    )
    return int(cursor.rowcount)


async def _delete(ids: list[int]) -> None:
    """Remove computed rows that the current data no longer produces."""
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        await _fetch(f"DELETE FROM kpi_observation WHERE id IN ({_marks(chunk)})", *chunk)


async def _fetch(sql: str, *args: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await db.engine().run_querystring(QueryString(sql, *args))
    return rows


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("{}" for _ in values)
