"""Helpers shared by the HTTP handlers: the proven viewer and JSON error bodies."""

from __future__ import annotations

from aiohttp import web

from registry.model import Viewer

VIEWER = web.RequestKey("viewer", Viewer)


def viewer_of(request: web.Request) -> Viewer:
    """Return the viewer the authentication middleware proved for this request."""
    viewer: Viewer = request[VIEWER]
    return viewer


def error_response(status: int, code: str, message: str) -> web.Response:
    """Return a JSON error body in the GraphQL errors shape."""
    body = {"errors": [{"message": message, "extensions": {"code": code}}]}
    return web.json_response(body, status=status)
