"""`mim serve --workers N`: N processes on one port, one signing key, supervised, never orphaned.

Each server runs as the installed `mim` in a session of its own (so that a failed test can still
kill everything it started) against the test database, and is spoken to over real HTTP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from server.cli import main
from tests.conftest import ENV, make_token

MIM = str(Path(sys.executable).parent / "mim")
QUERY = "{ viewer { subject } kpis { slug } }"
SEED_SLUGS = {"cadence-adherence", "mtta", "mttr", "stakeholder-satisfaction"}
NO_KEYS = ("MIM_JWT_SECRET", "MIM_JWT_PUBLIC_KEY", "MIM_JWT_JWKS_URL")
STARTUP_SECONDS = 30.0  # a ceiling for slow machines; a worker is usually up in about a second
STOP_SECONDS = 10.0

pytestmark = [
    pytest.mark.skipif(not Path(MIM).exists(), reason="the mim command is not installed"),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc"),
]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def workers(self) -> set[int]:
        """Return the pids of the supervisor's live child processes."""
        return {pid for pid in children(self.process.pid) if alive(pid)}


def children(parent: int) -> set[int]:
    """Return the pids whose parent is `parent`, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):  # gone since the glob
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Return whether `pid` is running (a zombie has exited; only its parent has yet to look)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_until(condition: Callable[[], Any], what: str, timeout: float = STOP_SECONDS) -> Any:
    """Poll `condition` until it returns something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.02)
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serving(tmp_path: Path, env: dict[str, str], workers: int = 2) -> Iterator[Server]:
    """Start `mim serve --workers N`, wait until every worker listens, and kill what is left."""
    for _ in range(5):
        server = _start(tmp_path, env, workers)
        try:
            if _listening(server, workers):
                yield server
                return
        finally:
            with suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
    pytest.fail("no free port found in 5 tries")


def _start(tmp_path: Path, env: dict[str, str], workers: int) -> Server:
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [MIM, "serve", "--workers", str(workers), "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(process=process, port=port, log=log)


def _listening(server: Server, workers: int) -> bool:
    """Return True once every worker listens, False if the port was taken meanwhile."""
    return wait_until(lambda: _state(server, workers), "it listens", STARTUP_SECONDS) == "ready"


def _state(server: Server, workers: int) -> str | None:
    """Return "ready" or "port taken" once the server says which, else None."""
    if f"with {workers} workers" in server.output():
        return "ready"
    if server.process.poll() is None:
        return None
    if "address already in use" in server.output().lower():
        # The free port was handed to some client connection meanwhile: try another.
        return "port taken"
    pytest.fail(f"mim serve exited with {server.process.returncode}:\n{server.output()}")


def server_env(**changes: str | None) -> dict[str, str]:
    # Text lines, which answered_by reads (a file is not a terminal: JSON would be the default).
    env = {**os.environ, **ENV, "MIM_LOG_FORMAT": "text", **changes}
    return {name: value for name, value in env.items() if value is not None}


def ask(server: Server, token: str) -> dict[str, Any]:
    """POST the query on a new connection (so the kernel picks a worker afresh)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/graphql",
        data=json.dumps({"query": QUERY}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        body: dict[str, Any] = json.load(response)
    assert "errors" not in body, body
    return body


def answered_by(server: Server) -> set[str]:
    """Return the numbers of the workers whose access log shows a GraphQL request answered 200."""
    line = re.compile(r"\[worker (\d+) pid \d+\] aiohttp\.access .*\"POST /graphql [^\"]*\" 200 ")
    return {match[1] for match in line.finditer(server.output())}


def ask_every_worker(server: Server, token: str) -> None:
    """Send requests until every worker has answered one (the kernel spreads new connections)."""
    for _ in range(200):
        body = ask(server, token)
        assert {k["slug"] for k in body["data"]["kpis"]} == SEED_SLUGS
        if answered_by(server) == {"1", "2"}:
            return
    wait_until(lambda: answered_by(server) == {"1", "2"}, "both workers answered")


def assert_all_stopped(server: Server, workers: set[int]) -> None:
    wait_until(lambda: not any(alive(pid) for pid in workers), "every worker has exited")


def test_workers_share_one_port_and_the_secret_the_supervisor_created(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt-secret"
    env = server_env(**dict.fromkeys(NO_KEYS), MIM_JWT_SECRET_FILE=str(secret_file))
    with serving(tmp_path, env) as server:
        workers = server.workers()
        assert len(workers) == 2
        announced = re.search(r"with 2 workers \(pids (\d+), (\d+)\)", server.output())
        assert announced is not None
        assert {int(pid) for pid in announced.groups()} == workers
        assert secret_file.exists()
        issued = CliRunner().invoke(
            main,
            ["token", "--persona", "admin", "--sub", "pooled"],
            env={**dict.fromkeys(NO_KEYS), "MIM_JWT_SECRET_FILE": str(secret_file)},
        )
        assert issued.exit_code == 0, issued.output
        token = issued.output.strip()
        assert ask(server, token)["data"]["viewer"] == {"subject": "pooled"}
        ask_every_worker(server, token)

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=STOP_SECONDS) == 0, server.output()
        assert_all_stopped(server, workers)
        assert "SIGTERM received: stopping 2 workers" in server.output()


def test_ctrl_c_stops_every_worker_and_exits_zero(tmp_path: Path) -> None:
    with serving(tmp_path, server_env()) as server:
        workers = server.workers()
        assert ask(server, make_token("exec", sub="exec-user"))["data"]["viewer"] == {
            "subject": "exec-user"
        }
        # A terminal's Ctrl-C reaches the whole process group, workers included.
        os.killpg(server.process.pid, signal.SIGINT)
        assert server.process.wait(timeout=STOP_SECONDS) == 0, server.output()
        assert_all_stopped(server, workers)
        assert "Traceback" not in server.output()


def test_a_killed_worker_stops_the_other_and_the_command_fails(tmp_path: Path) -> None:
    with serving(tmp_path, server_env()) as server:
        victim, survivor = sorted(server.workers())
        os.kill(victim, signal.SIGKILL)
        assert server.process.wait(timeout=STOP_SECONDS) == 1
        assert_all_stopped(server, {survivor})
        assert f"(pid {victim}) was killed by SIGKILL; stopped the other workers" in (
            server.output()
        )


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    with serving(tmp_path, server_env()) as server:
        workers = server.workers()
        server.process.kill()
        server.process.wait()
        assert_all_stopped(server, workers)
        assert "the supervisor is gone: stopping" in server.output()


def test_a_port_in_use_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [MIM, "serve", "--workers", "2", "--port", str(port)],
            cwd=tmp_path,
            env=server_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"Error: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "worker" not in result.stderr


@pytest.mark.parametrize("workers", ["0", "-1", "65", "two"])
def test_a_worker_count_outside_1_to_64_is_refused(workers: str) -> None:
    result = CliRunner().invoke(main, ["serve", "--workers", workers])
    assert result.exit_code == 2
    assert "Invalid value for '--workers'" in result.output


def test_serve_help_documents_workers() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--workers" in result.output
    assert "SO_REUSEPORT" in result.output
