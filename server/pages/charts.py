"""Trend charts drawn on the server: the geometry of an SVG line chart from a KPI's series.

The pages' templates turn a Chart into SVG markup; every chart also gets a table with the same
numbers (the text equivalent), so nothing here is the only way to read a value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from registry.trends import Point
from server.pages import format


@dataclass(frozen=True, slots=True)
class Dot:
    x: float
    y: float
    label: str  # what a reader is told of this point (its week and value)
    meets: bool | None


@dataclass(frozen=True, slots=True)
class Tick:
    at: float  # the coordinate on its axis
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    path: str  # the line: one segment per run of weeks that have a value
    dots: tuple[Dot, ...]
    target_y: float | None
    target_label: str
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    empty: bool


def _nice_step(span: float, steps: int) -> float:
    raw = span / steps
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _scale(values: Sequence[float]) -> tuple[float, float, float]:
    """Return the y-axis low, high and tick step that hold every value."""
    low, high = min(values), max(values)
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        low, high = low - pad, high + pad
    step = _nice_step(high - low, 4)
    low = math.floor(low / step) * step
    high = math.ceil(high / step) * step
    if low < 0 <= min(values):
        low = 0.0
    return low, high, step


def line_chart(
    points: Sequence[Point],
    units: str,
    *,
    width: int = 640,
    height: int = 240,
    compact: bool = False,
) -> Chart:
    """Return the geometry of a series' means as a line, with its target as a level line."""
    left, right, top, bottom = (4, 4, 4, 4) if compact else (56, 16, 16, 32)
    inner_w, inner_h = width - left - right, height - top - bottom
    means = [p.mean for p in points]
    target = next((p.target for p in reversed(points) if p.target is not None), None)
    known = [m for m in means if m is not None]
    scale_values = known + ([target.threshold] if target is not None else [])
    if not scale_values:
        return Chart(width, height, left, top, right, bottom, "", (), None, "", (), (), True)
    low, high, step = _scale(scale_values)

    def x_of(i: int) -> float:
        return left + (inner_w * i / (len(points) - 1) if len(points) > 1 else inner_w / 2)

    def y_of(v: float) -> float:
        return top + inner_h * (1 - (v - low) / (high - low))

    dots: list[Dot] = []
    commands: list[str] = []
    gap = True  # a week without a value breaks the line: the next point starts a new segment
    for i, (point, mean) in enumerate(zip(points, means, strict=True)):
        if mean is None:
            gap = True
            continue
        x, y = round(x_of(i), 1), round(y_of(mean), 1)
        commands.append(f"{'M' if gap else 'L'}{x} {y}")
        gap = False
        if not compact:  # a sparkline is the line alone; its caption says the latest value
            label = f"Week of {format.day(point.start)}: {format.number(mean, units)}"
            dots.append(Dot(x, y, f"{label} ({point.count} incidents)", point.meets_target))
    y_ticks: list[Tick] = []
    if not compact:
        tick = low
        while tick <= high + step / 2:
            y_ticks.append(Tick(round(y_of(tick), 1), format.number(tick, units)))
            tick += step
    x_ticks = tuple(
        Tick(round(x_of(i), 1), format.day(p.start)[5:])
        for i, p in enumerate(points)
        if not compact and i % 2 == 0
    )
    return Chart(
        width=width,
        height=height,
        left=left,
        top=top,
        right=right,
        bottom=bottom,
        path=" ".join(commands),
        dots=tuple(dots),
        target_y=round(y_of(target.threshold), 1) if target is not None else None,
        target_label=format.target(target, units) if target is not None else "",
        y_ticks=tuple(y_ticks),
        x_ticks=x_ticks,
        empty=not known,
    )
