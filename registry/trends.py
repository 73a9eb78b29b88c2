"""KPI trends: one point per day, week or month, read from the rollups (registry/rollups.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from registry import rollups, targets, validate
from registry.errors import BadInput
from registry.model import Definition, Severity, Target, Viewer
from registry.rollups import Grain

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
    as_of: datetime


GRAINS = {Bucket.DAY: Grain.DAY, Bucket.WEEK: Grain.WEEK, Bucket.MONTH: Grain.MONTH}


def bucket_start(moment: datetime, bucket: Bucket) -> datetime:
    """Return the start (UTC) of the bucket holding `moment`; weeks start on Monday."""
    return rollups.grain_start(moment, GRAINS[bucket])


def next_start(start: datetime, bucket: Bucket) -> datetime:
    """Return the start of the bucket after the one starting at `start`."""
    return rollups.grain_next(start, GRAINS[bucket])


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
    found = await rollups.buckets(
        viewer=viewer,
        slug=definition.slug,
        grain=GRAINS[bucket],
        starts=starts,
        start=start,
        end=end,
        severity=severity,
    )
    target = targets.applicable(definition.targets, severity=severity, personas=viewer.personas)
    points = []
    for first, stats in zip(starts, found, strict=True):
        mean = stats.total / stats.count if stats.count else None
        p50, p90 = stats.percentiles((0.5, 0.9))
        points.append(
            Point(
                start=first,
                count=stats.count,
                mean=mean,
                p50=p50,
                p90=p90,
                target=target,
                meets_target=targets.meets(target, mean),
                as_of=stats.as_of or definition.created_at,
            )
        )
    return points
