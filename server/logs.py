"""Logging for the server: text or JSON lines, each carrying its request's id, written by a thread.

A server writes one access-log line per request. Written on the event loop, a stderr that is
read slowly (or not at all: a full pipe) would stop every request in flight; queued for a writer
thread, it costs the loop a queue put, and a stalled reader costs log lines, not service. Lines
that do not fit in the queue are dropped and counted.

Every record logged while a request is served carries that request's fields (its id, method,
route, the token's subject, the GraphQL operation): the request middleware sets them in a context
variable and a filter copies them onto each record before it is queued.
"""

from __future__ import annotations

import atexit
import contextvars
import copy
import logging
import queue
import sys
from logging.handlers import QueueHandler, QueueListener
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, RequestKey, StreamResponse
from pythonjsonlogger.orjson import OrjsonFormatter

from server.shed import SHED

# Records waiting for the writer thread before new ones are dropped.
QUEUE_SIZE = 10_000
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# The fields of the request being served in this context (None outside requests).
REQUEST_FIELDS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "mim_request_fields", default=None
)

# Where a request keeps its log fields (the same dict REQUEST_FIELDS holds while it is served).
FIELDS_KEY = RequestKey("log_fields", dict)


class DroppingQueueHandler(QueueHandler):
    """Queues records without blocking; when the queue is full, drops and counts them."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The message is made here (its arguments may change later); the traceback is kept apart
        # so that a JSON line carries it in its own field.
        record = copy.copy(record)
        record.msg = record.message = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = record.exc_text or _TRACEBACKS.formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


_TRACEBACKS = logging.Formatter()


class RequestFields(logging.Filter):
    """Copies the fields of the request being served onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = REQUEST_FIELDS.get()
        if fields:
            for name, value in fields.items():
                if value is not None and not hasattr(record, name):
                    setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """The plain format, with the request id (when there is one) at the end of the line."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [request {request_id}]" if request_id else line


def formatter(log_format: str, who: str | None = None) -> logging.Formatter:
    """Return the formatter of a log format (`text` or `json`) for one process."""
    if log_format == "json":
        return OrjsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            timestamp="time",
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "traceback"},
            static_fields={"process": who} if who else None,
        )
    text = TEXT_FORMAT if who is None else TEXT_FORMAT.replace(
        "%(name)s", f"[{who} pid %(process)d] %(name)s"
    )  # fmt: skip
    return TextFormatter(text)


def default_format(stream: Any = None) -> str:
    """Return the format when MIM_LOG_FORMAT is unset: text on a terminal, JSON elsewhere."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure(
    log_format: str, *, who: str | None = None, level: int = logging.INFO
) -> DroppingQueueHandler:
    """Send the root logger's records to stderr through a writer thread; return the handler."""
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=QUEUE_SIZE)
    handler = DroppingQueueHandler(records)
    handler.addFilter(RequestFields())
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(formatter(log_format, who))
    listener = QueueListener(records, writer, respect_handler_level=True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    listener.start()
    atexit.register(_stop, listener, handler)
    return handler


def _stop(listener: QueueListener, handler: DroppingQueueHandler) -> None:
    listener.stop()  # writes what is still queued
    if handler.dropped:
        print(f"{handler.dropped} log records were dropped: stderr was not read", file=sys.stderr)


class AccessLogger(AbstractAccessLogger):
    """One line per request: the request line, status, size and time, with the request's fields."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if request.get(SHED):
            return  # counted, and logged once a second (server/shed.py)
        fields = request.get(FIELDS_KEY) or {}
        version = request.version
        # The path without its query string: a caller may put a token there (and the GraphQL
        # document of a GET is the operation's, named in the fields).
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.6f',
            request.remote,
            request.method,
            request.rel_url.raw_path,
            version.major,
            version.minor,
            response.status,
            response.body_length,
            time,
            extra={
                **{k: v for k, v in fields.items() if v is not None},
                "status": response.status,
                "duration_ms": round(time * 1000, 3),
            },
        )
