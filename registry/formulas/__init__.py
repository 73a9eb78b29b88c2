"""A small, safe expression language for the per-incident value of a KPI.

Formulas are tokenized and parsed by hand (never eval'd), type-checked once, and compiled into
nested closures; see compile_formula.
"""

from __future__ import annotations

from registry.formulas.data import IncidentData, Result
from registry.formulas.errors import FormulaError
from registry.formulas.formula import Formula, compile_formula

__all__ = ["Formula", "FormulaError", "IncidentData", "Result", "compile_formula"]
