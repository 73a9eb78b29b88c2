"""What every request leaves behind: its id, its log fields, its metrics and its spans.

The `observe` middleware runs first, around everything else (refusals, authentication, both
GraphQL paths), so that every answer, a 401 or a 413 included, carries the request id and is
counted.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

from aiohttp import web
from graphql import GraphQLError, OperationDefinitionNode, parse

from schema import MAX_TOKENS
from server import logs
from server.metrics import Clock, Metrics, method_of, route_of
from server.tracing import Tracing

HEADER = "X-Request-ID"
# A caller's id is kept when it is 1-128 visible ASCII characters; anything else is replaced.
_ACCEPTED_ID = re.compile(r"[\x21-\x7e]{1,128}")
# An operation name as GraphQL spells one, short enough to log.
_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]{0,127}")
# Documents longer than this are parsed again rather than kept (the cache holds 512).
CACHED_DOCUMENT_CHARS = 8192

METRICS = web.AppKey("metrics", Metrics)
TRACING = web.AppKey("tracing", Tracing)
REQUEST_ID = web.RequestKey("request_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id(sent: str | None) -> str:
    """Return the caller's request id when it is short and printable, else a new one."""
    if sent is not None and _ACCEPTED_ID.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


def fields(request: web.Request) -> dict[str, Any]:
    """Return the request's log fields (set by `observe`; empty outside it)."""
    return request.get(logs.FIELDS_KEY) or {}


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request its id and log fields, and count and time its answer."""
    metrics = request.app.get(METRICS)
    route = route_of(request)
    found = {
        "request_id": request_id(request.headers.get(HEADER)),
        "method": request.method,
        "route": route,
    }
    request[REQUEST_ID] = found["request_id"]
    request[logs.FIELDS_KEY] = found
    token = logs.REQUEST_FIELDS.set(found)
    tracing = request.app.get(TRACING)
    if tracing is not None:
        tracing.annotate(found["request_id"])
    clock = Clock()
    if metrics is not None:
        metrics.in_flight.inc()
    status: int | None = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as raised:
        status = raised.status
        raise
    except asyncio.CancelledError:
        status = None  # the server is stopping: nobody gets an answer to count
        raise
    finally:
        logs.REQUEST_FIELDS.reset(token)
        if metrics is not None:
            metrics.in_flight.dec()
        if metrics is not None and status is not None:
            metrics.request_done(method_of(request), route, status, clock.seconds())


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Send the request id back on every answer."""
    found = request.get(REQUEST_ID)
    if found is not None:
        response.headers[HEADER] = found


def operation_name(name: object) -> str | None:
    """Return an operation name fit for logs and spans: a GraphQL name of at most 128 chars."""
    return name if isinstance(name, str) and _NAME.fullmatch(name) else None


def operation_of(query: str, operation_name: str | None) -> tuple[str | None, str | None]:
    """Return the type and name of the operation a request runs (None where there is none)."""
    operations = _operations(query)
    if operations is None:
        return None, operation_name
    if operation_name is None:
        return operations[0] if len(operations) == 1 else (None, None)
    for kind, name in operations:
        if name == operation_name:
            return kind, name
    return None, operation_name


def operation_count(query: str) -> int:
    """Return how many operations a document holds (1 when it does not parse: the executor
    reports that)."""
    operations = _operations(query)
    return 1 if operations is None else len(operations)


def _operations(query: str) -> tuple[tuple[str, str | None], ...] | None:
    """Return each operation's type and name (None: the document does not parse), parsing a
    document of at most CACHED_DOCUMENT_CHARS once."""
    if len(query) > CACHED_DOCUMENT_CHARS:
        return _parsed_operations(query)
    return _cached_operations(query)


def _parsed_operations(query: str) -> tuple[tuple[str, str | None], ...] | None:
    try:
        document = parse(query, max_tokens=MAX_TOKENS)
    except GraphQLError:
        return None
    return tuple(
        (d.operation.value, d.name.value if d.name is not None else None)
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode)
    )


_cached_operations = lru_cache(maxsize=512)(_parsed_operations)
