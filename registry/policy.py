"""Who may see and do what: the one place, denying by default."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Protocol, overload

from piccolo.columns import Column
from piccolo.columns.combination import Where

from registry.errors import Forbidden
from registry.model import Persona, Viewer, Visibility


class Action(enum.Enum):
    READ = "read"
    INGEST = "ingest"
    DEFINE = "define"


_ALL = frozenset(Visibility)
_EXEC_ONLY = frozenset({Visibility.EXEC})

VISIBILITIES: dict[Persona, frozenset[Visibility]] = {
    Persona.EXEC: _EXEC_ONLY,
    Persona.STAKEHOLDER: _EXEC_ONLY,
    Persona.RESPONDER: _ALL,
    Persona.INGEST: _ALL,
    Persona.ADMIN: _ALL,
}

ALLOWED: dict[Action, frozenset[Persona]] = {
    Action.READ: frozenset(Persona),
    Action.INGEST: frozenset({Persona.INGEST, Persona.ADMIN}),
    Action.DEFINE: frozenset({Persona.ADMIN}),
}


def may(viewer: Viewer, action: Action) -> bool:
    """Return whether any of the viewer's personas may perform `action`."""
    return bool(viewer.personas & ALLOWED.get(action, frozenset()))


def require(viewer: Viewer, action: Action) -> None:
    """Raise Forbidden unless the viewer may perform `action`."""
    if not may(viewer, action):
        raise Forbidden("not allowed")


def visibilities(viewer: Viewer) -> frozenset[Visibility]:
    """Return the KPI visibilities the viewer may read; empty for unknown personas."""
    seen: frozenset[Visibility] = frozenset()
    for persona in viewer.personas:
        seen |= VISIBILITIES.get(persona, frozenset())
    return seen


def _readable(viewer: Viewer) -> list[str]:
    """Return the visibility values the viewer may read, raising Forbidden when there are none."""
    require(viewer, Action.READ)
    values = sorted(v.value for v in visibilities(viewer))
    if not values:
        raise Forbidden("not allowed")
    return values


class Arguments(Protocol):
    """Where raw SQL collects its arguments: db.Statement, or db.Marks for a QueryString."""

    def one_of(self, values: Sequence[Any]) -> str: ...


@overload
def visible(viewer: Viewer, column: Column) -> Where: ...


@overload
def visible(viewer: Viewer, column: str, arguments: Arguments) -> str: ...


def visible(viewer: Viewer, column: Column | str, arguments: Arguments | None = None) -> Any:
    """Return the condition that keeps only the KPIs the viewer may see: every read applies it.

    `column` is a KPI definition's visibility: a Piccolo column (giving a `where` clause, e.g.
    `KpiObservation.kpi._.visibility`) or its name in raw SQL (giving SQL text, e.g.
    "d.visibility", whose arguments go into `arguments`). Raises Forbidden when the viewer may
    see nothing, so an unknown persona reads nothing at all.
    """
    values = _readable(viewer)
    if isinstance(column, Column):
        return column.is_in(values)
    if arguments is None:
        raise TypeError("raw SQL needs the arguments it collects")
    return f"{column} {arguments.one_of(values)}"
