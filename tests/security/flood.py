"""An HTTP/1.1 load generator lean enough to keep an open-loop schedule of thousands a second.

The overload test (test_overload.py) runs it as a process of its own, on a core of its own where
the machine has two, so that the load it sends is not slowed by the worker it measures, nor the
worker by it. One thread, non-blocking sockets and epoll: no asyncio streams, futures or tasks per
request, about a tenth of their CPU per request, so that one core sends 10,000 requests a second
and its schedule slips by microseconds, not by the hundreds of milliseconds an overloaded driver
would add to every latency it reports.

Two ways to send, as wrk and wrk2 do:

- closed loop (no `--rate`): every connection sends its next request as soon as the last is
  answered, the latency counted from the send;
- open loop (`--rate R`): R requests a second in all, every connection its share, evenly spaced;
  the latency is counted from when the request was due, so that an answer that comes late also
  counts against the requests it delayed (no coordinated omission).

`--health-every S` adds one connection sending `GET /healthz` every S seconds, timed apart.

It prints one JSON object: the latencies of the 200s and of the coded 503s (seconds), anything
else answered, the digests of the distinct 200 bodies, broken connections, and how far its own
sends fell behind schedule (so that a reader can tell the figures are the worker's, not its own).

    python -m tests.security.flood --port 8080 --token T --connections 500 --seconds 3 --rate 7000
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import re
import select
import socket
import sys
import time
from dataclasses import dataclass, field

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
RETRY_AFTER = re.compile(rb"\r\nretry-after:\s*1\r\n", re.IGNORECASE)
HEALTH = -1  # the index of the health probe's connection


@dataclass
class Outcome:
    admitted: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    other: list[tuple[int, str]] = field(default_factory=list)
    digests: set[str] = field(default_factory=set)
    health: list[tuple[int, float]] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)  # how late each open-loop send went out
    broken: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "admitted": self.admitted,
            "refused": self.refused,
            "other": self.other[:20],
            "other_count": len(self.other),
            "digests": sorted(self.digests),
            "health": self.health,
            "lag": self.lag,
            "broken": self.broken,
        }


def graphql_request(port: int, token: str, document: bytes) -> bytes:
    return (
        f"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(document)}\r\n\r\n"
    ).encode() + document


def is_coded_refusal(head: bytes, body: bytes) -> bool:
    """A 503 with Retry-After and the UNAVAILABLE code (the status is checked by the caller)."""
    if RETRY_AFTER.search(head + b"\r\n") is None:
        return False
    try:
        return bool(json.loads(body)["errors"][0]["extensions"]["code"] == "UNAVAILABLE")
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def run(
    port: int,
    request: bytes,
    connections: int,
    seconds: float,
    rate: float | None = None,
    health_every: float | None = None,
) -> Outcome:
    outcome = Outcome()
    health_request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    poller = select.epoll()
    sockets: dict[int, socket.socket] = {}
    index: dict[int, int] = {}  # fd -> connection number
    buffers: dict[int, bytes] = {}
    started: dict[int, float] = {}  # connection -> when its request in flight was due (or sent)
    numbers = list(range(connections)) + ([HEALTH] if health_every else [])
    for number in numbers:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            outcome.broken += 1
            continue
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sockets[number] = sock
        index[sock.fileno()] = number
        buffers[number] = b""
        poller.register(sock.fileno(), select.EPOLLIN)

    interval = connections / rate if rate else 0.0
    began = time.perf_counter()
    end = began + seconds
    due: list[tuple[float, int]] = []  # (when, connection) for connections with nothing in flight
    for number in sockets:
        if number == HEALTH:
            due.append((began, HEALTH))
        else:
            due.append((began + interval * number / connections, number))
    heapq.heapify(due)

    def close(number: int) -> None:
        sock = sockets.pop(number)
        poller.unregister(sock.fileno())
        sock.close()

    while sockets and (started or (due and due[0][0] < end)):
        now = time.perf_counter()
        while due and due[0][0] <= now:
            when, number = heapq.heappop(due)
            if when >= end or number not in sockets:
                continue
            try:
                sock = sockets[number]
                payload = health_request if number == HEALTH else request
                if sock.send(payload) != len(payload):
                    raise OSError("short send")
            except OSError:
                outcome.broken += 1
                close(number)
                continue
            if rate and number != HEALTH:
                outcome.lag.append(now - when)
                started[number] = when
            else:
                started[number] = now
        timeout = min(max(due[0][0] - now, 0.0), 0.05) if due else 0.05
        for fd, _ in poller.poll(timeout):
            number = index[fd]
            if number not in sockets:
                continue
            try:
                data = sockets[number].recv(1 << 18)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                outcome.broken += 1
                started.pop(number, None)
                close(number)
                continue
            buffer = buffers[number] + data
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                buffers[number] = buffer
                continue
            head = buffer[:head_end]
            length = CONTENT_LENGTH.search(head + b"\r\n")
            need = head_end + 4 + (int(length.group(1)) if length else 0)
            if len(buffer) < need:
                buffers[number] = buffer
                continue
            done = time.perf_counter()
            body, buffers[number] = buffer[head_end + 4 : need], buffer[need:]
            status = int(head[9:12])
            sent = started.pop(number)
            took = done - sent
            if number == HEALTH:
                outcome.health.append((status, took))
                heapq.heappush(due, (done + (health_every or 0.0), HEALTH))
                continue
            if status == 200:
                outcome.admitted.append(took)
                outcome.digests.add(hashlib.sha256(body).hexdigest())
            elif status == 503 and is_coded_refusal(head, body):
                outcome.refused.append(took)
            else:
                outcome.other.append((status, body[:200].decode("utf-8", "replace")))
            if rate:
                # The next request is due one interval after this one was; if that is past, it
                # goes at once and its latency counts the wait.
                heapq.heappush(due, (sent + interval, number))
            else:
                heapq.heappush(due, (done, number))
    for number in list(sockets):
        close(number)
    poller.close()
    return outcome


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--document", default='{"query": "{ kpis { slug name units } }"}')
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=None, help="requests a second in all")
    parser.add_argument("--health-every", type=float, default=None)
    parser.add_argument("--cpu", type=int, default=None, help="run on this core only")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    request = graphql_request(args.port, args.token, args.document.encode())
    outcome = run(args.port, request, args.connections, args.seconds, args.rate, args.health_every)
    json.dump(outcome.as_json(), sys.stdout)


if __name__ == "__main__":
    main()
