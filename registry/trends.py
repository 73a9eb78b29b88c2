"""KPI trends: one point per day, week or month, read from the rollups (registry/rollups.py)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from registry import rollups, targets, validate
from registry.errors import BadInput
from registry.model import KpiScope, Severity, Target, Viewer
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


@dataclass(frozen=True, slots=True)
class Window:
    """A series' buckets: checked bounds (UTC, `from` before `to`) and each bucket's start."""

    bucket: Bucket
    start: datetime
    end: datetime
    severity: Severity | None
    starts: tuple[datetime, ...]

    @classmethod
    def checked(
        cls, bucket: Bucket, start: datetime, end: datetime, severity: Severity | None = None
    ) -> Window:
        start, end = validate.utc(start, "from"), validate.utc(end, "to")
        if end <= start:
            raise BadInput("to must be after from")
        starts = [bucket_start(start, bucket)]
        while (following := next_start(starts[-1], bucket)) < end:
            starts.append(following)
            if len(starts) > MAX_POINTS:
                raise BadInput(
                    f"at most {MAX_POINTS} points: narrow from/to or use a larger bucket"
                )
        return cls(bucket, start, end, severity, tuple(starts))


async def series(*, viewer: Viewer, keys: Sequence[tuple[KpiScope, Window]]) -> list[list[Point]]:
    """Return one point per bucket of each (KPI, window): one read per distinct window."""
    by_window: dict[Window, list[str]] = {}
    for kpi, window in keys:
        by_window.setdefault(window, []).append(kpi.slug)
    found: dict[Window, dict[str, list[rollups.Stats]]] = {}
    for window, slugs in by_window.items():
        found[window] = await rollups.buckets(
            viewer=viewer,
            slugs=slugs,
            grain=GRAINS[window.bucket],
            starts=window.starts,
            start=window.start,
            end=window.end,
            severity=window.severity,
        )
    return [_points(viewer, kpi, window, found[window][kpi.slug]) for kpi, window in keys]


def _points(
    viewer: Viewer, kpi: KpiScope, window: Window, stats: Sequence[rollups.Stats]
) -> list[Point]:
    target = targets.applicable(kpi.targets, severity=window.severity, personas=viewer.personas)
    points = []
    for first, bucket in zip(window.starts, stats, strict=True):
        mean = bucket.total / bucket.count if bucket.count else None
        p50, p90 = bucket.percentiles((0.5, 0.9))
        points.append(
            Point(
                start=first,
                count=bucket.count,
                mean=mean,
                p50=p50,
                p90=p90,
                target=target,
                meets_target=targets.meets(target, mean),
                as_of=bucket.as_of or kpi.created_at,
            )
        )
    return points
