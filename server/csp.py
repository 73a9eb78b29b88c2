"""The Content-Security-Policy of the pages the service renders (GraphiQL, /ui/).

Everything a page loads comes from the service itself: no inline script or style, no other
origin, no framing. A page that needs more says so with `build` (GraphiQL: server/graphiql.py).
"""

from __future__ import annotations

from aiohttp import web

DIRECTIVES: dict[str, str] = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self'",
    "font-src": "'self'",
    "connect-src": "'self'",
    "object-src": "'none'",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
}
POLICY = "; ".join(f"{name} {value}" for name, value in DIRECTIVES.items())


def build(**changes: str) -> str:
    """Return the policy with some directives changed (`img_src="'self' data:"`)."""
    directives = DIRECTIVES | {name.replace("_", "-"): value for name, value in changes.items()}
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def page(html: str, *, status: int = 200, policy: str = POLICY) -> web.Response:
    """Return an HTML page under the policy, never cached, never sniffed, never framed."""
    return web.Response(
        status=status,
        text=html,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": policy,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )
