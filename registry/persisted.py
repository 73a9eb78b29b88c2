"""Persisted documents: request texts kept by their SHA-256, so a client can send the hash alone.

The store is a table, so every worker of every host shares it, bounded to MAX_DOCUMENTS (the
least recently used go first: a lookup in the table marks a document used, and every
PRUNE_EVERY stores the oldest beyond the bound are deleted). Each worker keeps the documents it
used last in memory (CACHED), so a hot hash costs no statement. The store keeps text only: what
a document may do is decided when it runs, exactly as for the same text sent in full.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from datetime import UTC, datetime

from registry import db
from registry.tables import PersistedQuery

MAX_DOCUMENTS = 10_000
MAX_DOCUMENT_CHARS = 100_000
CACHED = 1000
PRUNE_EVERY = 100

_cache: OrderedDict[str, str] = OrderedDict()
_stores = itertools.count(1)


def digest(document: str) -> str:
    """Return the lower-case hex SHA-256 of a document's UTF-8 text (Apollo's persisted hash)."""
    return hashlib.sha256(document.encode("utf-8", "surrogatepass")).hexdigest()


async def get(key: str) -> str | None:
    """Return the document stored under a key (a hash), or None."""
    sha256 = key
    found = _cache.get(sha256)
    if found is not None:
        _cache.move_to_end(sha256)
        return found
    rows = await (
        PersistedQuery.update({PersistedQuery.used_at: datetime.now(UTC)})
        .where(PersistedQuery.hash == sha256)
        .returning(PersistedQuery.document)
    )
    if not rows:
        return None
    document: str = rows[0]["document"]
    _remember(sha256, document)
    return document


async def put(key: str, document: str) -> None:
    """Keep a document under a key: a hash the caller derived from the document's checked hash
    (server/persisted.py keeps callers who see different KPIs apart)."""
    sha256 = key
    if len(document) > MAX_DOCUMENT_CHARS or sha256 in _cache:
        return
    now = datetime.now(UTC)
    await PersistedQuery.insert(
        PersistedQuery(hash=sha256, document=document, used_at=now)
    ).on_conflict(action="DO NOTHING")
    _remember(sha256, document)
    if next(_stores) % PRUNE_EVERY == 0:
        await prune()


async def prune(keep: int = MAX_DOCUMENTS) -> None:
    """Delete the least recently used documents beyond `keep`."""
    await db.engine().run_ddl(
        "DELETE FROM persisted_query WHERE hash IN (SELECT hash FROM persisted_query "
        f"ORDER BY used_at DESC, hash LIMIT -1 OFFSET {int(keep)})"
        if db.is_sqlite()
        else "DELETE FROM persisted_query WHERE hash IN (SELECT hash FROM persisted_query "
        f"ORDER BY used_at DESC, hash OFFSET {int(keep)})"
    )


def _remember(sha256: str, document: str) -> None:
    _cache[sha256] = document
    _cache.move_to_end(sha256)
    while len(_cache) > CACHED:
        _cache.popitem(last=False)
