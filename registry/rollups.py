"""Rollups: per KPI, incident severity and day, week or month, the count and sum of observations.

The database keeps them: triggers on `kpi_observation` (every insert, update and delete, however
it is written) and on `incident` (a severity change moves its observations; deleting an incident
deletes its observations first, so they are subtracted while its severity is still known) apply
the change to the day, week and month rows it falls in, in the same statement and so the same
transaction. A reader therefore never sees a rollup that disagrees with the raw rows, in any
worker. Each row also carries `stamp`, bumped by every change, and `changed_at`.

Percentiles cannot be kept that way in bounded space, so they come from a summary of each group's
values (see `summarize`) computed from the raw rows when a group is first read at a stamp, and
kept in this process until the group's stamp moves on.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from piccolo.querystring import QueryString

from registry import db, policy
from registry.model import Severity, Viewer

# A group's summary holds at most this many values; see `summarize` for the rank error.
POINTS = 128
# Groups whose summaries this process keeps (about 1 KiB each at most).
CACHED_GROUPS = 20_000


class Grain(enum.Enum):
    DAY = "D"
    WEEK = "W"
    MONTH = "M"


# --- the schema: table, indexes and triggers, per engine -------------------------------------

_NOW = {
    "postgres": "now()",
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f+00:00', 'now')",
}
_GRAINS = {
    "postgres": "(VALUES ('D'), ('W'), ('M')) AS g(grain)",
    "sqlite": "(SELECT 'D' AS grain UNION ALL SELECT 'W' UNION ALL SELECT 'M') AS g",
}


def _start(engine: str, timestamp: str) -> str:
    """SQL for the start (UTC) of the `g.grain` bucket holding `timestamp`; weeks start Monday."""
    if engine == "postgres":
        unit = "CASE g.grain WHEN 'D' THEN 'day' WHEN 'W' THEN 'week' ELSE 'month' END"
        return f"date_trunc({unit}, {timestamp} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    # Written as Piccolo writes a UTC date-time to SQLite, so comparisons with parameters hold.
    return (
        f"CASE g.grain WHEN 'D' THEN date({timestamp}) "
        f"WHEN 'W' THEN date({timestamp}, 'weekday 0', '-6 days') "
        f"ELSE date({timestamp}, 'start of month') END || ' 00:00:00+00:00'"
    )


def _two_sum_error(a: str, b: str) -> str:
    """SQL for what a + b loses to rounding (Knuth's TwoSum): a + b + this is exact."""
    s = f"({a} + {b})"
    bb = f"({s} - {a})"
    return f"(({a} - ({s} - {bb})) + ({b} - {bb}))"


def _apply(engine: str, source: str) -> str:
    """SQL adding `source`'s rows (kpi, severity, timestamp, n, v) to the rollups.

    `n` is +1 for a row added and -1 for a row taken away, `v` its value signed alike. A group's
    sum is kept as `total` plus `residue`, what the double `total` could not hold (a double-double
    sum), so taking a value away leaves no rounding behind: after 1e12 and 0.1 lose the 1e12, the
    mean is 0.1, not 0.0999755859375. On PostgreSQL groups are written in key order, so that
    concurrent writers take their row locks in the same order, each group's values added by an
    error-free aggregate; on SQLite (one writer at a time) each row is applied on its own.
    """
    reset = "kpi_rollup.n + excluded.n = 0"
    if engine == "postgres":
        merged = (
            "mim_two_sum(kpi_rollup.total, kpi_rollup.residue, excluded.total, excluded.residue)"
        )
        # Each row is added up once, into its day; weeks and months add up the days.
        day = "date_trunc('day', s.timestamp AT TIME ZONE 'UTC')"
        above = "date_trunc(CASE g.grain WHEN 'W' THEN 'week' ELSE 'month' END, d.day)"
        return (
            f"WITH d AS (SELECT s.kpi, s.severity, {day} AS day, sum(s.n) AS n, "
            f"mim_exact_sum(s.v) AS sums FROM ({source}) AS s GROUP BY 1, 2, 3), "
            "a AS (SELECT d.kpi, 'D' AS grain, d.severity, d.day AS start, d.n, d.sums FROM d "
            f"UNION ALL SELECT d.kpi, g.grain, d.severity, {above}, sum(d.n), "
            "mim_exact_merge(d.sums) FROM d CROSS JOIN (VALUES ('W'), ('M')) AS g(grain) "
            "GROUP BY 1, 2, 3, 4) "
            "INSERT INTO kpi_rollup (kpi, grain, severity, start, n, total, residue, changed_at) "
            "SELECT a.kpi, a.grain, a.severity, a.start AT TIME ZONE 'UTC', a.n, a.sums[1], "
            "a.sums[2], now() FROM a ORDER BY 1, 2, 3, 4 "
            "ON CONFLICT (kpi, grain, severity, start) DO UPDATE SET "
            "n = kpi_rollup.n + excluded.n, "
            f"total = CASE WHEN {reset} THEN 0 ELSE ({merged})[1] END, "
            f"residue = CASE WHEN {reset} THEN 0 ELSE ({merged})[2] END, "
            "stamp = kpi_rollup.stamp + 1, changed_at = excluded.changed_at"
        )
    lost = _two_sum_error("kpi_rollup.total", "excluded.total")
    return (
        "INSERT INTO kpi_rollup (kpi, grain, severity, start, n, total, residue, changed_at) "
        f"SELECT s.kpi, g.grain, s.severity, {_start(engine, 's.timestamp')}, s.n, s.v, 0, "
        f"{_NOW[engine]} FROM ({source}) AS s CROSS JOIN {_GRAINS[engine]} WHERE true "
        "ON CONFLICT (kpi, grain, severity, start) DO UPDATE SET "
        "n = kpi_rollup.n + excluded.n, "
        f"total = CASE WHEN {reset} THEN 0 ELSE kpi_rollup.total + excluded.total END, "
        f"residue = CASE WHEN {reset} THEN 0 ELSE kpi_rollup.residue + {lost} END, "
        "stamp = kpi_rollup.stamp + 1, changed_at = excluded.changed_at"
    )


# PostgreSQL's error-free additions (SQLite's triggers write them out).
FUNCTIONS = [
    "CREATE FUNCTION mim_exact_step(sums float8[], v float8) RETURNS float8[] "
    "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ "
    f"SELECT ARRAY[sums[1] + v, sums[2] + {_two_sum_error('sums[1]', 'v')}] $$",
    "CREATE AGGREGATE mim_exact_sum(float8) "
    "(SFUNC = mim_exact_step, STYPE = float8[], INITCOND = '{0,0}')",
    "CREATE FUNCTION mim_two_sum(a float8, a_residue float8, b float8, b_residue float8) "
    "RETURNS float8[] LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ "
    f"SELECT ARRAY[a + b, a_residue + b_residue + {_two_sum_error('a', 'b')}] $$",
    "CREATE FUNCTION mim_merge_step(sums float8[], more float8[]) RETURNS float8[] "
    "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ "
    "SELECT mim_two_sum(sums[1], sums[2], more[1], more[2]) $$",
    "CREATE AGGREGATE mim_exact_merge(float8[]) "
    "(SFUNC = mim_merge_step, STYPE = float8[], INITCOND = '{0,0}')",
]


def _signed(rows: str, sign: int) -> str:
    """SQL for observation rows `rows` (alias o) as (kpi, severity, timestamp, n, v)."""
    value = "o.value" if sign > 0 else "-o.value"
    return (
        f"SELECT o.kpi, i.severity, o.timestamp, {sign} AS n, {value} AS v "
        f"FROM {rows} JOIN incident AS i ON i.id = o.incident"
    )


TABLE = {
    "postgres": (
        "CREATE TABLE kpi_rollup (id bigserial PRIMARY KEY, kpi varchar(64) NOT NULL, "
        "grain varchar(1) NOT NULL, severity varchar(2) NOT NULL, start timestamptz NOT NULL, "
        "n bigint NOT NULL DEFAULT 0, total double precision NOT NULL DEFAULT 0, "
        "residue double precision NOT NULL DEFAULT 0, stamp bigint NOT NULL DEFAULT 1, "
        "changed_at timestamptz NOT NULL)"
    ),
    "sqlite": (
        "CREATE TABLE kpi_rollup (id INTEGER PRIMARY KEY, kpi VARCHAR(64) NOT NULL, "
        "grain VARCHAR(1) NOT NULL, severity VARCHAR(2) NOT NULL, start TIMESTAMPTZ NOT NULL, "
        "n INTEGER NOT NULL DEFAULT 0, total DOUBLE PRECISION NOT NULL DEFAULT 0, "
        "residue DOUBLE PRECISION NOT NULL DEFAULT 0, stamp INTEGER NOT NULL DEFAULT 1, "
        "changed_at TIMESTAMPTZ NOT NULL)"
    ),
}
INDEX = "CREATE UNIQUE INDEX kpi_rollup_key ON kpi_rollup (kpi, grain, severity, start)"


def triggers(engine: str) -> list[str]:
    """Return the statements creating the rollups' triggers on `engine` ("postgres"/"sqlite")."""
    moved = (
        "SELECT o.kpi, s.severity, o.timestamp, s.n, s.n * o.value AS v "
        "FROM kpi_observation AS o CROSS JOIN ({pair}) AS s WHERE o.incident = NEW.id"
    )
    if engine == "postgres":
        added = _signed("new_rows AS o", 1)
        removed = _signed("old_rows AS o", -1)
        pair = "SELECT * FROM (VALUES (OLD.severity, -1), (NEW.severity, 1)) AS p(severity, n)"
        bodies = {
            "kpi_rollup_added": _apply(engine, added),
            "kpi_rollup_removed": _apply(engine, removed),
            "kpi_rollup_updated": _apply(engine, f"{removed} UNION ALL {added}"),
            "kpi_rollup_severity": _apply(engine, moved.format(pair=pair)),
        }
        statements = [
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN {body}; RETURN NULL; END $$"
            for name, body in bodies.items()
        ]
        return [
            *FUNCTIONS,
            *statements,
            "CREATE FUNCTION incident_forget_observations() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN DELETE FROM kpi_observation WHERE incident = OLD.id; RETURN OLD; END $$",
            "CREATE TRIGGER kpi_rollup_insert AFTER INSERT ON kpi_observation "
            "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
            "EXECUTE FUNCTION kpi_rollup_added()",
            "CREATE TRIGGER kpi_rollup_delete AFTER DELETE ON kpi_observation "
            "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
            "EXECUTE FUNCTION kpi_rollup_removed()",
            "CREATE TRIGGER kpi_rollup_update AFTER UPDATE ON kpi_observation "
            "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
            "EXECUTE FUNCTION kpi_rollup_updated()",
            "CREATE TRIGGER kpi_rollup_severity AFTER UPDATE OF severity ON incident "
            "FOR EACH ROW WHEN (OLD.severity IS DISTINCT FROM NEW.severity) "
            "EXECUTE FUNCTION kpi_rollup_severity()",
            "CREATE TRIGGER incident_forget_observations BEFORE DELETE ON incident "
            "FOR EACH ROW EXECUTE FUNCTION incident_forget_observations()",
        ]
    added = _signed(
        "(SELECT NEW.kpi AS kpi, NEW.incident AS incident, "
        "NEW.timestamp AS timestamp, NEW.value AS value) AS o",
        1,
    )
    removed = _signed(
        "(SELECT OLD.kpi AS kpi, OLD.incident AS incident, "
        "OLD.timestamp AS timestamp, OLD.value AS value) AS o",
        -1,
    )
    pair = "SELECT OLD.severity AS severity, -1 AS n UNION ALL SELECT NEW.severity, 1"
    return [
        f"CREATE TRIGGER kpi_rollup_insert AFTER INSERT ON kpi_observation "
        f"BEGIN {_apply(engine, added)}; END",
        f"CREATE TRIGGER kpi_rollup_delete AFTER DELETE ON kpi_observation "
        f"BEGIN {_apply(engine, removed)}; END",
        "CREATE TRIGGER kpi_rollup_update AFTER UPDATE OF kpi, incident, timestamp, value "
        f"ON kpi_observation BEGIN {_apply(engine, removed)}; {_apply(engine, added)}; END",
        "CREATE TRIGGER kpi_rollup_severity AFTER UPDATE OF severity ON incident "
        "WHEN OLD.severity IS NOT NEW.severity "
        f"BEGIN {_apply(engine, moved.format(pair=pair))}; END",
        "CREATE TRIGGER incident_forget_observations BEFORE DELETE ON incident "
        "BEGIN DELETE FROM kpi_observation WHERE incident = OLD.id; END",
    ]


DROP = {
    "postgres": [
        "DROP TABLE IF EXISTS kpi_rollup",
        "DROP TRIGGER IF EXISTS kpi_rollup_insert ON kpi_observation",
        "DROP TRIGGER IF EXISTS kpi_rollup_delete ON kpi_observation",
        "DROP TRIGGER IF EXISTS kpi_rollup_update ON kpi_observation",
        "DROP TRIGGER IF EXISTS kpi_rollup_severity ON incident",
        "DROP TRIGGER IF EXISTS incident_forget_observations ON incident",
        "DROP FUNCTION IF EXISTS kpi_rollup_added, kpi_rollup_removed, kpi_rollup_updated, "
        "kpi_rollup_severity, incident_forget_observations",
        "DROP AGGREGATE IF EXISTS mim_exact_sum(float8)",
        "DROP AGGREGATE IF EXISTS mim_exact_merge(float8[])",
        "DROP FUNCTION IF EXISTS mim_exact_step, mim_merge_step, mim_two_sum",
    ],
    "sqlite": [
        "DROP TABLE IF EXISTS kpi_rollup",
        "DROP TRIGGER IF EXISTS kpi_rollup_insert",
        "DROP TRIGGER IF EXISTS kpi_rollup_delete",
        "DROP TRIGGER IF EXISTS kpi_rollup_update",
        "DROP TRIGGER IF EXISTS kpi_rollup_severity",
        "DROP TRIGGER IF EXISTS incident_forget_observations",
    ],
}


def engine_name() -> str:
    return "sqlite" if db.is_sqlite() else "postgres"


async def rebuild(slugs: Sequence[str] | None = None) -> None:
    """Recompute the rollups of these KPIs (every KPI when None) from the raw rows.

    Every group's stamp moves on, so no summary kept in any process is used again.
    """
    if slugs is not None and not slugs:
        return
    async with db.transaction():
        for query in rebuilding(slugs):
            await db.engine().run_querystring(query)


def rebuilding(slugs: Sequence[str] | None = None) -> list[QueryString]:
    """Return the statements of `rebuild`, to run in one transaction."""
    engine = engine_name()
    clear_args: list[Any] = []
    clear = (
        "UPDATE kpi_rollup SET n = 0, total = 0, residue = 0, stamp = stamp + 1, "
        f"changed_at = {_NOW[engine]}"
    )
    add_args: list[Any] = []
    source = _signed("kpi_observation AS o", 1)
    if slugs is not None:
        clear += f" WHERE kpi {db.Marks(clear_args).one_of(list(slugs))}"
        source += f" WHERE o.kpi {db.Marks(add_args).one_of(list(slugs))}"
    return [QueryString(clear, *clear_args), QueryString(_apply(engine, source), *add_args)]


# --- reading ---------------------------------------------------------------------------------


def grain_start(moment: datetime, grain: Grain) -> datetime:
    """Return the start (UTC) of the `grain` bucket holding `moment`; weeks start on Monday."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if grain is Grain.WEEK:
        return day - timedelta(days=day.weekday())
    if grain is Grain.MONTH:
        return day.replace(day=1)
    return day


def grain_next(start: datetime, grain: Grain) -> datetime:
    """Return the start of the bucket after the one starting at `start`."""
    if grain is Grain.DAY:
        return start + timedelta(days=1)
    if grain is Grain.WEEK:
        return start + timedelta(days=7)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month)


def _ceil(moment: datetime, grain: Grain) -> datetime:
    start = grain_start(moment, grain)
    return start if start == moment else grain_next(start, grain)


@dataclass(frozen=True, slots=True)
class Span:
    """How [start, end) splits into whole rollup groups and raw edges.

    `groups`: (grain, first start, end) ranges of whole groups; `raw`: [from, to) ranges read from
    the raw rows; `days`: the day groups the raw ranges fall in (their changes count for asOf).
    """

    groups: tuple[tuple[Grain, datetime | None, datetime | None], ...]
    raw: tuple[tuple[datetime | None, datetime | None], ...]
    days: tuple[tuple[datetime, datetime], ...]


def split(start: datetime | None, end: datetime | None, grain: Grain = Grain.MONTH) -> Span:
    """Split [start, end) into whole `grain` groups, whole days, and raw edges under a day."""
    day_lo = None if start is None else _ceil(start, Grain.DAY)
    day_hi = None if end is None else grain_start(end, Grain.DAY)
    raw: list[tuple[datetime | None, datetime | None]] = []
    days: list[tuple[datetime, datetime]] = []
    if day_lo is not None and day_hi is not None and day_lo >= day_hi:
        # Within a day (or across one boundary): raw rows only.
        assert start is not None and end is not None
        first = grain_start(start, Grain.DAY)
        return Span(groups=(), raw=((start, end),), days=((first, grain_next(first, Grain.DAY)),))
    if start is not None and day_lo != start:
        assert day_lo is not None
        raw.append((start, day_lo))
        days.append((grain_start(start, Grain.DAY), day_lo))
    if end is not None and day_hi != end:
        assert day_hi is not None
        raw.append((day_hi, end))
        days.append((day_hi, grain_next(day_hi, Grain.DAY)))
    if grain is Grain.DAY:
        return Span(groups=((Grain.DAY, day_lo, day_hi),), raw=tuple(raw), days=tuple(days))
    low = None if day_lo is None else _ceil(day_lo, grain)
    high = None if day_hi is None else grain_start(day_hi, grain)
    if low is not None and high is not None and low >= high:
        return Span(groups=((Grain.DAY, day_lo, day_hi),), raw=tuple(raw), days=tuple(days))
    groups: list[tuple[Grain, datetime | None, datetime | None]] = [(grain, low, high)]
    if day_lo is not None and low != day_lo:
        groups.append((Grain.DAY, day_lo, low))
    if day_hi is not None and high != day_hi:
        groups.append((Grain.DAY, high, day_hi))
    return Span(groups=tuple(groups), raw=tuple(raw), days=tuple(days))


def _range(column: str, low: datetime | None, high: datetime | None, s: db.Statement) -> str:
    parts = []
    if low is not None:
        parts.append(f"{column} >= {s.arg(low)}")
    if high is not None:
        parts.append(f"{column} < {s.arg(high)}")
    return " AND ".join(parts) or "true"


def _severity(severity: Severity | None, s: db.Statement) -> str:
    return "" if severity is None else f" AND r.severity = {s.arg(severity.value)}"


@dataclass(frozen=True, slots=True)
class Total:
    count: int
    total: float
    as_of: datetime | None


async def totals(
    *,
    viewer: Viewer,
    slugs: Sequence[str],
    start: datetime | None,
    end: datetime | None,
    severity: Severity | None,
) -> dict[str, Total]:
    """Return each visible KPI's count and sum of observations in [start, end), by slug.

    One statement (one snapshot): whole months and days from the rollups, edges under a day from
    the raw rows.
    """
    span = split(start, end)
    s = db.statement()  # placeholders are taken in the text's order (SQLite's are positional)
    kpis = sorted(set(slugs))

    def rollup_rows(columns: str) -> str:
        return (
            f"SELECT r.kpi, {columns} FROM kpi_rollup AS r JOIN kpi_definition AS d "
            f"ON d.slug = r.kpi WHERE r.kpi {s.one_of(kpis)} "
            f"AND {policy.visible(viewer, 'd.visibility', s)}{_severity(severity, s)}"
        )

    wholes = (
        rollup_rows("r.n AS n, r.total AS total, r.residue AS residue, r.changed_at AS changed_at")
        + " AND ("
    )
    wholes += " OR ".join(
        f"(r.grain = {s.arg(grain.value)} AND {_range('r.start', low, high, s)})"
        for grain, low, high in span.groups
    )
    parts = [wholes + ("false)" if not span.groups else ")")]
    if span.days:
        edges = rollup_rows("0, 0, 0, r.changed_at") + " AND r.grain = 'D' AND ("
        edges += " OR ".join(f"({_range('r.start', lo, hi, s)})" for lo, hi in span.days)
        parts.append(edges + ")")
    if span.raw:
        join = "JOIN kpi_definition AS d ON d.slug = o.kpi"
        if severity is not None:
            join += " JOIN incident AS i ON i.id = o.incident"
        raw = (
            f"SELECT o.kpi, count(*), {_sum('o.value')}, 0, NULL FROM kpi_observation AS o {join} "
            f"WHERE o.kpi {s.one_of(kpis)} AND {policy.visible(viewer, 'd.visibility', s)} AND ("
        )
        raw += " OR ".join(f"({_range('o.timestamp', lo, hi, s)})" for lo, hi in span.raw) + ")"
        if severity is not None:
            raw += f" AND i.severity = {s.arg(severity.value)}"
        parts.append(raw + " GROUP BY o.kpi")
    # Added up by the database: one row per KPI, however many months and days the window holds.
    sql = (
        f"SELECT kpi, sum(n) AS n, {_sum('total')} AS total, {_sum('residue')} AS residue, "
        "max(changed_at) AS changed_at "
        f"FROM ({' UNION ALL '.join(parts)}) AS u GROUP BY kpi"
    )
    return {
        row["kpi"]: Total(
            int(row["n"] or 0),
            float(row["total"] or 0.0) + float(row["residue"] or 0.0),
            as_utc(row["changed_at"]) if row["changed_at"] is not None else None,
        )
        for row in await db.fetch(sql, s.args)
    }


def _sum(column: str) -> str:
    """Return SQL adding up a float column in one order whatever order the rows come in, so
    that the same read gives the same bits every time (PostgreSQL's parallel and hashed plans
    hand rows over in any order; SQLite's plan reads them in one)."""
    return f"sum({column})" if db.is_sqlite() else f"sum({column} ORDER BY {column})"


def as_utc(value: Any) -> datetime:
    """Return a date-time read from either engine as an aware UTC datetime."""
    if getattr(value, "tzinfo", None) is UTC:
        return value  # type: ignore[no-any-return]  # asyncpg's, already
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# --- percentiles from group summaries --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Points:
    """A group's values, each standing for `weights[i]` observations (in order within one
    severity; a group of every severity holds one run per severity)."""

    values: tuple[float, ...]
    weights: tuple[int, ...]


def summarize(values: Sequence[float]) -> Points:
    """Return the summary of one group's values.

    Up to POINTS values are kept as they are (percentiles from them are exact). Beyond, the
    sorted values are cut into POINTS blocks of consecutive ranks (sizes differ by at most one)
    and each block is kept as its middle value weighing the block's size. A value read from the
    merged summaries of any groups is then off by at most half a block per group in rank, so by at
    most n / POINTS over n observations: 0.78% with POINTS = 128.
    """
    ordered = sorted(values)
    n = len(ordered)
    if n <= POINTS:
        return Points(tuple(ordered), (1,) * n)
    kept, weights = [], []
    for j in range(POINTS):
        low, high = j * n // POINTS, (j + 1) * n // POINTS
        kept.append(ordered[(low + high - 1) // 2])
        weights.append(high - low)
    return Points(tuple(kept), tuple(weights))


def percentiles(parts: Iterable[Points], qs: Sequence[float]) -> list[float | None]:
    """Return each q's percentile of the merged parts, interpolated as percentile_cont does."""
    merged: list[tuple[float, int]] = []
    for part in parts:
        merged.extend(zip(part.values, part.weights, strict=True))
    if not merged:
        return [None for _ in qs]
    merged.sort(key=lambda item: item[0])
    ends: list[int] = []
    reached = 0
    for _, weight in merged:
        reached += weight
        ends.append(reached)
    n = reached

    def at(rank: int) -> float:
        return merged[bisect.bisect_right(ends, rank)][0]

    found: list[float | None] = []
    for q in qs:
        position = q * (n - 1)
        low = math.floor(position)
        first = at(low)
        second = at(min(low + 1, n - 1))
        found.append(first + (second - first) * (position - low))
    return found


Key = tuple[str, str, str, datetime]  # kpi, grain, severity, start


class _Cache:
    """Values by key (a group, or a bucket's groups), each valid at one stamp; least recently used
    go first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, tuple[Hashable, Any]] = OrderedDict()

    def get(self, key: Hashable, stamp: Hashable) -> Any:
        entry = self._entries.get(key)
        if entry is None or entry[0] != stamp:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: Hashable, stamp: Hashable, points: Any) -> None:
        self._entries[key] = (stamp, points)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()


cache = _Cache(CACHED_GROUPS)
# Buckets' merged percentiles by the groups (and versions) they merged; see Stats.percentiles.
merged = _Cache(CACHED_GROUPS)


# --- series: one bucket's count, sum, percentiles and last change -----------------------------


@dataclass(slots=True)
class Stats:
    """What one series bucket aggregates."""

    count: int = 0
    total: float = 0.0
    parts: list[Points] | None = None
    as_of: datetime | None = None
    # The cached groups its parts came from, at their versions (None once a raw row joined).
    sources: list[tuple[Key, tuple[Any, ...]]] | None = field(default_factory=list)

    def add(self, count: int, total: float, changed_at: Any) -> None:
        self.count += count
        self.total += total
        self.saw(changed_at)

    def saw(self, changed_at: Any) -> None:
        if changed_at is not None:
            moment = as_utc(changed_at)
            self.as_of = moment if self.as_of is None else max(self.as_of, moment)

    def percentiles(self, qs: Sequence[float]) -> list[float | None]:
        if not self.sources:
            return percentiles(self.parts or (), qs)
        # Merging a bucket's group summaries is the costly part of a warm read: kept per
        # bucket, valid while every group it merged is at the same version.
        key = frozenset(self.sources)
        found = merged.get(key, tuple(qs))
        if found is None:
            found = percentiles(self.parts or (), qs)
            merged.put(key, tuple(qs), found)
        return found

    def took(self, key: Key, version: tuple[Any, ...], points: Points) -> None:
        """Add a group's summary to the bucket's parts."""
        assert self.parts is not None
        self.parts.append(points)
        if self.sources is not None:
            self.sources.append((key, version))


# A rollup row as `buckets` reads it; raw rows come in the same shape (see _raw_values).
def _group_columns(severity: str) -> str:
    """The columns of a group of rollup rows (those of one KPI, grain and start and `severity`,
    an SQL expression), as `buckets` reads it; raw rows come in the same shape (_raw_values).

    A group of several rows (every severity) is identified by how many rows it holds and the sum
    of their stamps: stamps only grow and rows are never deleted, so any change to any of them
    moves the sum.
    """
    # The sum's last bits may depend on the order the rows come in: a summarized group keeps
    # the sum it was summarized with (see `buckets`), so every read at a version agrees.
    return (
        f"r.kpi, r.grain, {severity} AS severity, r.start, CAST(sum(r.n) AS bigint) AS n, "
        "sum(r.total) + sum(r.residue) AS total, CAST(sum(r.stamp) AS bigint) AS stamp, "
        "max(r.changed_at) AS changed_at, count(*) AS id, CAST(NULL AS double precision) AS value"
    )


async def buckets(
    *,
    viewer: Viewer,
    slugs: Sequence[str],
    grain: Grain,
    starts: Sequence[datetime],
    start: datetime,
    end: datetime,
    severity: Severity | None,
) -> dict[str, list[Stats]]:
    """Return, per visible KPI, the stats of each bucket starting at `starts` ([start, end) cuts
    the first and last): one statement for every KPI.

    Whole buckets are read from their rollup rows, cut ones from day rows and raw edges. Group
    summaries for the percentiles come from this process's cache at the group's stamp, or else
    from the raw rows (one more statement, which also gives those groups' count and sum).
    """
    whole: list[datetime] = []
    days: list[tuple[datetime | None, datetime | None]] = []
    raw: list[tuple[datetime | None, datetime | None]] = []
    edge_days: list[tuple[datetime, datetime]] = []
    for first in starts:
        low, high = max(first, start), min(grain_next(first, grain), end)
        if (low, high) == (first, grain_next(first, grain)):
            whole.append(first)
            continue
        span = split(low, high, Grain.DAY)
        days.extend((lo, hi) for _, lo, hi in span.groups)
        raw.extend(span.raw)
        edge_days.extend(span.days)
    kpis = sorted(set(slugs))
    s = db.statement()  # placeholders are taken in the text's order (SQLite's are positional)

    def rollup_rows(columns: str) -> str:
        return (
            f"SELECT {columns} FROM kpi_rollup AS r "
            f"JOIN kpi_definition AS d ON d.slug = r.kpi WHERE r.kpi {s.one_of(kpis)} "
            f"AND {policy.visible(viewer, 'd.visibility', s)}{_severity(severity, s)} AND "
        )

    # One group per KPI, grain and start: the severity asked for, or every severity together
    # ("*"), so that a bucket is one group whose summary is kept whole.
    label = "r.severity" if severity is not None else "'*'"
    groups = rollup_rows(f"'g' AS part, {_group_columns(label)}") + "("
    wanted = []
    if whole:
        wanted.append(f"(r.grain = {s.arg(grain.value)} AND r.start {s.one_of(whole)})")
    wanted += [f"(r.grain = 'D' AND {_range('r.start', lo, hi, s)})" for lo, hi in days]
    parts = [
        groups
        + (" OR ".join(wanted) or "false")
        + ") GROUP BY r.kpi, r.grain, r.start"
        + (", r.severity" if severity is not None else "")
    ]
    if edge_days:
        edge_columns = (
            "'e' AS part, r.kpi, r.grain, r.severity, r.start, r.n, r.total, r.stamp, "
            "r.changed_at, r.id, CAST(NULL AS double precision) AS value"
        )
        edges = rollup_rows(edge_columns) + "r.grain = 'D' AND ("
        edges += " OR ".join(_range("r.start", lo, hi, s) for lo, hi in edge_days)
        parts.append(edges + ")")
    if raw:
        sql = _raw_values(
            viewer,
            s,
            f"o.kpi {s.one_of(kpis)}",
            lambda: " OR ".join(f"({_range('o.timestamp', lo, hi, s)})" for lo, hi in raw),
        )
        if severity is not None:
            sql += f" AND i.severity = {s.arg(severity.value)}"
        parts.append(sql)
    rows = await db.fetch(" UNION ALL ".join(parts), s.args)

    stats = {slug: [Stats(parts=[]) for _ in starts] for slug in kpis}
    missing: dict[Key, Stats] = {}  # a group summary to compute: its bucket
    for row in rows:
        bucket = stats[row["kpi"]][bisect.bisect_right(starts, as_utc(row["start"])) - 1]
        if row["part"] == "e":
            bucket.saw(row["changed_at"])
        elif row["part"] == "o":
            bucket.add(1, row["value"], None)
            assert bucket.parts is not None
            bucket.parts.append(Points((row["value"],), (1,)))
            bucket.sources = None
        elif row["n"]:
            key = (row["kpi"], row["grain"], row["severity"], as_utc(row["start"]))
            version = _version(row)
            found = cache.get(key, version)
            if found is None:
                missing[key] = bucket
                continue
            # The sum kept with the summary: the same bits on every read at this version.
            points, total = found
            bucket.add(row["n"], total, row["changed_at"])
            bucket.took(key, version, points)
        else:
            bucket.saw(row["changed_at"])
    if missing:
        await _summarize_groups(viewer, missing)
    return stats


def _version(row: Any) -> tuple[Any, ...]:
    """What identifies a group's state: its rows' count and stamps (see _group_columns)."""
    return (row["id"], row["stamp"], row["n"], row["changed_at"])


def _raw_values(viewer: Viewer, s: db.Statement, kpis: str, ranges: Callable[[], str]) -> str:
    """SQL for raw observations (`kpis`: a condition on o.kpi) in `ranges()`, shaped as the
    rows of `buckets`. `ranges` is called where its text goes, so its placeholders come in
    order."""
    return (
        "SELECT 'o' AS part, o.kpi, NULL, i.severity, o.timestamp, NULL, NULL, NULL, NULL, NULL, "
        "o.value FROM kpi_observation AS o JOIN kpi_definition AS d ON d.slug = o.kpi "
        f"JOIN incident AS i ON i.id = o.incident WHERE {kpis} "
        f"AND {policy.visible(viewer, 'd.visibility', s)} AND ({ranges()})"
    )


def _keys(missing: dict[Key, Stats], s: db.Statement) -> str:
    """SQL for a table of groups: kpi, grain, severity, start, and the bucket's bounds lo, hi."""
    rows = [(*key, grain_next(key[3], Grain(key[1]))) for key in missing]
    if s.postgres:  # five arrays, however many groups
        columns = [list(column) for column in zip(*rows, strict=True)]
        kinds = ("text", "text", "text", "timestamptz", "timestamptz")
        arrays = ", ".join(f"{s.arg(c)}::{kind}[]" for c, kind in zip(columns, kinds, strict=True))
        return (
            f"SELECT u.kpi, u.grain, u.severity, u.start, u.start AS lo, u.hi "
            f"FROM unnest({arrays}) AS u(kpi, grain, severity, start, hi)"
        )
    values = ", ".join(
        f"({s.arg(kpi)}, {s.arg(grain)}, {s.arg(sev)}, {s.arg(start)}, {s.arg(hi)})"
        for kpi, grain, sev, start, hi in rows
    )
    return (
        "SELECT column1 AS kpi, column2 AS grain, column3 AS severity, column4 AS start, "
        f"column4 AS lo, column5 AS hi FROM (VALUES {values})"
    )


async def _summarize_groups(viewer: Viewer, missing: dict[Key, Stats]) -> None:
    """Read the missing groups' raw values and stamps in one statement; summarize and keep them.

    The groups' keys are a table joined to the rollups and to the observations (a condition
    per group would be tested against every row: minutes for a few thousand groups).
    """
    s = db.statement()  # placeholders are taken in the text's order (SQLite's are positional)
    sql = (
        f"WITH k AS ({_keys(missing, s)}) "
        f"SELECT 'g' AS part, {_group_columns('k.severity')}, NULL AS of_severity "
        "FROM k JOIN kpi_rollup AS r "
        "ON r.kpi = k.kpi AND r.grain = k.grain AND r.start = k.start "
        "AND (k.severity = '*' OR r.severity = k.severity) "
        "JOIN kpi_definition AS d ON d.slug = r.kpi "
        f"WHERE {policy.visible(viewer, 'd.visibility', s)} "
        "GROUP BY r.kpi, r.grain, k.severity, r.start "
        "UNION ALL SELECT 'o' AS part, k.kpi, k.grain, k.severity, k.start, NULL, NULL, NULL, "
        "NULL, NULL, o.value, i.severity FROM k JOIN kpi_observation AS o ON o.kpi = k.kpi "
        "AND o.timestamp >= k.lo AND o.timestamp < k.hi "
        "JOIN incident AS i ON i.id = o.incident "
        "AND (k.severity = '*' OR i.severity = k.severity) "
        "JOIN kpi_definition AS d ON d.slug = o.kpi "
        f"WHERE {policy.visible(viewer, 'd.visibility', s)}"
    )
    groups: dict[Key, Any] = {}
    # A group of every severity is summarized severity by severity (each exact up to POINTS
    # values), as if its rows had been read apart.
    values: dict[Key, dict[str, list[float]]] = {key: {} for key in missing}
    for row in await db.fetch(sql, s.args):
        key = (row["kpi"], row["grain"], row["severity"], as_utc(row["start"]))
        if row["part"] == "g":
            groups[key] = row
        elif key in values:
            values[key].setdefault(row["of_severity"], []).append(row["value"])
    for key, bucket in missing.items():
        group = groups.get(key)
        if group is None:
            continue  # emptied and gone since the first read: nothing to add
        parts = [summarize(v) for _, v in sorted(values[key].items())]
        points = Points(
            tuple(x for part in parts for x in part.values),
            tuple(w for part in parts for w in part.weights),
        )
        version = _version(group)
        cache.put(key, version, (points, group["total"]))
        # The same snapshot as the values: the rollup's count and sum are theirs.
        bucket.add(group["n"], group["total"], group["changed_at"])
        bucket.took(key, version, points)
