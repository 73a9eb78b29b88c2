"""Sign-in to the pages: a pasted token starts a database session held by an opaque cookie.

The token is checked exactly as the API checks a bearer token and is then forgotten: the cookie
holds a random session id, the table its hash (registry/sessions.py). Forms carry a CSRF token:
the session's own, or before sign-in a random one that must match its cookie.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

from aiohttp import web

from registry import policy, sessions
from registry.errors import Unauthenticated
from registry.model import Viewer
from registry.sessions import Session
from server.http import VIEWER

SESSION_COOKIE = "mim_session"
LOGIN_CSRF_COOKIE = "mim_login_csrf"
LOGIN_PATH = "/ui/login"
HOME = "/ui/kpis"
SESSION = web.RequestKey("page_session", Session)
# Reached without a session: the sign-in form itself.
OPEN_PATHS = frozenset({LOGIN_PATH})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Verify = Callable[[str], Awaitable[tuple[Viewer, float]]]


def is_page(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give a page the viewer of its session, or send the browser to the sign-in form."""
    if request.path in OPEN_PATHS:
        return await handler(request)
    session = await sessions.find(request.cookies.get(SESSION_COOKIE))
    if session is None:
        if request.method in ("GET", "HEAD"):
            raise web.HTTPSeeOther(f"{LOGIN_PATH}?next={quote(request.path_qs, safe='/')}")
        raise web.HTTPSeeOther(LOGIN_PATH)
    request[SESSION] = session
    request[VIEWER] = session.viewer
    return await handler(request)


def session_of(request: web.Request) -> Session:
    session: Session = request[SESSION]
    return session


def safe_next(raw: str | None) -> str:
    """Return where to go after sign-in: a page of ours, never another site."""
    if not raw or not raw.startswith("/ui/") or raw.startswith("//") or "\\" in raw:
        return HOME
    if ".." in raw or "%2e" in raw.lower():  # dot segments would climb out of /ui/
        return HOME
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or parts.path in OPEN_PATHS:
        return HOME
    return raw


def login_csrf(request: web.Request) -> str:
    """Return the sign-in form's CSRF token: its cookie's, or a new one."""
    current = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return current if 20 <= len(current) <= 64 else secrets.token_urlsafe(32)


def set_login_csrf(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        path=LOGIN_PATH,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        max_age=3600,
    )


def login_csrf_ok(request: web.Request, sent: str | None) -> bool:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
    return bool(cookie and sent) and hmac.compare_digest(str(cookie).encode(), str(sent).encode())


async def sign_in(
    request: web.Request, response: web.StreamResponse, token: str, verify: Verify
) -> bool:
    """Start a session for a token the API would accept, set its cookie, and return True; False
    (and nothing started) for any other token."""
    try:
        viewer, expires = await verify(f"Bearer {token.strip()}")
    except Unauthenticated:
        return False
    if not policy.may(viewer, policy.Action.READ):
        return False  # a token naming no known persona could open no page
    expires_at = datetime.fromtimestamp(expires, UTC)
    session_id, session = await sessions.start(viewer=viewer, token_expires_at=expires_at)
    seconds = max(0, int((session.expires_at - datetime.now(UTC)).total_seconds()))
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        path="/ui",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        max_age=seconds,
        expires=session.expires_at.strftime("%a, %d %b %Y %H:%M:%S GMT"),
    )
    response.del_cookie(LOGIN_CSRF_COOKIE, path=LOGIN_PATH)
    return True


async def sign_out(request: web.Request, response: web.StreamResponse) -> None:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        await sessions.end(session_id)
    response.del_cookie(SESSION_COOKIE, path="/ui")
