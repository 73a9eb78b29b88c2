"""CORS for browser apps on other origins: those MIM_CORS_ORIGINS lists, on /graphql and the REST
mirror.

A browser sends its preflight without the token, so `preflight` answers it before `authenticate`
runs; it reads nothing. Every other answer on those routes names a listed caller's origin in
`Access-Control-Allow-Origin` (`mark`, 401s and 503s included, so that the app can read why). An
origin not on the list gets no CORS header, and its preflight the handling any OPTIONS gets (401
without a token, 405 with one), as if CORS were off. Tokens travel as bearer tokens, not
cookies: credentials are never allowed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOW_HEADERS = "Authorization, Content-Type, If-None-Match, X-Request-ID"
EXPOSE_HEADERS = "ETag, X-Request-ID"
# How long a browser may reuse a preflight's answer.
MAX_AGE_SECONDS = 600


class Cors:
    """The listed origins, and the methods each CORS route allows them."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origins)
        self.methods: dict[web.AbstractResource, str] = {}

    def allow(self, resource: web.AbstractResource, methods: str) -> None:
        """Open a route to the listed origins for these methods (`GET, POST`)."""
        self.methods[resource] = methods

    async def methods_at(self, request: web.Request) -> str | None:
        """Return the methods the CORS route at this request's path allows (None: no such route).

        A preflight's OPTIONS resolves to no route, so the path is matched against each one.
        """
        for resource, methods in self.methods.items():
            _, allowed = await resource.resolve(request)
            if allowed:
                return methods
        return None


CORS = web.AppKey("cors", Cors)


def setup(app: web.Application, origins: Iterable[str], methods: Mapping[str, str]) -> None:
    """Open the routes at these paths (as declared: `/kpis/{slug}`) to the listed origins, for
    these methods; `preflight` must be among the app's middlewares, before authentication."""
    cors = Cors(origins)
    for resource in app.router.resources():
        if resource.canonical in methods:
            cors.allow(resource, methods[resource.canonical])
    missing = set(methods) - {resource.canonical for resource in cors.methods}
    if missing:
        raise ValueError(f"no routes at {sorted(missing)}")
    app[CORS] = cors
    app.on_response_prepare.append(mark)


@web.middleware
async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a listed origin's preflight to a CORS route, without authentication."""
    cors = request.app[CORS]
    origin = request.headers.get("Origin")
    if (
        request.method != "OPTIONS"
        or "Access-Control-Request-Method" not in request.headers
        or origin not in cors.origins
        or (methods := await cors.methods_at(request)) is None
    ):
        return await handler(request)
    # The browser checks the requested method and headers against these lists itself.
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": str(MAX_AGE_SECONDS),
            "Vary": "Origin",
        },
    )


async def mark(request: web.Request, response: web.StreamResponse) -> None:
    """Let a listed origin read an answer on a CORS route (on_response_prepare)."""
    cors = request.app[CORS]
    if request.match_info.route.resource not in cors.methods:
        return  # another route, an unknown one, or a method the route has not
    # The answer differs by origin, whoever asks: caches must keep one per origin.
    response.headers.add("Vary", "Origin")
    origin = request.headers.get("Origin")
    if origin in cors.origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
