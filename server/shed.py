"""Overload is shed, not queued: a bound on the requests one worker serves at once.

Beyond `MIM_MAX_INFLIGHT` requests in flight, a request is answered at once with 503, a coded
`UNAVAILABLE` error and `Retry-After`, before any token is verified or statement run: a flood
then costs the admitted requests little, instead of every request waiting in line behind it
while its latency grows without bound. Health checks and scrapes are never shed, so an
orchestrator and Prometheus see an overloaded worker as alive and can tell why it refuses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from server.http import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BUSY_MESSAGE = "The service is busy; retry shortly."
RETRY_AFTER_SECONDS = "1"
# Answered whatever the load: liveness, readiness, and the metrics that explain a refusal.
NEVER_SHED = frozenset({"/healthz", "/readyz", "/metrics"})


class Gate:
    """Counts one worker's requests in flight against its bound."""

    __slots__ = ("inflight", "limit", "on_refusal")

    def __init__(self, limit: int, on_refusal: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.inflight = 0
        self.on_refusal = on_refusal


GATE = web.AppKey("inflight_gate", Gate)


@web.middleware
async def shed(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve the request if the worker has room for it; refuse it at once if not."""
    gate = request.app[GATE]
    if gate.inflight >= gate.limit and request.path not in NEVER_SHED:
        if gate.on_refusal is not None:
            gate.on_refusal()
        response = error_response(503, "UNAVAILABLE", BUSY_MESSAGE)
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
        return response
    gate.inflight += 1
    try:
        return await handler(request)
    finally:
        gate.inflight -= 1
