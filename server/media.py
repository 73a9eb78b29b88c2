"""GraphQL over HTTP's media types: `application/graphql-response+json` when the client asks for it.

A client that accepts `application/graphql-response+json` (at least as readily as
`application/json`) gets its answers in that type, with the status codes the GraphQL over HTTP
spec gives it: a request error (the document does not parse or validate, a variable does not
coerce, a limit refuses it; errors without a `path`, before any field ran) is 400. Every other
client keeps `application/json`, where such an answer stays 200 (legacy clients read it so). In
both a request error carries no `data` entry (the view leaves it out).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"


def response_type(accept: str | None) -> str:
    """Return the media type to answer a request with `accept` in."""
    if not accept:
        return JSON
    json_q = graphql_q = 0.0
    for part in accept.split(","):
        media, _, parameters = part.partition(";")
        media = media.strip().lower()
        q = _quality(parameters)
        if media == GRAPHQL_RESPONSE:
            graphql_q = max(graphql_q, q)
        elif media in (JSON, "application/*", "*/*"):
            json_q = max(json_q, q)
    return GRAPHQL_RESPONSE if graphql_q > 0 and graphql_q >= json_q else JSON


def _quality(parameters: str) -> float:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(max(float(value.strip()), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0


def as_graphql_response(response: web.StreamResponse) -> web.StreamResponse:
    """Return a JSON answer rewritten as application/graphql-response+json, request errors as 400
    without `data`; anything else (a 304, a page) as it is."""
    if not isinstance(response, web.Response) or response.content_type != JSON:
        return response
    raw = response.body
    if not isinstance(raw, bytes | bytearray):
        return response
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return response
    status = response.status
    if is_request_error(body):
        body.pop("data", None)
        status = 400 if status < 400 else status
        raw = orjson.dumps(body)
    headers = {
        name: value
        for name, value in response.headers.items()
        if name.lower() not in ("content-type", "content-length")
    }
    return web.Response(
        body=raw, status=status, headers=headers, content_type=GRAPHQL_RESPONSE, charset="utf-8"
    )


def is_request_error(body: Any) -> bool:
    """Return whether an answer reports a request error: no data, and errors of no field."""
    if not isinstance(body, dict) or body.get("data") is not None or not body.get("errors"):
        return False
    return all(isinstance(e, dict) and "path" not in e for e in body["errors"])
