"""Syntax tree -> evaluator: checks names and types, and builds nested closures as it goes."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from registry.formulas import aggregates, ops
from registry.formulas.catalog import COLLECTIONS, INCIDENT_FIELDS, Collection, FieldSpec, Type
from registry.formulas.errors import FormulaError, quote
from registry.formulas.nodes import Binary, Call, Field, Literal, Name, Node, Unary, start_of
from registry.formulas.runtime import Env, Evaluator, Val, later

SCALAR_FUNCTIONS: dict[str, tuple[Type, Type]] = {
    "minutes": (Type.DURATION, Type.NUMBER),
    "hours": (Type.DURATION, Type.NUMBER),
    "phase_entered_at": (Type.STRING, Type.DATETIME),
}
_SECONDS_PER = {"minutes": 60.0, "hours": 3600.0}
_ORDERED = (Type.NUMBER, Type.STRING, Type.DATETIME)


@dataclass(frozen=True, slots=True)
class Typed:
    """A checked expression with a value: its type and its evaluator."""

    type: Type
    run: Evaluator


@dataclass(frozen=True, slots=True)
class Source:
    """A checked collection reference, optionally projected onto one field."""

    collection: Collection
    field: FieldSpec | None = None

    def describe(self) -> str:
        suffix = "" if self.field is None else "." + self.field.name
        return self.collection.name + suffix


def check(tree: Node) -> Evaluator:
    """Return the evaluator of a whole formula, which must be a number."""
    typed = _Checker(None).value(tree)
    if typed.type is not Type.NUMBER:
        raise FormulaError(
            f"a formula must give a number, but this gives {_a(typed.type)}", start_of(tree)
        )
    return typed.run


def _a(type_: Type) -> str:
    """Return the type's name with an article, for messages."""
    return "null" if type_ is Type.NULL else f"a {type_.value}"


def _constant(value: Any) -> Evaluator:
    """Return an evaluator of a literal; literals come from no data, so have no as-of."""
    result: Val | None = None if value is None else (value, None)
    return lambda env, item: result


