"""Checked formula syntax tree -> one SQL SELECT computing it for a range of incidents at once.

The SELECT returns (incident, as_of, value) for every incident with id between parameters 1 and 2
(and detected_at >= parameter 3 when that is not null) whose formula has a value. It replicates
the Python evaluator's semantics (compiler.py, ops.py, aggregates.py, runtime.py):

- a value is a pair (value, as-of); as-of is always a stored timestamp column, never arithmetic,
  and a binary operator takes the later as-of of its two sides; a literal has none, and a formula
  whose result has none is as of detected_at;
- null propagates through arithmetic and comparisons, 'and'/'or' are three-valued (and take the
  as-of of the side that decided them), 'where' keeps only items whose condition is true;
- numbers are IEEE doubles computed with the same operations Python performs, so values are
  bit-identical: durations are float seconds = exact microseconds / 1e6 (on SQLite from the
  stored text: strftime('%s') of the whole seconds plus the '.ffffff' digits; on PostgreSQL
  extract(epoch), which is an exact numeric); sums of integer scores are exact integer sums
  rounded once, as math.fsum gives; avg is that sum / count.

Division by zero gives no value (NULLIF). Instead of checking every intermediate result for
infinity, compile() bounds every number's magnitude statically and gives up (returns None) when a
result could overflow or underflow (PostgreSQL raises on both), so SQL never sees a non-finite
value. Anything not supported also gives None, and the Python path stays the fallback:
datetime +/- duration, phase_entered_at() of anything but a string literal or inside 'where', and
formulas whose SQL would exceed MAX_SQL characters (checked as each part is built, so compiling
gives up after little work).

Known difference: on SQLite a duration longer than 2**53 microseconds (~285 years) is converted
to a double before dividing by 1e6 (two roundings instead of one), so its last bit may differ.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any
from typing import Literal as Lit

from registry.formulas import aggregates, ops
from registry.formulas.catalog import COLLECTIONS, INCIDENT_FIELDS, Type
from registry.formulas.compiler import SCALAR_FUNCTIONS
from registry.formulas.errors import FormulaError
from registry.formulas.nodes import Binary, Call, Field, Literal, Name, Node, Unary
from registry.formulas.parser import parse
from registry.model import MAX_VALUE

Dialect = Lit["sqlite", "postgres"]

# Fixed parameters of the compiled SELECT; literals are numbered from FIRST_LITERAL.
LO, HI, SINCE, KPI, VERSION, NOW = 1, 2, 3, 4, 5, 6
FIRST_LITERAL = 7
MAX_SQL = 60_000
# Magnitudes PostgreSQL float8 arithmetic cannot leave without raising (and SQLite would give inf).
_HUGE = 1e300
_TINY = 1e-300
_INT_MAX = float(2**31)
# The widest span of two datetimes, in seconds (years 1 to 9999).
_SPAN = 3.2e11

_TABLES = {
    "alerts": "alert",
    "timeline": "timeline_event",
    "milestones": "milestone",
    "surveys": "survey_response",
}


class Unsupported(Exception):
    """The formula uses something this compiler does not translate."""


@dataclass(frozen=True, slots=True)
class Compiled:
    """A formula as SQL: select reads parameters LO, HI, SINCE and the literals in params."""

    source: str
    dialect: Dialect
    select: str
    literals: tuple[Any, ...]
    # the highest parameter number select uses (sqlite3 wants exactly that many values)
    param_count: int

    def params(self, lo: int, hi: int, since: Any, kpi: str, version: int, now: Any) -> list[Any]:
        return [lo, hi, since, kpi, version, now, *self.literals]


@dataclass(frozen=True, slots=True)
class Expr:
    """A compiled value: SQL for the value and its as-of (None: none), and number bounds."""

    type: Type
    value: str
    asof: str | None = None
    sure: bool = True  # as-of is not null whenever the value is not null
    null: bool = False  # null whatever the data
    hi: float = 0.0  # |value| <= hi ...
    lo: float = math.inf  # ... and |value| >= lo unless it is 0


def _null(type_: Type, dialect: Dialect) -> Expr:
    casts = {Type.NUMBER: "float8", Type.DURATION: "float8", Type.BOOL: "boolean"}
    cast = casts.get(type_, "")
    value = f"CAST(NULL AS {cast})" if dialect == "postgres" and cast else "NULL"
    return Expr(type_, value, None, True, True)


@dataclass
class _Context:
    dialect: Dialect
    literals: list[Any] = field(default_factory=list)
    joins: dict[str, str] = field(default_factory=dict)  # derived-table SQL -> alias

    def param(self, value: float | str) -> str:
        """Return a literal: a bound parameter on SQLite (exact), inline text on PostgreSQL.

        PostgreSQL rejects a parameter the statement does not use, and folding a null operand
        can drop a literal; its text -> float8 conversion is correctly rounded, so inline
        repr() gives the same double.
        """
        if self.dialect == "postgres":
            if isinstance(value, str):
                return "CAST('" + value.replace("'", "''") + "' AS text)"
            return f"CAST('{value!r}' AS float8)"
        self.literals.append(value)
        return mark(self.dialect, FIRST_LITERAL + len(self.literals) - 1)

    def join(self, sql: str) -> str:
        if sql not in self.joins:
            self.joins[sql] = f"j{len(self.joins)}"
        return self.joins[sql]


def mark(dialect: Dialect, n: int, cast: str = "") -> str:
    """Return the placeholder of parameter n."""
    if dialect == "postgres":
        return f"${n}::{cast}" if cast else f"${n}"
    return f"?{n}"


def compile_sql(source: str, dialect: Dialect) -> Compiled | None:
    """Return source as a set-based SELECT for dialect, or None when it is not supported."""
    try:
        tree = parse(source)
        ctx = _Context(dialect)
        top = _Scope(ctx, None).value(tree)
    except (Unsupported, FormulaError, RecursionError):
        return None
    if top.type is not Type.NUMBER:
        return None
    if top.asof is None:
        asof = "i.detected_at"
    elif top.sure:
        asof = top.asof
    else:
        asof = f"coalesce({top.asof}, i.detected_at)"
    joins = "".join(
        f" LEFT JOIN ({sql}) AS {alias} ON {alias}.incident = i.id"
        for sql, alias in ctx.joins.items()
    )
    since = mark(dialect, SINCE, "timestamptz")
    select = (
        f"SELECT x.incident, x.as_of, x.value FROM (SELECT i.id AS incident, {asof} AS as_of, "
        f"{top.value} AS value FROM incident AS i{joins} "
        f"WHERE i.id BETWEEN {_lo(dialect)} AND {_hi(dialect)} "
        f"AND ({since} IS NULL OR i.detected_at >= {since})) AS x "
        f"WHERE x.value BETWEEN {_bound(dialect, -MAX_VALUE)} AND {_bound(dialect, MAX_VALUE)}"
    )
    if len(select) > MAX_SQL:
        return None
    used = max(int(n) for n in re.findall(r"[?$](\d+)", select))
    return Compiled(source, dialect, select, tuple(ctx.literals), used)


def _bound(dialect: Dialect, value: float) -> str:
    return f"CAST({value!r} AS float8)" if dialect == "postgres" else repr(value)


def _lo(dialect: Dialect) -> str:
    return mark(dialect, LO, "integer")


def _hi(dialect: Dialect) -> str:
    return mark(dialect, HI, "integer")


def _check_bounds(expr: Expr) -> Expr:
    numeric = expr.type in (Type.NUMBER, Type.DURATION) and not expr.null
    if numeric and (expr.hi > _HUGE or (expr.hi > 0 and expr.lo < _TINY)):
        raise Unsupported("the value could overflow or underflow")
    return expr


class _Scope:
    """One scope: the whole formula (item None) or a 'where' over item's collection (alias c)."""

    def __init__(self, ctx: _Context, item: str | None) -> None:
        self.ctx = ctx
        self.dialect = ctx.dialect
        self.item = item
        self.uses_incident = False

    # -- helpers -----------------------------------------------------------------------------

    def later(self, a: Expr, b: Expr) -> tuple[str | None, bool]:
        """Return the SQL of the later of two as-ofs (either may be absent) and if it is sure."""
        if a.asof is None:
            return b.asof, b.sure
        if b.asof is None:
            return a.asof, a.sure
        return later_sql(self.dialect, a.asof, a.sure, b.asof, b.sure), a.sure or b.sure

    def micros(self, column: str) -> str:
        """SQLite: the exact microseconds since the epoch of a stored UTC timestamp text."""
        return (
            f"(CAST(strftime('%s', substr({column}, 1, 19)) AS INTEGER) * 1000000 + "
            f"CASE WHEN substr({column}, 20, 1) = '.' "
            f"THEN CAST(substr({column}, 21, 6) AS INTEGER) ELSE 0 END)"
        )

    def real(self, sql: str) -> str:
        return f"CAST({sql} AS float8)" if self.dialect == "postgres" else f"CAST({sql} AS REAL)"

    def number(self, value: float) -> str:
        return self.ctx.param(float(value))

    # -- nodes -------------------------------------------------------------------------------

    def value(self, node: Node) -> Expr:
        expr = self._value(node)
        # Bound the work as the SQL grows, not after: every part is at most MAX_SQL long, so a
        # part built from two of them is too, and a formula of MAX_NODES parts costs little to
        # give up on (the Python evaluator then computes it).
        if len(expr.value) + len(expr.asof or "") > MAX_SQL:
            raise Unsupported("the SQL would be too long")
        return expr

    def _value(self, node: Node) -> Expr:
        if isinstance(node, Literal):
            return self.literal(node)
        if isinstance(node, Name):
            return self.name(node)
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Binary):
            return _check_bounds(self.binary(node))
        if isinstance(node, Call):
            return _check_bounds(self.call(node))
        raise Unsupported("a collection outside an aggregate")

    def literal(self, node: Literal) -> Expr:
        value = node.value
        if value is None:
            return _null(Type.NULL, self.dialect)
        if isinstance(value, bool):
            if self.dialect == "postgres":
                return Expr(Type.BOOL, "TRUE" if value else "FALSE")
            return Expr(Type.BOOL, "1" if value else "0")
        if isinstance(value, str):
            if "\x00" in value:
                raise Unsupported("NUL in a string")
            return Expr(Type.STRING, self.ctx.param(value))
        number = float(value)
        if not math.isfinite(number):
            raise Unsupported("a non-finite literal")
        size = abs(number)
        return _check_bounds(
            Expr(Type.NUMBER, self.number(number), hi=size, lo=size if size else math.inf)
        )

    def name(self, node: Name) -> Expr:
        if self.item is not None:
            spec = COLLECTIONS[self.item].fields.get(node.name)
            if spec is not None:
                return self.item_field(node.name, spec.type)
        if node.name in INCIDENT_FIELDS:
            if self.item is not None:
                self.uses_incident = True
            column = f"i.{node.name}"
            if node.name == "severity":
                return Expr(Type.STRING, column)
            return Expr(Type.DATETIME, column, column)
        raise Unsupported(f"name {node.name}")

    def item_field(self, name: str, type_: Type) -> Expr:
        assert self.item is not None
        natural = f"c.{COLLECTIONS[self.item].natural}"
        column = f"c.{name}"
        if type_ is Type.DATETIME:
            asof = later_sql(self.dialect, natural, True, column, True)
            return Expr(type_, column, asof)
        if type_ is Type.NUMBER:
            return Expr(type_, self.real(column), natural, hi=_INT_MAX, lo=1.0)
        return Expr(type_, column, natural)

    def unary(self, node: Unary) -> Expr:
        operand = self.value(node.operand)
        result = ops.unary_type(node.op, operand.type)
        if result is None:
            raise Unsupported("type error")
        if (node.op, operand.type) not in ops.UNARY or operand.null:
            return _null(result, self.dialect)
        if node.op == "not":
            return Expr(result, f"(NOT {operand.value})", operand.asof, operand.sure)
        return Expr(
            result, f"(-{operand.value})", operand.asof, operand.sure, hi=operand.hi, lo=operand.lo
        )

    def binary(self, node: Binary) -> Expr:
        left, right = self.value(node.left), self.value(node.right)
        result = ops.binary_type(node.op, left.type, right.type)
        if result is None:
            raise Unsupported("type error")
        if node.op in ("and", "or"):
            return self.logic(node.op, left, right)
        rule = ops.BINARY.get((node.op, left.type, right.type))
        if rule is None or left.null or right.null:
            return _null(result, self.dialect)
        asof, sure = self.later(left, right)
        a, b = left.value, right.value
        if node.op in ops._ORDER_OPS or node.op in ops._EQUALITY_OPS:
            sql_op = {"==": "=", "!=": "<>"}.get(node.op, node.op)
            if left.type is Type.STRING and self.dialect == "postgres":
                b = f'{b} COLLATE "C"'
            return Expr(result, f"({a} {sql_op} {b})", asof, sure)
        if left.type is Type.DATETIME and right.type is Type.DATETIME:
            return Expr(result, self.elapsed(a, b), asof, sure, hi=_SPAN, lo=1e-6)
        if Type.DATETIME in (left.type, right.type):
            raise Unsupported("datetime +/- duration")
        if node.op in "+-":
            hi = left.hi + right.hi
            lo = min(left.lo, right.lo) * 2.0**-54
            return Expr(result, f"({a} {node.op} {b})", asof, sure, hi=hi, lo=lo)
        if node.op == "*":
            return Expr(
                result, f"({a} * {b})", asof, sure, hi=left.hi * right.hi, lo=left.lo * right.lo
            )
        # Division: no value when dividing by zero.
        hi = left.hi / right.lo if right.lo > 0 else math.inf
        lo = left.lo / right.hi if right.hi > 0 else math.inf
        return Expr(result, f"({a} / NULLIF({b}, 0))", asof, sure, hi=hi, lo=lo)

    def elapsed(self, a: str, b: str) -> str:
        """Return SQL for (a - b).total_seconds() of two timestamp columns, as Python rounds it."""
        if self.dialect == "postgres":
            return f"CAST(extract(epoch FROM {a}) - extract(epoch FROM {b}) AS float8)"
        return f"(CAST({self.micros(a)} - {self.micros(b)} AS REAL) / 1000000.0)"

    def logic(self, op: str, left: Expr, right: Expr) -> Expr:
        """Three-valued and/or, as of the side that decided, or the later of both."""
        x, y = left.value, right.value
        if left.asof is not None and left.asof == right.asof:
            # Whichever side decides, the as-of is the same column: say it once, so that a chain
            # of conditions on one item stays linear in size.
            sure = left.sure and right.sure
            return Expr(Type.BOOL, f"({x} {sql_op_of(op)} {y})", left.asof, sure)
        both, _ = self.later(left, right)
        decided = "NOT " if op == "and" else ""
        sql_op = sql_op_of(op)
        parts = []
        if left.asof is not None:
            parts.append(f"WHEN {decided}{x} THEN {left.asof}")
        else:
            parts.append(f"WHEN {decided}{x} THEN NULL")
        if right.asof is not None:
            parts.append(f"WHEN {decided}{y} THEN {right.asof}")
        else:
            parts.append(f"WHEN {decided}{y} THEN NULL")
        if both is not None:
            parts.append(f"ELSE {both}")
        asof = None
        if left.asof is not None or right.asof is not None:
            asof = f"CASE {' '.join(parts)} END"
        sure = left.asof is not None and left.sure and right.asof is not None and right.sure
        return Expr(Type.BOOL, f"({x} {sql_op} {y})", asof, sure)

    def call(self, node: Call) -> Expr:
        if node.name in aggregates.NAMES:
            return self.aggregate(node)
        if node.name not in SCALAR_FUNCTIONS or len(node.args) != 1 or node.where is not None:
            raise Unsupported(node.name)
        wanted, result = SCALAR_FUNCTIONS[node.name]
        if node.name == "phase_entered_at":
            return self.phase_entered_at(node.args[0])
        arg = self.value(node.args[0])
        if arg.type not in (wanted, Type.NULL):
            raise Unsupported("type error")
        if arg.null:
            return _null(result, self.dialect)
        unit = {"minutes": 60.0, "hours": 3600.0}[node.name]
        return Expr(
            result,
            f"({arg.value} / {self.number(unit)})",
            arg.asof,
            arg.sure,
            hi=arg.hi / unit,
            lo=arg.lo / unit,
        )

    def phase_entered_at(self, arg: Node) -> Expr:
        """When the timeline first entered a phase named by a string literal (or null)."""
        if isinstance(arg, Literal) and arg.value is None:
            return _null(Type.DATETIME, self.dialect)
        if self.item is not None or not isinstance(arg, Literal) or not isinstance(arg.value, str):
            raise Unsupported("phase_entered_at of a non-literal, or inside 'where'")
        if "\x00" in arg.value:
            raise Unsupported("NUL in a string")
        phase = self.ctx.param(arg.value)
        alias = self.ctx.join(
            "SELECT incident, min(occurred_at) AS v FROM timeline_event "
            f"WHERE incident BETWEEN {_lo(self.dialect)} AND {_hi(self.dialect)} "
            f"AND phase = {phase} GROUP BY incident"
        )
        column = f"{alias}.v"
        return Expr(Type.DATETIME, column, column)

    def aggregate(self, node: Call) -> Expr:
        if self.item is not None or len(node.args) != 1:
            raise Unsupported("aggregate inside 'where'")
        target = node.args[0]
        field_name: str | None = None
        if isinstance(target, Field):
            field_name, target = target.name, target.target
        if not isinstance(target, Name) or target.name not in COLLECTIONS:
            raise Unsupported("aggregate of a non-collection")
        collection = COLLECTIONS[target.name]
        spec = None
        if field_name is not None:
            spec = collection.fields.get(field_name)
            if spec is None:
                raise Unsupported("unknown field")
        name = node.name
        if name != "count":
            if spec is None:
                raise Unsupported("aggregate needs a field")
            allowed = {
                "sum": (Type.NUMBER,),
                "avg": (Type.NUMBER,),
                "min": (Type.NUMBER, Type.STRING, Type.DATETIME),
                "max": (Type.NUMBER, Type.STRING, Type.DATETIME),
            }
            if spec.type not in allowed.get(name, (spec.type,)):
                raise Unsupported("type error")

        inner = _Scope(self.ctx, collection.name)
        natural = f"c.{collection.natural}"
        conditions = [f"c.incident BETWEEN {_lo(self.dialect)} AND {_hi(self.dialect)}"]
        item_asof, item_sure = natural, True
        if node.where is not None:
            keep = inner.value(node.where)
            if keep.type not in (Type.BOOL, Type.NULL):
                raise Unsupported("type error")
            conditions.append("false" if keep.null else f"({keep.value})")
            if keep.asof is not None:
                item_asof = later_sql(self.dialect, natural, True, keep.asof, keep.sure)
        item_value = "NULL"
        if spec is not None:
            projected = inner.item_field(spec.name, spec.type)
            item_value = projected.value
            if spec.type is Type.DATETIME:
                # the value may be null, which leaves the as-of alone
                item_asof = later_sql(self.dialect, item_asof, item_sure, projected.value, False)
        table = f"{_TABLES[collection.name]} AS c"
        if inner.uses_incident:
            table += " JOIN incident AS i ON i.id = c.incident"
        present = name in ("count", "sum", "avg", "min", "max") and spec is not None
        if present:
            conditions.append(f"c.{spec.name} IS NOT NULL")  # type: ignore[union-attr]
        where = " AND ".join(conditions)

        if name in ("count", "sum", "avg"):
            total = "NULL" if spec is None or name == "count" else f"sum(c.{spec.name})"
            alias = self.ctx.join(
                f"SELECT c.incident AS incident, count(*) AS n, {total} AS s, "
                f"max({item_asof}) AS a FROM {table} WHERE {where} GROUP BY c.incident"
            )
            if name == "avg":
                value = f"({self.real(alias + '.s')} / {self.real(alias + '.n')})"
                return Expr(Type.NUMBER, value, f"{alias}.a", hi=_INT_MAX, lo=1 / _INT_MAX)
            asof = f"coalesce({alias}.a, i.detected_at)"
            if name == "count":
                return Expr(
                    Type.NUMBER, self.real(f"coalesce({alias}.n, 0)"), asof, hi=_INT_MAX, lo=1.0
                )
            return Expr(
                Type.NUMBER,
                self.real(f"coalesce({alias}.s, 0)"),
                asof,
                hi=_INT_MAX * _INT_MAX,
                lo=1.0,
            )

        assert spec is not None
        ordered = item_value
        if spec.type is Type.STRING and self.dialect == "postgres":
            ordered = f'{item_value} COLLATE "C"'
        direction = "ASC" if name in ("min", "first") else "DESC"
        keys = [f"{ordered} {direction}", f"{item_asof} {direction}"]
        if name in ("first", "last"):
            # by natural time, then (for ties) non-null value, value and as-of, as _by_time
            keys = [f"{natural} {direction}", f"({item_value} IS NOT NULL) {direction}", *keys]
        alias = self.ctx.join(
            f"SELECT incident, v, a FROM (SELECT c.incident AS incident, {item_value} AS v, "
            f"{item_asof} AS a, row_number() OVER (PARTITION BY c.incident "
            f"ORDER BY {', '.join(keys)}) AS rn FROM {table} WHERE {where}) AS w WHERE rn = 1"
        )
        column = f"{alias}.v"
        if spec.type is Type.NUMBER:
            return Expr(spec.type, column, f"{alias}.a", hi=_INT_MAX, lo=1.0)
        return Expr(spec.type, column, f"{alias}.a")


def sql_op_of(op: str) -> str:
    """Return the SQL keyword of a formula's logical operator."""
    return "AND" if op == "and" else "OR"


def later_sql(dialect: Dialect, a: str, a_sure: bool, b: str, b_sure: bool) -> str:
    """Return SQL for the later of two timestamps, ignoring one that is null (as later() does)."""
    if dialect == "postgres":
        return f"greatest({a}, {b})"  # greatest ignores nulls
    if a_sure and b_sure:
        return f"max({a}, {b})"
    if a_sure:
        return f"max({a}, coalesce({b}, {a}))"
    if b_sure:
        return f"max({b}, coalesce({a}, {b}))"
    return f"coalesce(max({a}, {b}), {a}, {b})"
