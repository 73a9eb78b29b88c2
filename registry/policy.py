"""Who may see and do what: the one place, denying by default."""

from __future__ import annotations

import enum

from piccolo.columns.combination import Where

from registry.errors import Forbidden
from registry.model import Persona, Viewer, Visibility
from registry.tables import KpiDefinition, KpiObservation


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


def readable(viewer: Viewer) -> list[str]:
    """Return the visibility values the viewer may read, raising Forbidden when there are none."""
    require(viewer, Action.READ)
    values = sorted(v.value for v in visibilities(viewer))
    if not values:
        raise Forbidden("not allowed")
    return values


def kpi_filter(viewer: Viewer) -> Where:
    """Return the WHERE clause limiting KPI definitions to those the viewer may see."""
    return KpiDefinition.visibility.is_in(readable(viewer))


def observation_filter(viewer: Viewer) -> Where:
    """Return the WHERE clause limiting observations to KPIs the viewer may see."""
    return KpiObservation.kpi._.visibility.is_in(readable(viewer))
