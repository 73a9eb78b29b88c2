"""The domain's enums, registered with GraphQL under their contract names."""

from __future__ import annotations

import strawberry

from server.model import Comparison, Persona, Severity, Visibility

for _domain_enum in (Visibility, Persona, Severity, Comparison):
    strawberry.enum(_domain_enum)


__all__ = ["Comparison", "Persona", "Severity", "Visibility"]
