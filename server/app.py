"""The aiohttp application: GraphQL, the REST mirror, health, and authentication."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from strawberry.aiohttp.views import GraphQLView

from schema import schema
from schema.context import Context
from server import db, health, rest
from server.auth import TokenVerifier
from server.config import Settings
from server.errors import Unauthenticated
from server.http import VIEWER, error_response, viewer_of

log = logging.getLogger("mim.http")

SETTINGS = web.AppKey("settings", Settings)
VERIFIER = web.AppKey("verifier", TokenVerifier)

UNAUTHENTICATED_BODY = json.dumps(
    {
        "errors": [
            {
                "message": "Authentication required: send a valid bearer token.",
                "extensions": {"code": "UNAUTHENTICATED"},
            }
        ]
    }
)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_ide_page(request: web.Request) -> bool:
    return request.method == "GET" and request.path == "/graphql" and "query" not in request.query


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse every request without a valid token before any handler runs."""
    if request.path in PUBLIC_PATHS or _is_ide_page(request):
        return await handler(request)
    try:
        request[VIEWER] = await request.app[VERIFIER].viewer(request.headers.get("Authorization"))
    except Unauthenticated:
        return web.Response(
            status=401,
            text=UNAUTHENTICATED_BODY,
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="mim"'},
        )
    return await handler(request)


@web.middleware
async def mask_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer an unexpected exception with a coded INTERNAL error, logging the detail here."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(500, "INTERNAL", "Internal error.")


class MimGraphQLView(GraphQLView[Context, None]):
    async def get_context(self, request: web.Request, response: Any) -> Context:
        return Context(viewer=viewer_of(request))


async def _database(app: web.Application) -> AsyncIterator[None]:
    await db.open_engine()
    yield
    await db.close_engine()


def create_app(settings: Settings) -> web.Application:
    """Return the service's application for these settings."""
    app = web.Application(middlewares=[mask_faults, authenticate])
    app[SETTINGS] = settings
    app[VERIFIER] = TokenVerifier(settings)
    app.cleanup_ctx.append(_database)
    view = MimGraphQLView(schema=schema, graphql_ide="graphiql" if settings.graphiql else None)
    app.router.add_route("GET", "/graphql", view)
    app.router.add_route("POST", "/graphql", view)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    rest.add_routes(app)
    return app
