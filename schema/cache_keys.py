"""What a client's normalised cache keys each object type by, as the type's description says it.

clients/typescript/typePolicies.ts gives Apollo Client the same keys; tests/clients/
test_type_policies.py holds the two together and checks the keys against real answers.
"""

from __future__ import annotations

VALUE = " Cache key: none (a value, cached within the object that holds it)."


def keyed(fields: str) -> str:
    """Return the sentence naming the fields a client cache keys a type by."""
    return f" Cache key: {fields}."
