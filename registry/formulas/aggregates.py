"""Aggregates: one pass over a collection, filtered, projected and reduced to one value.

Each item considered carries an as-of: its natural time, the times the filter read, and the
projected value when that is a datetime. count, sum and avg take the latest as-of of the items
they reduce; min, max, first and last take the as-of of the one item they pick.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from registry.formulas.catalog import Collection, FieldSpec
from registry.formulas.runtime import Env, Evaluator, Val, later

# (value, as_of, natural time) of one item that passed the filter; value is the item itself
# when there is no projection.
Item = tuple[Any, datetime | None, datetime]
Walk = Callable[[Env], list[Item]]
Reduce = Callable[[Env, list[Item]], Val | None]

NAMES = ("count", "sum", "avg", "min", "max", "first", "last")


def build(
    name: str, source: Collection, field: FieldSpec | None, keep: Evaluator | None
) -> Evaluator:
    """Return the evaluator of name(source[.field] [where keep])."""
    walk = _walker(source, field, keep)
    reduce = _REDUCERS[name]
    if name == "count" and field is None:
        reduce = _count_items

    def run(env: Env, item: Any) -> Val | None:
        return reduce(env, walk(env))

    return run


def _walker(source: Collection, field: FieldSpec | None, keep: Evaluator | None) -> Walk:
    """Return a function listing the items of source that pass keep, projected onto field."""
    natural_time = source.natural_time
    read = field.read if field is not None else None

    def walk(env: Env) -> list[Item]:
        items: list[Item] = []
        for record in source.items(env.data):
            natural = natural_time(record)
            as_of: datetime | None = natural
            if keep is not None:
                verdict = keep(env, record)
                if verdict is None or verdict[0] is not True:
                    continue
                as_of = later(as_of, verdict[1])
            value = record if read is None else read(record)
            if isinstance(value, datetime):
                as_of = later(as_of, value)
            items.append((value, as_of, natural))
        return items

    return walk


def _latest(items: list[Item]) -> datetime | None:
    """Return the latest as-of among items."""
    as_of: datetime | None = None
    for item in items:
        as_of = later(as_of, item[1])
    return as_of


def _present(items: list[Item]) -> list[Item]:
    """Return the items whose projected value is not null."""
    return [item for item in items if item[0] is not None]


def _total(items: list[Item]) -> float | None:
    """Return the exact (so order-independent) sum of the values, or None if it is not finite."""
    try:
        total = math.fsum(item[0] for item in items)
    except (OverflowError, ValueError):  # fsum's overflow, or inf - inf
        return None
    return total if math.isfinite(total) else None


def _count_items(env: Env, items: list[Item]) -> Val | None:
    """count(collection): the number of items; 0 as of detected_at when there are none."""
    if not items:
        return (0.0, env.detected_at)
    return (float(len(items)), _latest(items))


def _count(env: Env, items: list[Item]) -> Val | None:
    """count(collection.field): the number of non-null values."""
    return _count_items(env, _present(items))


def _sum(env: Env, items: list[Item]) -> Val | None:
    """sum: the sum of non-null values; 0 as of detected_at when there are none."""
    present = _present(items)
    if not present:
        return (0.0, env.detected_at)
    total = _total(present)
    return None if total is None else (total, _latest(present))


def _avg(env: Env, items: list[Item]) -> Val | None:
    """avg: mean of non-null values; null when none."""
    present = _present(items)
    if not present:
        return None
    total = _total(present)
    return None if total is None else (total / len(present), _latest(present))


def _min(env: Env, items: list[Item]) -> Val | None:
    """min: the least non-null value (ties broken by as-of); null when none."""
    present = _present(items)
    if not present:
        return None
    value, as_of, _ = min(present, key=lambda item: (item[0], item[1]))
    return (value, as_of)


def _max(env: Env, items: list[Item]) -> Val | None:
    """max: the greatest non-null value (ties broken by as-of); null when none."""
    present = _present(items)
    if not present:
        return None
    value, as_of, _ = max(present, key=lambda item: (item[0], item[1]))
    return (value, as_of)


def _by_time(item: Item) -> tuple[Any, ...]:
    """Order items by natural time, then (for ties) non-null value and as-of."""
    value, as_of, natural = item
    return (natural, value is not None, value, as_of)


def _first(env: Env, items: list[Item]) -> Val | None:
    """first: the value of the earliest item by natural time (may be null)."""
    if not items:
        return None
    value, as_of, _ = min(items, key=_by_time)
    return None if value is None else (value, as_of)


def _last(env: Env, items: list[Item]) -> Val | None:
    """last: the value of the latest item by natural time (may be null)."""
    if not items:
        return None
    value, as_of, _ = max(items, key=_by_time)
    return None if value is None else (value, as_of)


_REDUCERS: dict[str, Reduce] = {
    "count": _count,
    "sum": _sum,
    "avg": _avg,
    "min": _min,
    "max": _max,
    "first": _first,
    "last": _last,
}
