"""The operations the project ships: one named GraphQL operation a file, reviewed in the repository.

Clients generate their types from these; metrics and traces name them (any other operation is
`other`).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent

# name -> document, one operation per file, the file named for its operation.
SHIPPED: dict[str, str] = {path.stem: path.read_text() for path in sorted(HERE.glob("*.graphql"))}
SHIPPED_NAMES = frozenset(SHIPPED)
