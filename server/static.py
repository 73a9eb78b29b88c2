"""Static files under /static/: the pages' own scripts and styles, and the vendored packages.

They hold no data, so they are public. Each is read and hashed when first asked for, and kept
in memory with its gzip form, per application. A page links a file with `url(app, name)`, which
adds the content's hash (`?v=`): such a link is cached for a year, since another content gets
another link; a link without the current hash is revalidated (ETag) on every use.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from server import revalidation
from server.compression import MIN_BYTES, accepts_gzip

ROOT = Path(__file__).parent / "assets"
PREFIX = "/static/"
# What is served, by suffix (a licence has none); any other file under ROOT is not.
TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
    ".json": "application/json",
    "": "text/plain",
}
TEXT = {"text/javascript", "text/css", "image/svg+xml", "application/json", "text/plain"}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, no-cache"


@dataclass
class Asset:
    """One file, read and hashed on first use."""

    path: Path
    content_type: str
    _body: bytes | None = field(default=None, repr=False)
    _gzipped: bytes | None = field(default=None, repr=False)
    _version: str = ""

    def body(self) -> bytes:
        if self._body is None:
            self._body = self.path.read_bytes()
            self._version = hashlib.sha256(self._body).hexdigest()[:20]
        return self._body

    def version(self) -> str:
        """Return the content's hash, as `?v=` carries it."""
        self.body()
        return self._version

    async def gzipped(self) -> bytes:
        if self._gzipped is None:
            # Once per file and application, off the event loop (GraphiQL's script is 1 MB).
            self._gzipped = await asyncio.to_thread(gzip.compress, self.body(), mtime=0)
        return self._gzipped


class Assets:
    """The files under a folder that may be served, by their path below it."""

    def __init__(self, root: Path) -> None:
        self.files = {
            path.relative_to(root).as_posix(): Asset(path, TYPES[path.suffix])
            for path in sorted(root.rglob("*"))
            if path.is_file() and path.suffix in TYPES and not path.name.startswith(".")
        }


ASSETS = web.AppKey("assets", Assets)


def add_routes(app: web.Application) -> None:
    """Serve the files under ROOT at /static/ (GET and HEAD)."""
    app[ASSETS] = Assets(ROOT)
    app.router.add_get(PREFIX + "{name:.+}", serve)


def is_static(path: str) -> bool:
    """Return whether a request path is under /static/ (public: no token needed)."""
    return path.startswith(PREFIX)


def url(app: web.Application, name: str) -> str:
    """Return the link to a static file, with its content's hash so that it may be cached."""
    return f"{PREFIX}{name}?v={app[ASSETS].files[name].version()}"


async def serve(request: web.Request) -> web.Response:
    """Answer one static file: gzip-compressed when it is large and the caller accepts gzip."""
    asset = request.app[ASSETS].files.get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound()
    version = asset.version()
    tag = f'"{version}"'
    headers = {
        "ETag": tag,
        "Cache-Control": IMMUTABLE if request.query.get("v") == version else REVALIDATE,
        "X-Content-Type-Options": "nosniff",
    }
    if revalidation.matches(request.headers.get("If-None-Match"), tag, exists=True):
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if asset.content_type in TEXT else None
    body = asset.body()
    if len(body) > MIN_BYTES and accepts_gzip(request.headers.get("Accept-Encoding")):
        headers.update({"Content-Encoding": "gzip", "ETag": f"W/{tag}", "Vary": "Accept-Encoding"})
        body = await asset.gzipped()
    return web.Response(
        body=body, content_type=asset.content_type, charset=charset, headers=headers
    )
