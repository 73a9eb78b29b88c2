"""Answers a worker keeps for the reads the compiled plans serve, so a dashboard polled all day
costs one statement a poll while nothing it shows has changed.

An answer is kept under everything it depends on: the data generation (moved by every committed
write, in every worker, read before the data: registry/generation.py), the caller (subject and
personas: what they may see and which targets apply), whether reviews are overdue by the clock
(for documents that ask), the document, its operation and its variables, and the schema served;
the key is the revalidation tag (server/revalidation.py) plus the request's own digest. Only a
plan's answer without errors is kept; a write anywhere makes every kept answer unreachable, and
the least recently used go first beyond MAX_BYTES. MIM_ANSWER_CACHE=0 keeps nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from registry.model import Viewer
from server import revalidation

MAX_BYTES = 32 * 1024 * 1024
# A larger answer is not kept (a page of incidents with every child, say): rare and costly.
MAX_ANSWER_BYTES = 256 * 1024


class Answers:
    """A worker's kept answers, least recently used first out, bounded in bytes."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> bytes | None:
        found = self._kept.get(key)
        if found is None:
            self.misses += 1
            return None
        self._kept.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: str, answer: bytes) -> None:
        if len(answer) > MAX_ANSWER_BYTES or key in self._kept:
            return
        self._kept[key] = answer
        self._bytes += len(answer)
        while self._bytes > self._max_bytes:
            _, dropped = self._kept.popitem(last=False)
            self._bytes -= len(dropped)


ANSWERS = web.AppKey("answers", Answers)


async def key_of(request: web.Request, viewer: Viewer, body: Mapping[str, Any]) -> str:
    """Return the key of this request's answer as of now (reads the data generation)."""
    query = body.get("query")
    tag = request.get(revalidation.ETAG)  # a GET tagged before it is answered
    if tag is None:
        clock = isinstance(query, str) and "reviewOverdue" in query
        tag = await request.app[revalidation.REVALIDATOR].tag(request, viewer, clock=clock)
    parts = [query, body.get("operationName"), body.get("variables") or {}]
    try:
        text = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # text that is not UTF-8 (a lone surrogate)
        text = json.dumps(parts, sort_keys=True).encode()
    return f"{tag}:{hashlib.sha256(text).hexdigest()}"
