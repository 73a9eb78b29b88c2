"""Set-based backfill: one KPI computed by SQL for a range of incidents per statement.

The formula compiles to a SELECT (registry/formulas/sql.py) producing the fresh rows of a batch;
the batch's write rules then run in SQL, in the batch's own transaction, exactly as compute.run
applies them in Python:

- upsert the fresh rows, ON CONFLICT (kpi, incident, timestamp) updating only a computed row whose
  value or definition_version differs (so a second run writes nothing, and an ingested row at the
  same key is never touched);
- delete the KPI's computed rows of the batch's incidents whose key is not among the fresh rows.

Nothing but a handful of counts comes back to Python, so memory does not depend on the number of
incidents. A formula that does not compile to SQL gives None: the caller uses the Python path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

from piccolo.engine.postgres import PostgresEngine

from registry import db
from registry.formulas.sql import HI, KPI, LO, NOW, SINCE, VERSION, Compiled, Dialect, compile_sql
from registry.rows import COMPUTED, COMPUTED_CONFIDENCE

_FRESH = "temp.mim_setbased_fresh"
_COLUMNS = "kpi, incident, timestamp, value, source, confidence, definition_version, recorded_at"
_CHANGED = (
    "ON CONFLICT (kpi, incident, timestamp) DO UPDATE SET value = excluded.value, "
    "confidence = excluded.confidence, definition_version = excluded.definition_version, "
    "recorded_at = excluded.recorded_at WHERE kpi_observation.source = 'computed' "
    "AND (kpi_observation.value {distinct} excluded.value "
    "OR kpi_observation.definition_version {distinct} excluded.definition_version)"
)


class KpiLike(Protocol):
    slug: str
    version: int


def source_of(kpi: Any) -> str:
    """Return a KPI's expression: compute.ComputedKpi has .formula.source; rows .expression."""
    formula = getattr(kpi, "formula", None)
    if formula is not None:
        return str(formula.source)
    return str(kpi.expression)


def dialect() -> Dialect:
    return "postgres" if isinstance(db.engine(), PostgresEngine) else "sqlite"


@lru_cache(maxsize=256)
def compiled(source: str, dialect: Dialect) -> Compiled | None:
    """Return the formula's SQL for dialect (cached), or None when it is not supported."""
    return compile_sql(source, dialect)


def supports(kpi: Any) -> bool:
    """Return whether backfill_kpi can compute this KPI in SQL."""
    return compiled(source_of(kpi), dialect()) is not None


# Called inside each batch's transaction with (last incident id, scanned, written, skipped).
BatchHook = Callable[[int, int, int, int], Awaitable[None]]


async def backfill_kpi(
    kpi: Any,
    *,
    since: datetime | None,
    batch_size: int,
    after: int = 0,
    on_batch: BatchHook | None = None,
) -> tuple[int, int, int] | None:
    """Recompute one KPI for the incidents after id `after` (detected since `since`) in SQL.

    Batch by batch, each in its own transaction (which `on_batch` joins). Return (incidents
    scanned, observations written, skipped), or None when the formula does not compile to SQL
    (nothing was done then).
    """
    which = dialect()
    query = compiled(source_of(kpi), which)
    if query is None:
        return None
    scanned = written = skipped = 0
    while True:
        async with db.transaction():
            connection = _connection()
            bounds = await _next_batch(connection, which, after, since, batch_size)
            if bounds is None:
                break
            hi, count = bounds
            now = datetime.now(UTC)
            params = query.params(after + 1, hi, since, kpi.slug, kpi.version, now)
            if which == "postgres":
                changed, fresh = await _write_postgres(connection, query, params)
            else:
                changed, fresh = await _write_sqlite(connection, query, params)
            if on_batch is not None:
                await on_batch(hi, count, changed, count - fresh)
        scanned += count
        written += changed
        skipped += count - fresh
        after = hi
    return scanned, written, skipped


def _connection() -> Any:
    transaction = db.engine().current_transaction.get()
    assert transaction is not None, "set-based backfill runs inside a transaction"
    return transaction.connection


