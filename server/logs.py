"""Logging for the server: records are written by a thread, never by the event loop.

A server writes one access-log line per request. Written on the event loop, a stderr that is
read slowly (or not at all: a full pipe) would stop every request in flight; queued for a writer
thread, it costs the loop a queue put, and a stalled reader costs log lines, not service. Lines
that do not fit in the queue are dropped and counted.
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
from logging.handlers import QueueHandler, QueueListener

# Records waiting for the writer thread before new ones are dropped.
QUEUE_SIZE = 10_000


class DroppingQueueHandler(QueueHandler):
    """Queues records without blocking; when the queue is full, drops and counts them."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


def configure(log_format: str, *, level: int = logging.INFO) -> DroppingQueueHandler:
    """Send the root logger's records to stderr through a writer thread; return the handler."""
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=QUEUE_SIZE)
    handler = DroppingQueueHandler(records)
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(logging.Formatter(log_format))
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
