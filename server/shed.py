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

A refusal through aiohttp's request machinery (a Request, a task, the middleware, a prepared
response) costs about four times what writing a ready-made answer does, and in a flood the
refusals are most of the work. So a connection served by `Runner` refuses earlier, as its
bytes arrive (`Refusing`), whenever the middleware would refuse and the answer cannot differ:
the request is complete, ordinary (HTTP/1.1, keep-alive, not HEAD, no upgrade, no Origin when
CORS is on) and nothing else is in flight on the connection, so answers keep their order. Every
other request takes the middleware's path, which stays the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo

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
# A request admitted as it arrived, on a connection served by `Refusing`.
ADMITTED = web.RequestKey("admitted", bool)
LOG_EVERY_SECONDS = 1.0
# Answered whatever the load: liveness, readiness, and the metrics that explain a refusal.
NEVER_SHED = frozenset({"/healthz", "/readyz", "/metrics"})
# How often the event loop's lag is measured (seconds).
LAG_EVERY_SECONDS = 0.005


class Gate:
    """Counts one worker's requests in flight against its bound."""

    __slots__ = (
        "_answer",
        "_answered_at",
        "admit",
        "cors",
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
        *,
        cors: bool = False,
    ) -> None:
        self.limit = limit
        self.admit = limit  # the bound in force: `limit`, lower while refusing on a lagging loop
        self.lag_limit = lag_limit  # seconds; 0: the bound does not adapt
        self.inflight = 0
        self.refusing = False  # whether a request was refused since the last lag measure
        self.on_refusal = on_refusal
        self.unlogged = 0
        self.logged_at = 0.0
        self.cors = cors  # with CORS on, every refusal is the middleware's
        self._answer = b""
        self._answered_at = -1

    def full(self) -> bool:
        """Whether a request arriving now, other than a health check or scrape, is refused."""
        return self.inflight >= self.admit

    def answer(self) -> bytes:
        """The whole HTTP/1.1 refusal, as the middleware's refusal reads on the wire."""
        now = int(time.time())
        if now != self._answered_at:  # a new Date each second
            self._answer = (
                "HTTP/1.1 503 Service Unavailable\r\n"
                f"Retry-After: {RETRY_AFTER_SECONDS}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(BUSY_BODY)}\r\n"
                f"Date: {formatdate(now, usegmt=True)}\r\n"
                "Cache-Control: no-store\r\n\r\n"
            ).encode() + BUSY_BODY
            self._answered_at = now
        return self._answer

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
    if request.get(ADMITTED):  # counted in flight as it arrived (Refusing)
        try:
            return await handler(request)
        finally:
            request[ADMITTED] = False
            gate.inflight -= 1
    if gate.full() and request.path not in NEVER_SHED:
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


def freeze_heap() -> None:
    """Leave the heap built at startup (modules, schema, plans) out of every later collection.

    A full collection of a worker's startup heap takes about 40 ms: a pause every request in a
    flood would wait behind. Once frozen, it takes about 1 ms. Called once a worker is set up.
    """
    gc.collect()
    gc.freeze()


class Refusing(RequestHandler):
    """An HTTP connection that admits or refuses a request as its bytes arrive.

    aiohttp's parser still frames every request, so this connection never disagrees with it on
    where a request ends. The first request to arrive on an idle connection (nothing in flight or
    queued on it) is decided at once. With room, it is counted in flight right away, not a loop
    turn or two later when its handler starts, so that the requests of one busy loop turn cannot
    all find room. Without room, it is dropped before a Request exists for it, and the
    ready-made answer is written in its place, if that answer is the one the middleware would
    give (`_refusable`) and the client reads what it is sent. Every other request is queued as
    aiohttp queues it, for the middleware to decide in its turn. Depends on aiohttp's
    RequestHandler internals (aiohttp is pinned, and tests/server/test_shed.py holds both
    refusals to the same answer, byte for byte).
    """

    __slots__ = ("_arrived", "_gate")

    def __init__(self, manager: web.Server, *, gate: Gate, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = gate
        self._arrived: object = None  # the message counted in flight as it arrived, until handled

    def data_received(self, data: bytes) -> None:
        if (
            self._force_close
            or self._close
            or self._parser is None
            or self._payload_parser is not None
            or self._upgraded
        ):
            super().data_received(data)  # no requests to parse: RequestHandler's own course
            return
        gate = self._gate
        waiter = self._waiter
        # Nothing in flight or queued on this connection: an answer written now is in its place.
        idle = waiter is not None and not waiter.done()
        queued = 0
        while True:
            try:
                messages, upgraded, tail = self._parser.feed_data(data)
            except HttpProcessingError as exc:
                messages = [(_ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD)]
                upgraded, tail = False, b""
            refused = 0
            for message, payload in messages:
                if idle and not queued:
                    if not gate.full():
                        if not isinstance(message, _ErrInfo):
                            gate.inflight += 1
                            self._arrived = message
                    elif self._refusable(message, payload):
                        self._parser.message_consumed()
                        gate.refused()
                        self.transport.write(gate.answer())  # type: ignore[union-attr]
                        self._next_keepalive_close_time = (
                            self._loop.time() + self._keepalive_timeout
                        )
                        refused += 1
                        continue
                # queued as RequestHandler.data_received queues it
                self._request_count += 1
                self._messages.append((message, payload))
                queued += 1
            self._upgraded = upgraded
            if upgraded and tail:
                self._message_tail = tail
            # The parser holds back what follows its 32nd unanswered request: ask again for
            # what the refused ones made room for.
            if not refused or upgraded:
                break
            data = b""
        if queued:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if not self._buffer_paused and len(self._messages) >= self._max_msg_queue_size:
                self._pause_reading_for_buffer()

    def _refusable(self, message: Any, payload: StreamReader) -> bool:
        """Whether the ready-made answer is the middleware's refusal, and can be written now."""
        return (
            not isinstance(message, _ErrInfo)  # a request the parser refused is answered by it
            and message.version == HttpVersion11  # the answer is HTTP/1.1, kept alive
            and not message.should_close
            and not message.upgrade
            and message.method != "HEAD"  # whose answer has no body
            and (payload is EMPTY_PAYLOAD or payload.is_eof())  # nothing more to read for it
            and "Expect" not in message.headers  # answered before the middleware
            and message.url.path not in NEVER_SHED
            and not self._gate.cors  # whose answers vary by route and origin
            # The client reads what it is sent: the answer does not wait in the worker's memory.
            and not self._paused
            and self.transport is not None
            and not self.transport.get_write_buffer_size()
        )

    async def _handle_request(
        self,
        request: web.BaseRequest,
        start_time: float | None,
        request_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        # RequestHandler.start handles each queued message in its turn, here.
        admitted = self._arrived is not None and request._message is self._arrived
        if admitted:
            self._arrived = None
            request[ADMITTED] = True  # the middleware gives its place back when it is answered
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            if admitted and request[ADMITTED]:  # answered before the middleware
                request[ADMITTED] = False
                self._gate.inflight -= 1

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._arrived is not None:  # never handled: its place is free again
            self._arrived = None
            self._gate.inflight -= 1
        super().connection_lost(exc)


class Server(web.Server):
    """aiohttp's low-level server, with connections that refuse early (`Refusing`)."""

    def __init__(self, *args: Any, gate: Gate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = gate

    def __call__(self) -> RequestHandler:
        return Refusing(self, gate=self._gate, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """aiohttp's application runner, serving through `Server`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        import os

        if os.environ.get("EXP_PLAIN"):
            return server
        return Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            gate=self.app[GATE],
            **server._kwargs,
        )