class _Checker:
    """Checks one scope: the whole formula (item None) or a 'where' over item's collection."""

    def __init__(self, item: Collection | None) -> None:
        self.item = item

    def value(self, node: Node) -> Typed:
        """Return node checked as a value: collections are only allowed inside aggregates."""
        checked = self.any(node)
        if isinstance(checked, Source):
            name = checked.describe()
            raise FormulaError(
                f"{name} is a collection; use it inside an aggregate such as count({name})",
                start_of(node),
            )
        return checked

    def any(self, node: Node) -> Typed | Source:
        """Return node checked as a value or a collection reference."""
        if isinstance(node, Literal):
            return self.literal(node)
        if isinstance(node, Name):
            return self.name(node)
        if isinstance(node, Field):
            return self.field(node)
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Binary):
            return self.binary(node)
        return self.call(node)

    def literal(self, node: Literal) -> Typed:
        value = node.value
        if value is None:
            return Typed(Type.NULL, _constant(None))
        if isinstance(value, bool):
            return Typed(Type.BOOL, _constant(value))
        if isinstance(value, str):
            return Typed(Type.STRING, _constant(value))
        return Typed(Type.NUMBER, _constant(float(value)))

    def name(self, node: Name) -> Typed | Source:
        if self.item is not None and node.name in self.item.fields:
            return _item_field(self.item, self.item.fields[node.name])
        if node.name in INCIDENT_FIELDS:
            return _incident_field(INCIDENT_FIELDS[node.name])
        if node.name in COLLECTIONS:
            if self.item is not None:
                raise FormulaError("a collection cannot be used inside 'where'", node.pos)
            return Source(COLLECTIONS[node.name])
        if node.name in SCALAR_FUNCTIONS or node.name in aggregates.NAMES:
            raise FormulaError(f"{node.name} is a function; call it as {node.name}(...)", node.pos)
        raise FormulaError(f"unknown name {quote(node.name)}{self.suggest(node.name)}", node.pos)

    def suggest(self, name: str) -> str:
        """Return ' (did you mean ...?)' for a near miss among the names in scope, or ''."""
        known = [*INCIDENT_FIELDS, *COLLECTIONS, *SCALAR_FUNCTIONS, *aggregates.NAMES]
        if self.item is not None:
            known.extend(self.item.fields)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        return f" (did you mean '{close[0]}'?)" if close else ""

    def field(self, node: Field) -> Source:
        target = self.any(node.target)
        if not isinstance(target, Source) or target.field is not None:
            what = target.describe() if isinstance(target, Source) else _a(target.type)
            raise FormulaError(f"'.{node.name}' needs a collection, not {what}", node.pos)
        spec = target.collection.fields.get(node.name)
        if spec is None:
            fields = ", ".join(target.collection.fields)
            raise FormulaError(
                f"{target.collection.name} has no field {quote(node.name)} (it has {fields})",
                node.pos,
            )
        return Source(target.collection, spec)

    def unary(self, node: Unary) -> Typed:
        operand = self.value(node.operand)
        result = ops.unary_type(node.op, operand.type)
        if result is None:
            raise FormulaError(f"cannot apply '{node.op}' to {_a(operand.type)}", node.pos)
        return Typed(result, ops.unary(node.op, operand.type, operand.run))

    def binary(self, node: Binary) -> Typed:
        left, right = self.value(node.left), self.value(node.right)
        result = ops.binary_type(node.op, left.type, right.type)
        if result is None:
            raise FormulaError(
                f"cannot apply '{node.op}' to {_a(left.type)} and {_a(right.type)}", node.pos
            )
        return Typed(result, ops.binary(node.op, left.type, right.type, left.run, right.run))

    def call(self, node: Call) -> Typed:
        if node.name in aggregates.NAMES:
            return self.aggregate(node)
        if node.name not in SCALAR_FUNCTIONS:
            known = node.name in INCIDENT_FIELDS or node.name in COLLECTIONS
            problem = "is not a function" if known else "is not a known function"
            raise FormulaError(f"{quote(node.name)} {problem}", node.pos)
        if node.where is not None:
            raise FormulaError(f"'where' only goes in aggregates, not {node.name}", node.where_pos)
        (arg,) = self.arguments(node, "a value")
        wanted, result = SCALAR_FUNCTIONS[node.name]
        checked = self.value(arg)
        if checked.type not in (wanted, Type.NULL):
            raise FormulaError(
                f"{node.name} needs {_a(wanted)}, not {_a(checked.type)}", start_of(arg)
            )
        if node.name == "phase_entered_at":
            return Typed(result, _phase_entered_at(checked.run))
        return Typed(result, _per_unit(checked.run, _SECONDS_PER[node.name]))

    def arguments(self, node: Call, what: str) -> tuple[Node]:
        """Return the one argument of a call, or raise FormulaError naming the count."""
        if len(node.args) != 1:
            got = len(node.args)
            raise FormulaError(f"{node.name} takes 1 argument ({what}), got {got}", node.pos)
        return (node.args[0],)

    def aggregate(self, node: Call) -> Typed:
        if self.item is not None:
            raise FormulaError(f"{node.name}(...) cannot be used inside 'where'", node.pos)
        (arg,) = self.arguments(node, "a collection")
        source = self.any(arg)
        if not isinstance(source, Source):
            raise FormulaError(
                f"{node.name} needs a collection such as surveys.score, not {_a(source.type)}",
                start_of(arg),
            )
        result = self.projection(node, source)
        keep = None if node.where is None else self.condition(source.collection, node.where)
        return Typed(result, aggregates.build(node.name, source.collection, source.field, keep))

    def projection(self, node: Call, source: Source) -> Type:
        """Return the type of node's aggregate over source, or raise FormulaError."""
        if node.name == "count":
            return Type.NUMBER
        if source.field is None:
            example = next(iter(source.collection.fields))
            raise FormulaError(
                f"{node.name} needs a field, e.g. {node.name}({source.describe()}.{example})",
                start_of(node.args[0]),
            )
        field_type = source.field.type
        allowed = {"sum": (Type.NUMBER,), "avg": (Type.NUMBER,), "min": _ORDERED, "max": _ORDERED}
        if field_type not in allowed.get(node.name, (field_type,)):
            raise FormulaError(
                f"{node.name} cannot apply to {source.describe()}, which is {_a(field_type)}",
                start_of(node.args[0]),
            )
        return Type.NUMBER if node.name in ("sum", "avg") else field_type

    def condition(self, collection: Collection, node: Node) -> Evaluator:
        """Return the evaluator of a 'where' condition, with the item's fields in scope."""
        checked = _Checker(collection).value(node)
        if checked.type not in (Type.BOOL, Type.NULL):
            raise FormulaError(
                f"'where' needs a true/false condition, not {_a(checked.type)}", start_of(node)
            )
        return checked.run


def _item_field(collection: Collection, spec: FieldSpec) -> Typed:
    """Return an item field: as of the item's natural time, or the field's own if later."""
    read, natural_time = spec.read, collection.natural_time

    def run(env: Env, item: Any) -> Val | None:
        value = read(item)
        if value is None:
            return None
        natural = natural_time(item)
        return (value, later(natural, value) if spec.type is Type.DATETIME else natural)

    return Typed(spec.type, run)


def _incident_field(spec: FieldSpec) -> Typed:
    """Return an incident field: a datetime is its own as-of; severity comes with none."""
    read, is_time = spec.read, spec.type is Type.DATETIME

    def run(env: Env, item: Any) -> Val | None:
        value = read(env.data.incident)
        if value is None:
            return None
        return (value, value if is_time else None)

    return Typed(spec.type, run)


def _phase_entered_at(phase: Evaluator) -> Evaluator:
    """Return an evaluator of when the timeline first entered a phase; null if it never did."""

    def run(env: Env, item: Any) -> Val | None:
        name = phase(env, item)
        if name is None:
            return None
        at = env.phase_entered_at(name[0])
        return None if at is None else (at, later(at, name[1]))

    return run


def _per_unit(duration: Evaluator, seconds: float) -> Evaluator:
    """Return an evaluator converting a duration (seconds) into a number of units."""

    def run(env: Env, item: Any) -> Val | None:
        value = duration(env, item)
        return None if value is None else (value[0] / seconds, value[1])

    return run
