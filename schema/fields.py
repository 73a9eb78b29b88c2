"""Fields read from rows, declared once on the Strawberry type.

`from_row("units")` on a type's attribute says which columns of the type's row a field reads and
what value they make. The standard executor resolves the field from the object's row with it; the
compiled plans (schema/plans.py) read the same declaration to serve the field straight from the
rows they fetch; the REST mirror writes an object's JSON from it. A new field of this kind is one
line on the type.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import strawberry
from graphql import GraphQLField

ROW = "mim-row"


@dataclass(frozen=True, slots=True)
class FromRow:
    """The columns a field reads from its object's row, and the value they make (None: as is)."""

    columns: tuple[str, ...]
    value: Callable[..., Any] | None = None

    def read(self, row: Mapping[str, Any], prefix: str = "") -> Any:
        """Return the field's value, as the resolver returns it, from a row (columns prefixed)."""
        if self.value is None:
            return row[prefix + self.columns[0]]
        return self.value(*(row[prefix + column] for column in self.columns))


def from_row(*columns: str, value: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Return a Strawberry field read from the `row` of its object (see the module docstring)."""
    declaration = FromRow(columns, value)

    def resolve(root: Any) -> Any:
        return declaration.read(root.row)

    return strawberry.field(resolver=resolve, metadata={ROW: declaration}, **options)


def declaration_of(field: GraphQLField) -> FromRow | None:
    """Return how a GraphQL field reads its row, or None when it is not read from one."""
    definition = (field.extensions or {}).get("strawberry-definition")
    metadata = getattr(definition, "metadata", None) or {}
    found = metadata.get(ROW)
    return found if isinstance(found, FromRow) else None


@cache
def row_fields(type_: type) -> list[tuple[str, FromRow]]:
    """Return a Strawberry type's row-read fields as (GraphQL name, declaration), in order."""
    definition = type_.__strawberry_definition__  # type: ignore[attr-defined]
    found = []
    for field in definition.fields:
        declaration = field.metadata.get(ROW) if field.metadata else None
        if isinstance(declaration, FromRow):
            found.append((field.graphql_name or _camel(field.python_name), declaration))
    return found


def json_value(value: Any) -> Any:
    """Return a resolved value as GraphQL writes it in JSON (enums by name, ISO date-times)."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [json_value(item) for item in value]
    return value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
