"""The domain's enums, registered with GraphQL under their contract names."""

from __future__ import annotations

import strawberry

from registry.model import (
    Comparison,
    KpiStatus,
    Persona,
    RecomputeState,
    Severity,
    Visibility,
)
from registry.trends import Bucket

for _domain_enum in (Visibility, Persona, Severity, Comparison, Bucket, RecomputeState, KpiStatus):
    strawberry.enum(_domain_enum)


__all__ = [
    "Bucket",
    "Comparison",
    "KpiStatus",
    "Persona",
    "RecomputeState",
    "Severity",
    "Visibility",
]
