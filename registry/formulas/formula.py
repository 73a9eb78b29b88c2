"""A compiled formula: parsed and type-checked once, then evaluated per incident."""

from __future__ import annotations

import math

from registry.formulas.compiler import check
from registry.formulas.data import IncidentData, Result
from registry.formulas.parser import parse
from registry.formulas.runtime import Env, Evaluator
from registry.model import MAX_VALUE


class Formula:
    """The per-incident value of a KPI; build one with compile_formula."""

    __slots__ = ("_run", "source")

    def __init__(self, source: str, run: Evaluator) -> None:
        self.source = source
        self._run = run

    def __repr__(self) -> str:
        return f"Formula({self.source!r})"

    def evaluate(self, data: IncidentData) -> Result | None:
        """Return the value for one incident, or None when its data gives none a KPI may hold."""
        env = Env(data)
        out = self._run(env, None)
        if out is None or not math.isfinite(out[0]) or abs(out[0]) > MAX_VALUE:
            return None  # as the set-based SELECT drops it
        as_of = out[1] if out[1] is not None else env.detected_at
        assert as_of is not None  # an incident always has detected_at
        return Result(value=float(out[0]), as_of=as_of)


def compile_formula(source: str) -> Formula:
    """Return source parsed and type-checked into a Formula; raise FormulaError if it is not one."""
    return Formula(source, check(parse(source)))
