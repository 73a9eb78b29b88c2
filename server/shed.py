"""Overload is shed, not queued: a bound on the requests one worker serves at once.

Beyond `MIM_MAX_INFLIGHT` requests in flight, a request is answered at once with 503, a coded
`UNAVAILABLE` error and `Retry-After`, before any token is verified or statement run: a flood
then costs the admitted requests little, instead of every request waiting in line behind it
while its latency grows without bound. Health checks and scrapes are never shed, so an
orchestrator and Prometheus see an overloaded worker as alive and can tell why it refuses.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger("mim.shed")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BUSY_MESSAGE = "The service is busy; retry shortly."
RETRY_AFTER_SECONDS = "1"
BUSY_BODY = json.dumps(
    {"errors": [{"message": BUSY_MESSAGE, "extensions": {"code": "UNAVAILABLE"}}]}
).encode()
# A refused request is marked so: the access log leaves it out (one warning a second says how
# many there were) and nothing else is done for it; the refusal is counted in the metrics.
SHED = web.RequestKey("shed", bool)
LOG_EVERY_SECONDS = 1.0
# Answered whatever the load: liveness, readiness, and the metrics that explain a refusal.
NEVER_SHED = frozenset({"/healthz", "/readyz", "/metrics"})


class Gate:
    """Counts one worker's requests in flight against its bound."""

    __slots__ = ("inflight", "limit", "logged_at", "on_refusal", "unlogged")

    def __init__(self, limit: int, on_refusal: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.inflight = 0
        self.on_refusal = on_refusal
        self.unlogged = 0
        self.logged_at = 0.0

    def refused(self) -> None:
        """Count a refusal; say how many there were at most once a second."""
        if self.on_refusal is not None:
            self.on_refusal()
        self.unlogged += 1
        now = time.monotonic()
        if now - self.logged_at >= LOG_EVERY_SECONDS:
            log.warning(
                "shed %d requests: %d in flight, the bound (MIM_MAX_INFLIGHT)",
                self.unlogged,
                self.inflight,
            )
            self.unlogged, self.logged_at = 0, now


GATE = web.AppKey("inflight_gate", Gate)


@web.middleware
async def shed(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve the request if the worker has room for it; refuse it at once if not.

    The outermost middleware: a refusal costs no request id, span, token check or log line.
    """
    gate = request.app[GATE]
    if gate.inflight >= gate.limit and request.path not in NEVER_SHED:
        gate.refused()
        request[SHED] = True
        return web.Response(
            body=BUSY_BODY,
            status=503,
            content_type="application/json",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    gate.inflight += 1
    try:
        return await handler(request)
    finally:
        gate.inflight -= 1
