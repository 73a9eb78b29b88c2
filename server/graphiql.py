"""The GraphiQL page: GraphiQL from the service's own static files, under the pages' policy.

The page holds no data and no inline script: `mim/graphiql.js` starts GraphiQL, whose
fetcher sends the token written in the Headers tab (server/assets/mim/graphiql.js).
"""

from __future__ import annotations

import secrets
from html import escape

from aiohttp import web

from server import csp, static, vendor

STYLES = (vendor.served("graphiql", "graphiql.min.css"), "mim/graphiql.css")
SCRIPTS = (
    vendor.served("react", "react.production.min.js"),
    vendor.served("react-dom", "react-dom.production.min.js"),
    vendor.served("graphiql", "graphiql.min.js"),
    "mim/graphiql.js",
)
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mim · GraphiQL</title>
<link rel="icon" href="{icon}" type="image/svg+xml">
{styles}
{scripts}
</head>
<body>
<div id="graphiql">Loading GraphiQL…</div>
<noscript>GraphiQL needs JavaScript. Without it, POST your queries to /graphql.</noscript>
</body>
</html>
"""


def page(request: web.Request) -> web.Response:
    """Return the GraphiQL page: public, it renders no data."""
    app = request.app
    nonce = secrets.token_urlsafe(18)
    link = '<link rel="stylesheet" href="{}">'
    script = '<script src="{}" defer></script>'
    ours = '<script src="{}" data-style-nonce="{}" defer></script>'
    scripts = [script.format(escape(static.url(app, name))) for name in SCRIPTS[:-1]]
    scripts.append(ours.format(escape(static.url(app, SCRIPTS[-1])), nonce))
    html = PAGE.format(
        icon=escape(static.url(app, "mim/favicon.svg")),
        styles="\n".join(link.format(escape(static.url(app, name))) for name in STYLES),
        scripts="\n".join(scripts),
    )
    return csp.page(html, policy=policy(nonce))


def policy(nonce: str) -> str:
    """Return the page's policy: the pages' own, and what GraphiQL needs beyond it."""
    return csp.build(
        # GraphiQL's dialogs add a <style> element (react-remove-scroll), which carries the
        # nonce bundles read from __webpack_nonce__ (set by mim/graphiql.js): no other inline
        # style is applied, as it would be with 'unsafe-inline'.
        style_src=f"'self' 'nonce-{nonce}'",
        # Its stylesheet holds its fonts and icons as data: URLs, which cannot run anything.
        img_src="'self' data:",
        font_src="'self' data:",
    )
