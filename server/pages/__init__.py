"""The pages under /ui/: the KPI Source of Truth, a page per KPI and incident scorecards, rendered
on the server for whoever signs in (server/pages/session.py), from the API's own services.

Nothing on a page comes from another origin: the stylesheet is ours and charts are SVG drawn
here (server/pages/charts.py); the Content-Security-Policy allows only this origin.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from registry.errors import AppError
from server.pages import format, login, session, views

HERE = Path(__file__).parent
CSS = (HERE / "static" / "ui.css").read_bytes()
ICON = (HERE / "static" / "icon.svg").read_bytes()
CSS_VERSION = hashlib.sha256(CSS).hexdigest()[:16]
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
STATUS_OF = {"FORBIDDEN": 403, "BAD_USER_INPUT": 400, "NOT_FOUND": 404}


def setup(app: web.Application, verify: session.Verify) -> None:
    """Add the pages' routes and their template environment to the app; `verify` checks a
    sign-in's token as the API checks a bearer token."""
    app[login.VERIFY] = verify
    app[views.CATALOGUES] = views.Catalogues()
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        number=format.number,
        target=format.target,
        target_scope=format.target_scope,
        moment=format.moment,
        day=format.day,
        cadence=format.cadence,
        iso=format.iso,
    )
    env.globals["css_version"] = CSS_VERSION
    app.router.add_get("/ui", home)
    app.router.add_get("/ui/", home)
    app.router.add_get(session.LOGIN_PATH, login.form)
    app.router.add_post(session.LOGIN_PATH, login.submit)
    app.router.add_post("/ui/logout", login.logout)
    app.router.add_get("/ui/static/ui.css", static(CSS, "text/css"))
    app.router.add_get("/ui/static/icon.svg", static(ICON, "image/svg+xml"))
    app.router.add_get("/ui/kpis", views.catalogue)
    app.router.add_get("/ui/kpis/{slug}", views.kpi_page)
    app.router.add_get("/ui/incidents", views.incident_list)
    app.router.add_get("/ui/incidents/{id}", views.incident_page)
    app.on_response_prepare.append(_page_headers)


is_page = session.is_page


async def handle(request: web.Request, handler: session.Handler) -> web.StreamResponse:
    """Run a page for its session's viewer; a coded error becomes a page with its status."""
    try:
        return await session.authenticate(request, handler)
    except web.HTTPNotFound:
        return views.not_found(request)  # no such route under /ui/
    except AppError as error:
        status = STATUS_OF.get(error.code, 500)
        if status == 404:
            return views.not_found(request)
        title = {403: "Not allowed", 400: "Bad request"}.get(status, "Something went wrong")
        return views.render(
            request, "error.html", {"title": title, "message": error.message}, status=status
        )


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(session.HOME)


def static(body: bytes, content_type: str) -> session.Handler:
    """Return a handler for one of the pages' own files (kept in memory; tiny)."""

    async def serve(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=body,
            content_type=content_type,
            charset="utf-8",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    return serve


async def _page_headers(request: web.Request, response: web.StreamResponse) -> None:
    if not session.is_page(request.path):
        return
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
