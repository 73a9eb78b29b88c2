"""gzip for answers larger than 1 KiB, for clients that accept it, on every path.

aiohttp compresses a finished body once, when the answer is sent, and sets Content-Length to the
compressed size. A compressed answer's ETag is weak (`W/"..."`): the two encodings are the same
answer, not the same bytes, and If-None-Match compares weakly (server/revalidation.py), so a
caller holding either form revalidates with a 304. The 304 carries the form the caller sent.
Sizes reveal nothing (BREACH): the credentials are bearer tokens, which a page on another origin
cannot make a browser send, so nobody can mix their own text into someone else's answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Smaller answers fit in a packet or two; compressing them saves nothing worth the work.
MIN_BYTES = 1024


@web.middleware
async def compress(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Compress the answer with gzip when the caller accepts it and it is larger than 1 KiB."""
    response = await handler(request)
    if response.status == 204 or response.prepared or "Content-Encoding" in response.headers:
        return response
    response.headers.add("Vary", "Accept-Encoding")
    if response.status == 304:
        _tag_as_held(request, response)
        return response
    body = response.body if isinstance(response, web.Response) else None
    if (
        isinstance(body, bytes | bytearray)
        and len(body) > MIN_BYTES
        and accepts_gzip(request.headers.get("Accept-Encoding"))
    ):
        response.enable_compression(web.ContentCoding.gzip)
        tag = response.headers.get("ETag")
        if tag is not None and not tag.startswith("W/"):
            response.headers["ETag"] = f"W/{tag}"
    return response


def _tag_as_held(request: web.Request, response: web.StreamResponse) -> None:
    """Give a 304 the weak form of its tag when that is the form the caller holds."""
    tag = response.headers.get("ETag")
    held = {part.strip() for part in request.headers.get("If-None-Match", "").split(",")}
    if tag is not None and f"W/{tag}" in held and tag not in held:
        response.headers["ETag"] = f"W/{tag}"


def accepts_gzip(header: str | None) -> bool:
    """Return whether an Accept-Encoding header takes gzip (RFC 9110 12.5.3: `*` covers it)."""
    qualities: dict[str, float] = {}
    for part in (header or "").split(","):
        coding, *parameters = part.split(";")
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        qualities[coding.strip().lower()] = quality
    for coding in ("gzip", "x-gzip", "*"):
        if coding in qualities:
            return qualities[coding] > 0
    return False
