"""The pages under /ui/: the KPI Source of Truth, a page per KPI and incident scorecards, rendered
on the server for whoever signs in (server/pages/session.py), from the API's own services.

Nothing on a page comes from another origin: the stylesheet is ours (/static/) and charts are
SVG drawn here (server/pages/charts.py); the Content-Security-Policy allows only this origin.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from registry.errors import AppError
from server import csp, static
from server.pages import format, login, session, views

HERE = Path(__file__).parent
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
    # The stylesheet and icon are the service's own (server/static.py), linked with their hash.
    env.globals["stylesheet"] = static.url(app, "mim/ui.css")
    env.globals["icon"] = static.url(app, "mim/favicon.svg")
    app.router.add_get("/ui", home)
    app.router.add_get("/ui/", home)
    app.router.add_get(session.LOGIN_PATH, login.form)
    app.router.add_post(session.LOGIN_PATH, login.submit)
    app.router.add_post("/ui/logout", login.logout)
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
    except web.HTTPMethodNotAllowed as refusal:
        response = views.render(
            request,
            "error.html",
            {"title": "Not allowed", "message": f"This page answers {refusal.headers['Allow']}."},
            status=405,
        )
        response.headers["Allow"] = refusal.headers["Allow"]
        return response
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


async def _page_headers(request: web.Request, response: web.StreamResponse) -> None:
    if not session.is_page(request.path):
        return
    response.headers["Content-Security-Policy"] = csp.POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
