"""Operators: their type rules, their null-safe implementations, and the closures that run them.

Durations are float seconds at run time. An implementation returns None for no value: a division
by zero, a non-finite number, or a datetime out of range.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from registry.formulas.catalog import Type
from registry.formulas.runtime import Env, Evaluator, Val, later

Impl = Callable[[Any, Any], Any]
N, S, B, DT, DUR = Type.NUMBER, Type.STRING, Type.BOOL, Type.DATETIME, Type.DURATION


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _add(a: float, b: float) -> float | None:
    return _finite(a + b)


def _sub(a: float, b: float) -> float | None:
    return _finite(a - b)


def _mul(a: float, b: float) -> float | None:
    return _finite(a * b)


def _div(a: float, b: float) -> float | None:
    return None if b == 0 else _finite(a / b)


def _shift(at: datetime, seconds: float) -> datetime | None:
    """Return at moved by seconds, or None when that leaves the calendar."""
    try:
        return at + timedelta(seconds=seconds)
    except OverflowError:
        return None


def _elapsed(a: datetime, b: datetime) -> float:
    return (a - b).total_seconds()


ARITHMETIC: dict[tuple[str, Type, Type], tuple[Type, Impl]] = {
    ("+", N, N): (N, _add),
    ("+", DUR, DUR): (DUR, _add),
    ("+", DT, DUR): (DT, _shift),
    ("+", DUR, DT): (DT, lambda a, b: _shift(b, a)),
    ("-", N, N): (N, _sub),
    ("-", DT, DT): (DUR, _elapsed),
    ("-", DT, DUR): (DT, lambda a, b: _shift(a, -b)),
    ("-", DUR, DUR): (DUR, _sub),
    ("*", N, N): (N, _mul),
    ("*", DUR, N): (DUR, _mul),
    ("*", N, DUR): (DUR, _mul),
    ("/", N, N): (N, _div),
    ("/", DUR, N): (DUR, _div),
    ("/", DUR, DUR): (N, _div),
}
_ORDERED = (N, S, DT, DUR)
_ORDER_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_EQUALITY_OPS = {"==": operator.eq, "!=": operator.ne}
COMPARISON: dict[tuple[str, Type, Type], tuple[Type, Impl]] = {
    **{(op, t, t): (B, f) for op, f in _ORDER_OPS.items() for t in _ORDERED},
    **{(op, t, t): (B, f) for op, f in _EQUALITY_OPS.items() for t in (*_ORDERED, B)},
}
BINARY = {**ARITHMETIC, **COMPARISON}
UNARY: dict[tuple[str, Type], tuple[Type, Callable[[Any], Any]]] = {
    ("-", N): (N, operator.neg),
    ("-", DUR): (DUR, operator.neg),
    ("not", B): (B, operator.not_),
}


def binary_type(op: str, left: Type, right: Type) -> Type | None:
    """Return the type of left op right, NULL if null leaves it open, or None if it is invalid."""
    if op in ("and", "or"):
        return B if {left, right} <= {B, Type.NULL} else None
    if (op, left, right) in BINARY:
        return BINARY[(op, left, right)][0]
    results = {
        result
        for (o, lt, rt), (result, _) in BINARY.items()
        if o == op and left in (lt, Type.NULL) and right in (rt, Type.NULL)
    }
    if not results:
        return None
    return results.pop() if len(results) == 1 else Type.NULL


def unary_type(op: str, operand: Type) -> Type | None:
    """Return the type of op operand, NULL if null leaves it open, or None if it is invalid."""
    if operand is Type.NULL:
        results = {result for (o, _), (result, _) in UNARY.items() if o == op}
        return results.pop() if len(results) == 1 else Type.NULL
    found = UNARY.get((op, operand))
    return found[0] if found else None


def always_null(env: Env, item: Any) -> Val | None:
    """Evaluate an expression that is null whatever the data (it has a null operand)."""
    return None


def binary(op: str, left: Type, right: Type, a: Evaluator, b: Evaluator) -> Evaluator:
    """Return the evaluator of a op b; the types were checked by binary_type."""
    if op == "and":
        return _and(a, b)
    if op == "or":
        return _or(a, b)
    rule = BINARY.get((op, left, right))
    if rule is None:
        return always_null
    impl = rule[1]

    def run(env: Env, item: Any) -> Val | None:
        x = a(env, item)
        if x is None:
            return None
        y = b(env, item)
        if y is None:
            return None
        value = impl(x[0], y[0])
        return None if value is None else (value, later(x[1], y[1]))

    return run


def unary(op: str, operand: Type, a: Evaluator) -> Evaluator:
    """Return the evaluator of op a; the type was checked by unary_type."""
    rule = UNARY.get((op, operand))
    if rule is None:
        return always_null
    impl = rule[1]

    def run(env: Env, item: Any) -> Val | None:
        x = a(env, item)
        return None if x is None else (impl(x[0]), x[1])

    return run


def _and(a: Evaluator, b: Evaluator) -> Evaluator:
    """Three-valued 'and': false if either side is false, else null if either is null."""

    def run(env: Env, item: Any) -> Val | None:
        x = a(env, item)
        if x is not None and x[0] is False:
            return x
        y = b(env, item)
        if y is not None and y[0] is False:
            return y
        if x is None or y is None:
            return None
        return (True, later(x[1], y[1]))

    return run


def _or(a: Evaluator, b: Evaluator) -> Evaluator:
    """Three-valued 'or': true if either side is true, else null if either is null."""

    def run(env: Env, item: Any) -> Val | None:
        x = a(env, item)
        if x is not None and x[0] is True:
            return x
        y = b(env, item)
        if y is not None and y[0] is True:
            return y
        if x is None or y is None:
            return None
        return (False, later(x[1], y[1]))

    return run
