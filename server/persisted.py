"""Automatic persisted queries (Apollo's protocol) and trusted operations, before a request runs.

A request may carry `extensions.persistedQuery = {"version": 1, "sha256Hash": HASH}`:
- with its `query`, the hash is checked against the text (a mismatch is 400 and stores nothing),
  the text is kept (registry/persisted.py) and the request runs as sent;
- without it, the stored (or shipped) document runs, or the answer is the coded
  `PERSISTED_QUERY_NOT_FOUND`, and the client sends the text with the hash.
GET works the same way (`extensions` as JSON in the query string), so browsers and proxies can
revalidate a hash-only request. What the document may do is judged afterwards exactly as for the
same text sent in full: visibility, every limit, the compiled plans. The store is kept apart by
what its callers may see: a document sent by a caller who sees internal KPIs is found by hash
only for callers who see them too, so an exec token cannot learn, by asking for a hash, that
someone ran a document naming an internal KPI (the operations the project ships are found by
everyone).

Trusted operations: with `MIM_TRUSTED_OPERATIONS=exec,stakeholder`, a token whose every persona
is on that list may run only the operations the project ships (schema/operations/), named by
hash or sent as their exact text; anything else is refused (`FORBIDDEN`) before it runs, and
counted (`mim_requests_refused_total{limit="untrusted"}`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

from aiohttp import web

from registry import persisted, policy
from registry.model import Persona, Viewer
from schema.operations import SHIPPED
from server.http import error_response

NOT_FOUND_MESSAGE = "PersistedQueryNotFound"
NOT_FOUND_CODE = "PERSISTED_QUERY_NOT_FOUND"
UNTRUSTED_MESSAGE = (
    "This token may run only the operations the service ships (schema/operations), by hash or "
    "exact text."
)
_HASH = re.compile(r"[0-9a-f]{64}")
# hash -> the text of every operation the project ships.
SHIPPED_BY_HASH: dict[str, str] = {persisted.digest(text): text for text in SHIPPED.values()}


def persisted_query(body: dict[str, Any]) -> Any:
    """Return the request's extensions.persistedQuery, or None when it has none."""
    extensions = body.get("extensions")
    return extensions.get("persistedQuery") if isinstance(extensions, dict) else None


async def resolve(
    body: dict[str, Any], viewer: Viewer | None
) -> tuple[dict[str, Any] | None, web.Response | None]:
    """Return the request with its document (stored or checked), or the answer that ends it."""
    wanted = persisted_query(body)
    if wanted is None:
        return body, None
    if not isinstance(wanted, dict) or wanted.get("version") != 1:
        return None, _bad("extensions.persistedQuery must be {version: 1, sha256Hash}.")
    sha256 = wanted.get("sha256Hash")
    if not isinstance(sha256, str) or not _HASH.fullmatch(sha256):
        return None, _bad("extensions.persistedQuery.sha256Hash must be 64 lower-case hex digits.")
    query = body.get("query")
    if isinstance(query, str):
        if persisted.digest(query) != sha256:
            return None, _bad("provided sha does not match query")
        await persisted.put(_key(viewer, sha256), query)
        return body, None
    if query is not None:
        return None, _bad("query must be a string.")
    document = SHIPPED_BY_HASH.get(sha256) or await persisted.get(_key(viewer, sha256))
    if document is None:
        return None, not_found()
    return {**body, "query": document}, None


def _key(viewer: Viewer | None, sha256: str) -> str:
    """Return where a document is kept: its hash within what its caller may see."""
    seen = sorted(v.value for v in policy.visibilities(viewer)) if viewer is not None else []
    return persisted.digest(f"{','.join(seen)}\n{sha256}")


def trusted(viewer: Viewer | None, body: dict[str, Any], restricted: Collection[Persona]) -> bool:
    """Return whether the request may run: always, unless the token's every persona is restricted
    to the shipped operations and the document is not one of them."""
    if not restricted or viewer is None or not viewer.personas:
        return True
    if not viewer.personas <= frozenset(restricted):
        return True
    query = body.get("query")
    return isinstance(query, str) and persisted.digest(query) in SHIPPED_BY_HASH


def untrusted() -> web.Response:
    return error_response(200, "FORBIDDEN", UNTRUSTED_MESSAGE)


def not_found() -> web.Response:
    # Apollo's links look for the message and the code; 200, as Apollo Server answers it.
    return error_response(200, NOT_FOUND_CODE, NOT_FOUND_MESSAGE)


def query_extensions(raw: str) -> dict[str, Any] | None:
    """Return a GET's `extensions` parameter when it is a JSON object (None otherwise)."""
    try:
        found = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return found if isinstance(found, dict) else None


def _bad(message: str) -> web.Response:
    return error_response(400, "BAD_USER_INPUT", message)
