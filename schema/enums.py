"""The domain's enums, registered with GraphQL under their contract names."""

from __future__ import annotations

import strawberry

from server.model import Comparison, Persona, Severity, Visibility
from server.trends import Bucket

for _domain_enum in (Visibility, Persona, Severity, Comparison, Bucket):
    strawberry.enum(_domain_enum)


__all__ = ["Bucket", "Comparison", "Persona", "Severity", "Visibility"]
