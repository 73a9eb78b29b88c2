"""`mim serve --workers N`: N server processes on one port (SO_REUSEPORT) under one supervisor.

The supervisor reads the settings once and hands them to every worker, so all of them verify tokens
with the same key. Each worker is a fresh interpreter with two pipes to the supervisor: its import
path and the settings arrive on its stdin, which it then watches for EOF (the supervisor is gone:
stop), and it writes "ready" on a status pipe once it listens, whose EOF says it has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from server.config import Settings

log = logging.getLogger("mim.workers")

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
# Past the request time limit, the seconds a stopping worker gets before it is killed.
STOP_MARGIN_SECONDS = 5.0
# -P and the supervisor's own sys.path: a `server` package in the working directory is not ours.
BOOTSTRAP = (
    "import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); "
    "from server.workers import worker_main; worker_main()"
)


class WorkerFailed(Exception):
    """A worker exited while the service was meant to be running."""


@dataclass
class Worker:
    number: int
    process: subprocess.Popen[bytes]
    status: int  # the read end of the worker's status pipe


def check_address(host: str, port: int) -> None:
    """Raise OSError unless every address `host` names is free to listen on at `port`."""
    for family, kind, proto, _, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        # Bound as asyncio binds, but without SO_REUSEPORT: a listener already there, even one
        # that shares its port, makes this fail instead of silently splitting the traffic.
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


def serve(settings: Settings, *, host: str, port: int, workers: int) -> None:
    """Run `workers` server processes until SIGINT or SIGTERM; raise WorkerFailed if one exits."""
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    # The handlers do nothing: the wake-up socket carries the signal to the supervising loop.
    previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    previous = {signum: signal.signal(signum, lambda *_: None) for signum in STOP_SIGNALS}
    running: list[Worker] = []
    cleanup = contextlib.ExitStack()
    try:
        if settings.metrics:
            cleanup.enter_context(_metrics_directory())
        # Blocked while starting, the workers inherit the mask: they choose their own handlers
        # before any signal reaches them, and one that arrives here waits for the loop below.
        with _blocked(STOP_SIGNALS):
            for number in range(1, workers + 1):
                running.append(_start(number, settings, host, port))
        _supervise(running, wake_r, f"http://{host}:{port}")
    finally:
        _stop(running, grace=settings.request_timeout_seconds + STOP_MARGIN_SECONDS)
        cleanup.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        wake_r.close()
        wake_w.close()


@contextlib.contextmanager
def _metrics_directory() -> Iterator[None]:
    """Give the workers one directory for their metrics (prometheus-client's multiprocess mode).

    A directory named by PROMETHEUS_MULTIPROC_DIR is used (made if missing, and the samples of
    an earlier run taken out: they would be added to this one's); otherwise a temporary one,
    removed at the end.
    """
    from server.metrics import prepare_directory

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        prepare_directory(given)
        yield
        return
    with tempfile.TemporaryDirectory(prefix="mim-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


@contextlib.contextmanager
def _blocked(signals: frozenset[signal.Signals]) -> Iterator[None]:
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start(number: int, settings: Settings, host: str, port: int) -> Worker:
    status_r, status_w = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-P", "-c", BOOTSTRAP, str(number), str(status_w)],
            stdin=subprocess.PIPE,
            pass_fds=(status_w,),
        )
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    worker = Worker(number=number, process=process, status=status_r)
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # it died at once; its status pipe will say so
        process.stdin.write(pickle.dumps(sys.path) + pickle.dumps((settings, host, port)))
        process.stdin.flush()
    return worker


def _supervise(workers: list[Worker], wake: socket.socket, url: str) -> None:
    """Return on a stop signal; raise WorkerFailed when a worker exits."""
    with selectors.DefaultSelector() as selector:
        selector.register(wake, selectors.EVENT_READ)
        for worker in workers:
            selector.register(worker.status, selectors.EVENT_READ, worker)
        starting = len(workers)
        while True:
            for key, _ in selector.select():
                if key.data is None:
                    name = signal.Signals(wake.recv(1)[0]).name
                    log.info("%s received: stopping %d workers", name, len(workers))
                    return
                worker = key.data
                if not os.read(worker.status, 64):
                    raise WorkerFailed(f"worker {worker.number} {_exit_reason(worker.process)}")
                starting -= 1
                if starting == 0:
                    pids = ", ".join(str(w.process.pid) for w in workers)
                    log.info("serving on %s with %d workers (pids %s)", url, len(workers), pids)


def _exit_reason(process: subprocess.Popen[bytes]) -> str:
    try:
        code = process.wait(timeout=STOP_MARGIN_SECONDS)
    except subprocess.TimeoutExpired:
        return f"(pid {process.pid}) closed its status pipe"
    if code < 0:
        return f"(pid {process.pid}) was killed by {signal.Signals(-code).name}"
    return f"(pid {process.pid}) exited with status {code}"


def _stop(workers: list[Worker], *, grace: float) -> None:
    """Stop every worker: SIGTERM, then SIGKILL for any still running after `grace` seconds."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.terminate()
    deadline = time.monotonic() + grace
    for worker in workers:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop within %.0fs: killing it", worker.number, grace)
            worker.process.kill()
            worker.process.wait()
        os.close(worker.status)
        assert worker.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            worker.process.stdin.close()


# --- in the worker ----------------------------------------------------------------------------


def worker_main() -> None:
    """Serve as one worker of the supervisor that started this process, until it says stop."""
    # Ctrl-C reaches every process in the terminal's group; the supervisor decides who stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    number, status_fd = int(sys.argv[1]), int(sys.argv[2])
    settings, host, port = pickle.load(sys.stdin.buffer)
    from server import logs
    from server.app import create_app

    logs.configure(settings.log_format, who=f"worker {number}")

    app = create_app(settings)
    asyncio.run(_serve_worker(app, settings, host=host, port=port, status_fd=status_fd))


async def _serve_worker(
    app: web.Application, settings: Settings, *, host: str, port: int, status_fd: int
) -> None:
    from aiohttp import web

    from server import logs
    from server.shed import Runner, freeze_heap

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def supervisor_gone() -> None:
        log.warning("the supervisor is gone: stopping")
        loop.remove_reader(sys.stdin.fileno())
        stop.set()

    loop.add_reader(sys.stdin.fileno(), supervisor_gone)
    runner = Runner(
        app,
        handle_signals=False,
        access_log_class=logs.AccessLogger,
        shutdown_timeout=settings.request_timeout_seconds,
    )
    await runner.setup()
    freeze_heap()
    try:
        await web.TCPSite(runner, host, port, reuse_port=True).start()
        log.info("listening on http://%s:%d", host, port)
        with contextlib.suppress(BrokenPipeError):  # the supervisor is gone: stdin says so too
            os.write(status_fd, b"ready\n")
        await stop.wait()
    finally:
        await runner.cleanup()
