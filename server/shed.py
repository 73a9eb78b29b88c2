"""Overload is shed, not queued: a bound on the requests one worker serves at once.

Beyond `MIM_MAX_INFLIGHT` requests in flight, a request is answered at once with 503, a coded
`UNAVAILABLE` error and `Retry-After`, before any token is verified or statement run: a flood
then costs the admitted requests little, instead of every request waiting in line behind it
while its latency grows without bound. Health checks and scrapes are never shed, so an
orchestrator and Prometheus see an overloaded worker as alive and can tell why it refuses.

A worker's one core is shared by the requests it serves and those it refuses: once it refuses,
each refusal takes time from the admitted, and a fixed bound lets every loop turn grow with the
flood. So while the worker refuses, the bound in force adapts, as TCP's window does, to the
event loop's lag (how late a timer fires: how long every ready callback waits for its turn):
halved when the lag passes `MIM_SHED_LAG` milliseconds, raised by one, up to `MIM_MAX_INFLIGHT`,
whenever it is below. A worker that refuses nothing keeps its whole bound, however busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

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
# How often the event loop's lag is measured (seconds).
LAG_EVERY_SECONDS = 0.005


class Gate:
    """Counts one worker's requests in flight against its bound."""

    __slots__ = (
        "admit",
        "inflight",
        "lag_limit",
        "limit",
        "logged_at",
        "on_refusal",
        "refusing",
        "unlogged",
    )

    def __init__(
        self,
        limit: int,
        on_refusal: Callable[[], None] | None = None,
        lag_limit: float = 0.0,
    ) -> None:
        self.limit = limit
        self.admit = limit  # the bound in force: `limit`, lower while refusing on a lagging loop
        self.lag_limit = lag_limit  # seconds; 0: the bound does not adapt
        self.inflight = 0
        self.refusing = False  # whether a request was refused since the last lag measure
        self.on_refusal = on_refusal
        self.unlogged = 0
        self.logged_at = 0.0

    def lagged(self, lag: float) -> None:
        """Adapt the bound in force to one measure of the event loop's lag (in seconds)."""
        if lag <= self.lag_limit:
            self.admit = min(self.limit, self.admit + 1)
        elif self.refusing:
            self.admit = max(1, self.admit // 2)
        self.refusing = False

    def refused(self) -> None:
        """Count a refusal; say how many there were at most once a second."""
        self.refusing = True
        if self.on_refusal is not None:
            self.on_refusal()
        self.unlogged += 1
        now = time.monotonic()
        if now - self.logged_at >= LOG_EVERY_SECONDS:
            log.warning(
                "shed %d requests: %d in flight, the bound in force (MIM_MAX_INFLIGHT %d)",
                self.unlogged,
                self.inflight,
                self.limit,
            )
            self.unlogged, self.logged_at = 0, now


GATE = web.AppKey("inflight_gate", Gate)


async def watch_lag(app: web.Application) -> AsyncIterator[None]:
    """Measure the event loop's lag while the application serves, adapting its gate's bound."""
    gate = app[GATE]
    if gate.lag_limit <= 0:
        yield
        return
    watching = asyncio.create_task(_watch(gate))
    yield
    watching.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watching


async def _watch(gate: Gate) -> None:
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(LAG_EVERY_SECONDS)
        gate.lagged(loop.time() - started - LAG_EVERY_SECONDS)


@web.middleware
async def shed(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve the request if the worker has room for it; refuse it at once if not.

    The outermost middleware: a refusal costs no request id, span, token check or log line.
    """
    gate = request.app[GATE]
    if gate.inflight >= gate.admit and request.path not in NEVER_SHED:
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
