"""The domain's enums, registered with GraphQL under their contract names, with descriptions.

The enums live in registry/, which knows nothing of GraphQL, so their descriptions and those of
their values are given here, when they are registered.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

import strawberry
from strawberry.types.enum import has_enum_definition

from registry.kpis import PlanAction
from registry.model import (
    Comparison,
    KpiStatus,
    Persona,
    RecomputeState,
    Severity,
    Visibility,
)
from registry.trends import Bucket


def _register(domain_enum: type[enum.Enum], description: str, values: Mapping[str, str]) -> None:
    """Register a domain enum with GraphQL, describing it and each of its values."""
    strawberry.enum(domain_enum, description=description)
    if not has_enum_definition(domain_enum):
        raise TypeError(f"{domain_enum.__name__} was not registered")
    definition = domain_enum.__strawberry_definition__
    names = {value.name for value in definition.values}
    if names != values.keys():
        raise ValueError(f"{domain_enum.__name__}: describe exactly {sorted(names)}")
    definition.values = [
        dataclasses.replace(value, description=values[value.name]) for value in definition.values
    ]


_register(
    Visibility,
    "Who may see a KPI: its definition, observations, summaries and series. A KPI the caller may "
    "not see does not exist for that caller.",
    {
        "INTERNAL": "Seen by the responder, ingest and admin personas only.",
        "EXEC": "Seen by every persona; the only KPIs exec and stakeholder see.",
    },
)
_register(
    Persona,
    "A role a token proves; the token's persona claim names it in lower case (exec, "
    "stakeholder, ...). A caller sees and may do what any of its personas may.",
    {
        "EXEC": "Sees EXEC KPIs only; may call queries only.",
        "STAKEHOLDER": "Sees EXEC KPIs only; may call queries only.",
        "RESPONDER": "Sees INTERNAL and EXEC KPIs; may call queries only.",
        "INGEST": "Sees INTERNAL and EXEC KPIs; may call queries and the incident and "
        "observation mutations.",
        "ADMIN": "Sees INTERNAL and EXEC KPIs; may call everything, including the definition "
        "mutations and backfillKpi.",
    },
)
_register(
    Severity,
    "An incident's severity. Targets may be set per severity; summaries and series may be "
    "filtered by it.",
    {
        "P1": "Severity P1.",
        "P2": "Severity P2.",
        "P3": "Severity P3.",
        "P4": "Severity P4.",
    },
)
_register(
    Comparison,
    "How a value is judged against a target's threshold. AT_MOST: lower is better "
    "(MTTR <= 120). AT_LEAST: higher is better (adherence >= 90).",
    {
        "AT_MOST": "Lower is better: a value meets the target when value <= threshold.",
        "AT_LEAST": "Higher is better: a value meets the target when value >= threshold.",
    },
)
_register(
    Bucket,
    "The width of a series' buckets, in UTC.",
    {
        "DAY": "Calendar days, from 00:00 UTC.",
        "WEEK": "Weeks from Monday 00:00 UTC.",
        "MONTH": "Calendar months, from the 1st at 00:00 UTC.",
    },
)
_register(
    RecomputeState,
    "Where a KPI's recompute job stands.",
    {
        "QUEUED": "Waiting for a runner.",
        "RUNNING": "Claimed by a runner; if its worker stops, another resumes it after its last "
        "committed batch.",
        "DONE": "Every incident computed; the counts are final.",
        "FAILED": "Stopped by an error (see error); backfillKpi, or a change of the expression, "
        "queues it again.",
    },
)
_register(
    KpiStatus,
    "Whether a KPI is in use.",
    {
        "ACTIVE": "Listed by kpis, computed from its expression, taking new observations.",
        "RETIRED": "Kept with its history and observations and answered by kpi(slug), but left "
        "out of kpis unless includeRetired, computed no more, taking no new observations "
        "(BAD_USER_INPUT).",
    },
)
_register(
    PlanAction,
    "What applying a definitions file does to one KPI.",
    {
        "CREATE": "In the file, not in the registry: created at version 1.",
        "CHANGE": "Some fields differ: changed, with one revision.",
        "RETIRE": "The file retires an active KPI (status: retired), with any other changes.",
        "REACTIVATE": "The file makes a retired KPI active again, with any other changes; it is "
        "recomputed.",
        "UNCHANGED": "The file matches the registry: nothing written.",
        "ABSENT": "In the registry, not in the file: left alone.",
    },
)


__all__ = [
    "Bucket",
    "Comparison",
    "KpiStatus",
    "Persona",
    "PlanAction",
    "RecomputeState",
    "Severity",
    "Visibility",
]
