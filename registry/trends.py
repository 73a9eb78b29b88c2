"""KPI trends: one point per day, week or month, aggregated by the database in one GROUP BY."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from piccolo.querystring import QueryString

from registry import db, policy, targets, validate
from registry.errors import BadInput
from registry.model import Definition, Severity, Target, Viewer

MAX_POINTS = 1000


class Bucket(enum.Enum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class Point:
    start: datetime
    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    target: Target | None
    meets_target: bool | None


# The bucket's first instant, as a date-time string in UTC, per engine.
_SQLITE_BUCKETS = {
    Bucket.DAY: "date(o.timestamp)",
    Bucket.WEEK: "date(o.timestamp, 'weekday 0', '-6 days')",
    Bucket.MONTH: "date(o.timestamp, 'start of month')",
}


def bucket_start(moment: datetime, bucket: Bucket) -> datetime:
    """Return the start (UTC) of the bucket holding `moment`; weeks start on Monday."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if bucket is Bucket.WEEK:
        return day - timedelta(days=day.weekday())
    if bucket is Bucket.MONTH:
        return day.replace(day=1)
    return day


def next_start(start: datetime, bucket: Bucket) -> datetime:
    """Return the start of the bucket after the one starting at `start`."""
    if bucket is Bucket.DAY:
        return start + timedelta(days=1)
    if bucket is Bucket.WEEK:
        return start + timedelta(days=7)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month)


async def series(
    *,
    viewer: Viewer,
    definition: Definition,
    bucket: Bucket,
    start: datetime,
    end: datetime,
    severity: Severity | None = None,
) -> list[Point]:
    """Return one point per bucket from `start` (inclusive) to `end` (exclusive)."""
    start, end = validate.utc(start, "from"), validate.utc(end, "to")
    if end <= start:
        raise BadInput("to must be after from")
    starts = [bucket_start(start, bucket)]
    while (following := next_start(starts[-1], bucket)) < end:
        starts.append(following)
        if len(starts) > MAX_POINTS:
            raise BadInput(f"at most {MAX_POINTS} points: narrow from/to or use a larger bucket")
    rows = await _aggregate(viewer, definition.slug, bucket, start, end, severity)
    target = targets.applicable(definition.targets, severity=severity, personas=viewer.personas)
    points = []
    for first in starts:
        row = rows.get(first)
        mean = row["mean"] if row else None
        points.append(
            Point(
                start=first,
                count=row["count"] if row else 0,
                mean=mean,
                p50=row["p50"] if row else None,
                p90=row["p90"] if row else None,
                target=target,
                meets_target=targets.meets(target, mean),
            )
        )
    return points


async def _aggregate(
    viewer: Viewer,
    slug: str,
    bucket: Bucket,
    start: datetime,
    end: datetime,
    severity: Severity | None,
) -> dict[datetime, dict[str, Any]]:
    args: list[Any] = [slug, start, end]
    where = "o.kpi = {} AND o.timestamp >= {} AND o.timestamp < {} AND "
    where += policy.visible(viewer, "d.visibility", db.Marks(args))
    join = "JOIN kpi_definition d ON d.slug = o.kpi"
    if severity is not None:
        join += " JOIN incident i ON i.id = o.incident"
        where += " AND i.severity = {}"
        args.append(severity.value)
    sql = _postgres_sql(bucket) if not db.is_sqlite() else _sqlite_sql(bucket)
    rows = await db.engine().run_querystring(QueryString(sql.format(join=join, where=where), *args))
    return {_as_start(row["bucket"]): row for row in rows}


def _postgres_sql(bucket: Bucket) -> str:
    return (
        f"SELECT date_trunc('{bucket.value}', o.timestamp AT TIME ZONE 'UTC') AS bucket, "
        "count(*) AS count, avg(o.value) AS mean, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY o.value) AS p50, "
        "percentile_cont(0.9) WITHIN GROUP (ORDER BY o.value) AS p90 "
        "FROM kpi_observation o {join} WHERE {where} GROUP BY 1 ORDER BY 1"
    )


def _sqlite_sql(bucket: Bucket) -> str:
    # SQLite has no percentile aggregate: rank values within each bucket, then interpolate
    # between the two ranks around (n - 1) * p exactly as PostgreSQL's percentile_cont does.
    return (
        "WITH ranked AS (SELECT b.bucket, b.value, "
        "ROW_NUMBER() OVER (PARTITION BY b.bucket ORDER BY b.value) AS rn, "
        "COUNT(*) OVER (PARTITION BY b.bucket) AS n "
        f"FROM (SELECT {_SQLITE_BUCKETS[bucket]} AS bucket, o.value AS value "
        "FROM kpi_observation o {join} WHERE {where}) AS b), "
        "grouped AS (SELECT bucket, MAX(n) AS n, AVG(value) AS mean, "
        + _sqlite_percentile_columns("p50", 0.5)
        + ", "
        + _sqlite_percentile_columns("p90", 0.9)
        + " FROM ranked GROUP BY bucket) "
        "SELECT bucket, n AS count, mean, "
        + _sqlite_interpolate("p50", 0.5)
        + ", "
        + _sqlite_interpolate("p90", 0.9)
        + " FROM grouped ORDER BY bucket"
    )


def _sqlite_percentile_columns(name: str, p: float) -> str:
    low = f"(1 + CAST({p} * (n - 1) AS INTEGER))"
    return (
        f"MAX(CASE WHEN rn = {low} THEN value END) AS {name}_low, "
        f"MAX(CASE WHEN rn = MIN(n, {low} + 1) THEN value END) AS {name}_high"
    )


def _sqlite_interpolate(name: str, p: float) -> str:
    fraction = f"({p} * (n - 1) - CAST({p} * (n - 1) AS INTEGER))"
    return f"{name}_low + {fraction} * ({name}_high - {name}_low) AS {name}"


def _as_start(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
