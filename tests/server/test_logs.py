"""Logging never stops the service: a stderr nobody reads costs log lines, not requests."""

from __future__ import annotations

import http.client
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.logs import DroppingQueueHandler
from tests.conftest import ENV, make_token

MIM = str(Path(sys.executable).parent / "mim")
# Each request writes an access-log line of about 100 bytes: far more than a 64 KiB pipe holds.
REQUESTS = 1500


def test_records_beyond_the_queue_are_dropped_and_counted() -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=1)
    handler = DroppingQueueHandler(records)
    for n in range(3):
        handler.emit(logging.makeLogRecord({"msg": f"line {n}"}))
    assert (records.qsize(), handler.dropped) == (1, 2)
    assert records.get_nowait().getMessage() == "line 0"


@pytest.mark.skipif(not Path(MIM).exists(), reason="the mim command is not installed")
def test_server_whose_stderr_is_never_read_keeps_answering(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [MIM, "serve", "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # never read: a full pipe would block a writer on the loop
        start_new_session=True,
    )
    connection = None
    try:
        connection = _connect(port)
        body = json.dumps({"query": "{ viewer { subject } }"})
        headers = {
            "Authorization": f"Bearer {make_token('exec')}",
            "Content-Type": "application/json",
        }
        answered = 0
        for _ in range(REQUESTS):
            connection.request("POST", "/graphql", body, headers)
            response = connection.getresponse()
            assert response.status == 200, response.read()
            assert json.loads(response.read())["data"]["viewer"]["subject"] == "tester"
            answered += 1
        assert answered == REQUESTS
    finally:
        if connection is not None:
            connection.close()
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        assert server.stderr is not None
        server.stderr.close()


def _connect(port: int) -> http.client.HTTPConnection:
    """Return a keep-alive connection once the server answers /healthz (each request may take
    up to 10 s: a blocked server fails the test instead of hanging it)."""
    deadline = time.monotonic() + 30
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            return connection
        except OSError:
            connection.close()
            if time.monotonic() > deadline:
                pytest.fail("mim serve did not start")
            time.sleep(0.1)
