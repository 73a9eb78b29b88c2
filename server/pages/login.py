"""Sign-in and sign-out: the form that takes a token, and the end of a session."""

from __future__ import annotations

from aiohttp import web

from registry import sessions
from server.pages import session
from server.pages.views import render

VERIFY: web.AppKey[session.Verify] = web.AppKey("page_verify")
MAX_TOKEN_CHARS = 8192


async def form(request: web.Request) -> web.StreamResponse:
    """Show the sign-in form, or go on to the pages when a session is already open."""
    target = session.safe_next(request.query.get("next"))
    if await sessions.find(request.cookies.get(session.SESSION_COOKIE)) is not None:
        raise web.HTTPSeeOther(target)
    return _form(request, target, error=None, status=200)


def _form(request: web.Request, target: str, *, error: str | None, status: int) -> web.Response:
    token = session.login_csrf(request)
    context = {"title": "Sign in", "next": target, "login_csrf": token, "error": error}
    response = render(request, "login.html", context, status=status)
    session.set_login_csrf(request, response, token)
    return response


async def submit(request: web.Request) -> web.StreamResponse:
    """Start a session for a token the API accepts; re-show the form for anything else."""
    posted = await request.post()
    target = session.safe_next(_text(posted.get("next")))
    if not session.login_csrf_ok(request, _text(posted.get("csrf"))):
        message = "The form had expired. Paste your token again."
        return _form(request, target, error=message, status=400)
    token = _text(posted.get("token")) or ""
    response = web.HTTPSeeOther(target)
    if len(token) > MAX_TOKEN_CHARS or not await session.sign_in(
        request, response, token, request.app[VERIFY]
    ):
        message = "That token was not accepted: it is invalid, expired or not for this service."
        return _form(request, target, error=message, status=400)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    """End the session (a form with the session's CSRF token), then show the sign-in form."""
    posted = await request.post()
    if not session.session_of(request).accepts(_text(posted.get("csrf"))):
        return render(
            request,
            "error.html",
            {"title": "Bad request", "message": "The form had expired: reload and try again."},
            status=400,
        )
    response = web.HTTPSeeOther(session.LOGIN_PATH)
    await session.sign_out(request, response)
    raise response


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