async def _next_batch(
    connection: Any, which: Dialect, after: int, since: datetime | None, size: int
) -> tuple[int, int] | None:
    """Return (last id, number of incidents) of the next batch after id `after`, or None."""
    if which == "postgres":
        row = await connection.fetchrow(
            # FOR SHARE: the batch waits for ingest transactions on its incidents to commit (so
            # the next statement computes from their data), and later ones wait for the batch.
            "SELECT max(id) AS hi, count(*) AS n FROM (SELECT id FROM incident WHERE id > $1 "
            "AND ($2::timestamptz IS NULL OR detected_at >= $2::timestamptz) "
            "ORDER BY id LIMIT $3 FOR SHARE) AS b",
            after,
            since,
            size,
        )
        values = (row["hi"], row["n"])
    else:
        cursor = await connection.execute(
            "SELECT max(id) AS hi, count(*) AS n FROM (SELECT id FROM incident WHERE id > ?1 "
            "AND (?2 IS NULL OR detected_at >= ?2) ORDER BY id LIMIT ?3)",
            (after, since, size),
        )
        row = await cursor.fetchone()
        await cursor.close()
        values = (row["hi"], row["n"])
    if values[0] is None:
        return None
    return int(values[0]), int(values[1])


def _batch_members(which: Dialect) -> str:
    """SQL limiting kpi_observation rows to the batch's incidents (the range, and `since`)."""
    if which == "postgres":
        return (
            f"o.incident BETWEEN ${LO}::integer AND ${HI}::integer AND (${SINCE}::timestamptz "
            f"IS NULL OR o.incident IN (SELECT id FROM incident WHERE id BETWEEN ${LO}::integer "
            f"AND ${HI}::integer AND detected_at >= ${SINCE}::timestamptz))"
        )
    return (
        "kpi_observation.incident BETWEEN ?1 AND ?2 AND (?3 IS NULL OR kpi_observation.incident "
        "IN (SELECT id FROM incident WHERE id BETWEEN ?1 AND ?2 AND detected_at >= ?3))"
    )


async def _write_postgres(connection: Any, query: Compiled, params: list[Any]) -> tuple[int, int]:
    """One statement: fresh rows, upsert of the changed ones, delete of the stale ones."""
    sql = (
        f"WITH fresh AS MATERIALIZED ({query.select}), "
        f"up AS (INSERT INTO kpi_observation ({_COLUMNS}) "
        f"SELECT ${KPI}::varchar, f.incident, f.as_of, f.value, '{COMPUTED}', "
        f"CAST({COMPUTED_CONFIDENCE!r} AS float8), ${VERSION}::integer, ${NOW}::timestamptz "
        f"FROM fresh AS f {_CHANGED.format(distinct='IS DISTINCT FROM')} RETURNING 1), "
        f"gone AS (DELETE FROM kpi_observation AS o WHERE o.kpi = ${KPI}::varchar "
        f"AND o.source = '{COMPUTED}' AND {_batch_members('postgres')} AND NOT EXISTS "
        "(SELECT 1 FROM fresh AS f WHERE f.incident = o.incident AND f.as_of = o.timestamp) "
        "RETURNING 1) "
        "SELECT (SELECT count(*) FROM up) AS written, (SELECT count(*) FROM fresh) AS fresh, "
        "(SELECT count(*) FROM gone) AS gone"
    )
    row = await connection.fetchrow(sql, *params)
    return int(row["written"]), int(row["fresh"])


async def _write_sqlite(connection: Any, query: Compiled, params: list[Any]) -> tuple[int, int]:
    """Fresh rows into a TEMP table, then the upsert and the delete against it."""
    await connection.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {_FRESH.split('.', 1)[1]} "
        "(incident INTEGER NOT NULL, as_of NOT NULL, value REAL NOT NULL, "
        "PRIMARY KEY (incident, as_of))"
    )
    await connection.execute(f"DELETE FROM {_FRESH}")
    cursor = await connection.execute(
        f"INSERT INTO {_FRESH} (incident, as_of, value) {query.select}",
        params[: query.param_count],
    )
    fresh = cursor.rowcount
    await cursor.close()
    lo, hi, since, kpi, version, now = params[:6]
    cursor = await connection.execute(
        f"INSERT INTO kpi_observation ({_COLUMNS}) SELECT ?1, f.incident, f.as_of, f.value, "
        f"'{COMPUTED}', {COMPUTED_CONFIDENCE!r}, ?2, ?3 FROM {_FRESH} AS f WHERE true "
        f"{_CHANGED.format(distinct='IS NOT')}",
        (kpi, version, now),
    )
    written = cursor.rowcount
    await cursor.close()
    await connection.execute(
        f"DELETE FROM kpi_observation WHERE kpi = ?4 AND source = '{COMPUTED}' "
        f"AND {_batch_members('sqlite')} AND NOT EXISTS (SELECT 1 FROM {_FRESH} AS f "
        "WHERE f.incident = kpi_observation.incident AND f.as_of = kpi_observation.timestamp)",
        (lo, hi, since, kpi),
    )
    return int(written), int(fresh)
