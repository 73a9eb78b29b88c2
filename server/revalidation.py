"""Revalidation for pollers: GET answers carry a strong ETag; If-None-Match with it answers 304.

The tag is a hash of what an answer depends on: the data generation (registry/generation.py),
read before the answer is made, so the answer is at least as new as its tag; who asks (subject
and personas: callers who may see different answers get different tags); the request itself
(path, query string, Accept); the served schema; and the clock, as far as answers read it: how
many of the definitions the caller may see are past their review date (reviewOverdue).
A 304 runs no query: one statement reads the generation.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections import OrderedDict
from datetime import UTC, datetime

from aiohttp import web

from registry import generation, kpis, policy
from registry.model import Viewer

CACHE_CONTROL = "private, no-cache"
VARY = "Authorization"
# Review dates per (generation, what the caller may see): at most this many kept.
CACHED_DUES = 64


class Revalidator:
    """Makes tags for one application (its schema), keeping review dates per generation."""

    def __init__(self, schema_text: str) -> None:
        self._schema = hashlib.sha256(schema_text.encode()).hexdigest()[:16]
        self._dues: OrderedDict[tuple[int, frozenset[str]], tuple[datetime, ...]] = OrderedDict()

    async def tag(self, request: web.Request, viewer: Viewer, *, clock: bool) -> str:
        """Return the strong ETag (quoted) of the answer this request gets now; `clock`: the
        answer says whether reviews are overdue."""
        current = await generation.current()
        overdue = await self._overdue(current, viewer) if clock else -1
        parts = (
            str(current),
            viewer.subject,
            ",".join(sorted(p.value for p in viewer.personas)),
            str(overdue),
            request.path,
            request.query_string,
            request.headers.get("Accept", ""),
            self._schema,
        )
        digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass"))
        return f'"{digest.hexdigest()[:40]}"'

    async def _overdue(self, current: int, viewer: Viewer) -> int:
        """How many definitions the viewer may see are past their review date now."""
        visible = frozenset(v.value for v in policy.visibilities(viewer))
        if not visible:
            return 0
        key = (current, visible)
        dues = self._dues.get(key)
        if dues is None:
            dues = await kpis.review_dues(viewer=viewer)
            self._dues[key] = dues
            while len(self._dues) > CACHED_DUES:
                self._dues.popitem(last=False)
        return bisect_left(dues, datetime.now(UTC))


ETAG = web.RequestKey("etag", str)
REVALIDATOR = web.AppKey("revalidator", Revalidator)


async def check(request: web.Request, viewer: Viewer, *, clock: bool) -> web.Response | None:
    """Tag this GET's answer before it is made; return the 304 if the caller holds the tag.

    Call it once the request is known to be answerable (refusals first: they read nothing).
    """
    if request.method != "GET":
        return None
    tag = await request.app[REVALIDATOR].tag(request, viewer, clock=clock)
    if matches(request.headers.get("If-None-Match"), tag):
        return not_modified(tag)
    request[ETAG] = tag
    return None


def tag_answer(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Give a tagged request's successful answer (no errors) its ETag and caching headers; for
    `If-None-Match: *`, the 304 that now knows the answer exists."""
    tag = request.get(ETAG)
    body = response.body if isinstance(response, web.Response) else None
    if tag and response.status == 200 and isinstance(body, bytes) and b'"errors":' not in body:
        if "*" in _candidates(request.headers.get("If-None-Match")):
            return not_modified(tag)
        mark(response, tag)
    return response


def _candidates(header: str | None) -> list[str]:
    return [part.strip() for part in header.split(",")] if header else []


def matches(header: str | None, tag: str, *, exists: bool = False) -> bool:
    """Return whether an If-None-Match header names this tag, or is `*` for a resource known to
    exist (RFC 9110 13.1.2; a query's answer is known once made: tag_answer)."""
    candidates = _candidates(header)
    # A weak comparison, as If-None-Match asks: W/"x" matches "x".
    return (exists and "*" in candidates) or any(c.removeprefix("W/") == tag for c in candidates)


def not_modified(tag: str) -> web.Response:
    return web.Response(
        status=304, headers={"ETag": tag, "Cache-Control": CACHE_CONTROL, "Vary": VARY}
    )


def mark(response: web.StreamResponse, tag: str) -> None:
    """Give a successful answer its tag and caching headers."""
    response.headers["ETag"] = tag
    response.headers["Cache-Control"] = CACHE_CONTROL
    response.headers.add("Vary", VARY)  # beside Vary: Accept (GraphQL) and Origin (CORS)
