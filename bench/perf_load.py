"""GraphQL throughput: the service against a raw aiohttp + asyncpg baseline, Q1-Q3.

Starts, as subprocesses of this run: the service (`.venv/bin/mim serve`, once per `--workers`
count), the baseline (bench/perf_baseline.py) and the baseline building JSON in PostgreSQL; checks
that all of them answer Q1-Q3 with the same data; then, per query and target, drives
`--connections` concurrent keep-alive HTTP/1.1 connections (one request in flight each) for
`--warmup` seconds unmeasured and `--duration` seconds measured. It prints, per cell, req/s, p50,
p99 and the CPU used by the server processes, PostgreSQL, the driver and anything else on the
machine; then one summary table: the ratios service/baseline against the goal (PostGraphile 5's
ratios and p99s), service/baseline-json, and the gain of each worker count over 1 worker.

The load comes from `--drivers` processes (default 1), each with its share of the connections and
a lean asyncio HTTP/1.1 client (about a third of the CPU per request of aiohttp's client); their
latency samples are merged before the percentiles.

`--soak SECONDS` runs a mixed Q1/Q2/Q3 load against the service instead, sampling the resident
memory of every server process (the `mim serve` process and its children) every
`--soak-interval` seconds, and says whether it stays flat after `--soak-warmup`.

Server logs go to files in a temporary directory (the service writes one access-log line per
request: an unread pipe would fill and block it). Every server is stopped on exit, on Ctrl-C,
on SIGTERM and on errors; and killed with this process if it is killed.

Prepare the database first with bench/perf_data.py.

    .venv/bin/python bench/perf_load.py                           # 10 s per query per target
    .venv/bin/python bench/perf_load.py --duration 5 --warmup 1 --json-out /tmp/perf.json
    .venv/bin/python bench/perf_load.py --targets service,baseline --queries q2
    .venv/bin/python bench/perf_load.py --workers 1,2               # service with 1 and 2 workers
    .venv/bin/python bench/perf_load.py --soak 900                  # memory: 10 min after 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import perf_baseline  # noqa: E402

from server.auth import issue_token  # noqa: E402
from server.config import Settings  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/mim_perf_bench"
SECRET = "perf-bench-secret-0123456789abcdef-0123456789abcdef"
HOST = "127.0.0.1"
# Set for every server (DATABASE_URL too); other MIM_* variables pass through from this process.
SERVER_ENV = {"MIM_JWT_SECRET": SECRET, "MIM_GRAPHIQL": "0"}
INCIDENTS = 100_000
QUERIES = {"q1": perf_baseline.Q1, "q2": perf_baseline.Q2, "q3": perf_baseline.Q3}
TARGETS = ("service", "baseline", "baseline-json", "service-nometrics", "service-traced")
DEFAULT_TARGETS = TARGETS[:3]
# The service with its observability changed, to measure what it costs (docs/operations.md):
# without metrics, and with traces exported to a port where nothing listens.
KIND_ENV = {
    "service-nometrics": {"MIM_METRICS": "0"},
    "service-traced": {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces",
    },
}
# The goal: PostGraphile 5's ratios to the same kind of baseline, and its p99s (ms).
GOAL_RATIO = {"q1": 0.45, "q2": 0.51, "q3": 0.46}
GOAL_P99_MS = {"q1": 19.5, "q2": 43.2, "q3": 15.7}
# The first milestone: PostGraphile 4's ratios.
MILESTONE_RATIO = {"q1": 0.26, "q2": 0.31, "q3": 0.28}
# A request unanswered this long counts as a timeout (a stuck server must not hang the driver).
REQUEST_TIMEOUT = 10.0
# Seconds a server gets to stop after SIGTERM before it is killed; and to start.
STOP_GRACE = 10.0
START_TIMEOUT = 60.0
# More CPU than this (cores) used by other processes during a cell: the machine was not quiet.
QUIET_OTHER_CPU = 0.15
# Memory is flat when it grows by less than this share of the start RSS over the soak.
FLAT_SHARE = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024
PR_SET_PDEATHSIG = 1


# --- processes, from /proc ---------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """Return the fields of /proc/PID/stat after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu(pid: int) -> float:
    """Return the user + system CPU seconds of a live process, 0 for one that is gone."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_rss(pid: int) -> int:
    """Return the resident set size of a live process in bytes, 0 for one that is gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (FileNotFoundError, ProcessLookupError):
        return 0


def all_processes() -> dict[int, tuple[int, str]]:
    """Return {pid: (parent pid, command name)} of every process."""
    out: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry.name}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        out[int(entry.name)] = (int(text.rsplit(")", 1)[1].split()[1]), name)
    return out


def process_tree(root: int) -> list[int]:
    """Return `root` and all its live descendants (a supervisor and its workers)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in all_processes().items():
        children.setdefault(parent, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid == root and not Path(f"/proc/{pid}").exists():
            return []
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def postgres_cpu() -> float:
    """Return the CPU seconds of every PostgreSQL process (all databases: a machine-wide view)."""
    return sum(process_cpu(pid) for pid, (_, name) in all_processes().items() if name == "postgres")


def machine_busy() -> float:
    """Return the busy CPU seconds of the whole machine since boot (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / CLK_TCK


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def listening_inodes(port: int) -> set[str]:
    """Return the socket inodes listening on TCP `port` (IPv4 and IPv6)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                out.add(fields[9])
    return out


def socket_owners(inodes: set[str], pids: list[int] | None = None) -> list[int]:
    """Return the processes (among `pids`, default all) holding one of these socket inodes."""
    wanted = {f"socket:[{i}]" for i in inodes}
    out = []
    for pid in pids if pids is not None else list(all_processes()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    out.append(pid)
                    break
            except OSError:
                continue
    return out


def port_user(port: int) -> str | None:
    """Return who listens on `port` ("pid N: command"), "unknown process", or None if free."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            pass
        else:
            return None
    for pid in socket_owners(listening_inodes(port)):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            command = "?"
        return f"pid {pid}: {command.strip()[:120]}"
    return "unknown process"


# --- the servers ---------------------------------------------------------------------------------


class WorkersUnsupported(Exception):
    """`mim serve` does not know the --workers option (yet)."""


@dataclass
class Target:
    name: str  # service, service-w2, baseline, baseline-json
    kind: str  # service, baseline, baseline-json
    port: int
    workers: int
    log: Path
    tuned: bool = False  # baselines: orjson and no pool reset query, as the service has
    proc: subprocess.Popen[bytes] | None = None
    seen: set[int] = field(default_factory=set)  # every process of the target seen running

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/graphql"

    def command(self) -> list[str]:
        port = ["--port", str(self.port)]
        if self.kind.startswith("service"):
            workers = ["--workers", str(self.workers)] if self.workers > 1 else []
            return [str(ROOT / ".venv/bin/mim"), "serve", "--host", HOST, *port, *workers]
        json_in_postgres = ["--json-in-postgres"] if self.kind == "baseline-json" else []
        tuned = ["--tuned"] if self.tuned else []
        baseline = str(ROOT / "bench/perf_baseline.py")
        return [sys.executable, baseline, *port, *json_in_postgres, *tuned]

    def pids(self) -> list[int]:
        pids = process_tree(self.proc.pid) if self.proc else []
        self.seen.update(pids)
        return pids

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def plan_targets(
    names: list[str], workers: list[int], base_port: int, logs: Path, tuned: bool = False
) -> list[Target]:
    """Service (first worker count) on base_port, baselines on +1 and +2, more services after."""
    out = []
    for kind in names:
        if kind == "service":
            for n, count in enumerate(workers):
                name = "service" if count == 1 else f"service-w{count}"
                port = base_port if n == 0 else base_port + len(TARGETS) + n - 1
                out.append(Target(name, kind, port, count, logs / f"{name}.log"))
        else:
            port = base_port + TARGETS.index(kind)
            out.append(Target(kind, kind, port, 1, logs / f"{kind}.log", tuned=tuned))
    return out


def _die_with_parent() -> None:
    """In the child before exec: be killed if this driver dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_target(target: Target, db_url: str) -> None:
    env = {**os.environ, **SERVER_ENV, **KIND_ENV.get(target.kind, {}), "DATABASE_URL": db_url}
    with target.log.open("wb") as log:
        # Its own session: a Ctrl-C here reaches it only as our SIGTERM, after the load stops.
        target.proc = subprocess.Popen(
            target.command(),
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def stop_targets(targets: list[Target]) -> list[str]:
    """Stop every server process group: SIGTERM, then SIGKILL after STOP_GRACE; return notes."""
    notes = []
    started = [t for t in targets if t.proc is not None]
    for t in started:
        assert t.proc is not None
        t.pids()  # note the workers, to find any left behind
        if t.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(t.proc.pid, signal.SIGTERM)  # the target's session: it and its workers
    deadline = time.monotonic() + STOP_GRACE
    for t in started:
        assert t.proc is not None
        try:
            t.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            notes.append(f"{t.name} did not stop within {STOP_GRACE:.0f} s of SIGTERM: killed")
            t.proc.kill()
            t.proc.wait()
        for pid in t.seen - {t.proc.pid}:  # a worker its supervisor left behind
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) == t.proc.pid:
                    os.kill(pid, signal.SIGKILL)
    for t in started:
        if port_user(t.port) is not None:
            notes.append(
                f"port {t.port} ({t.name}) still in use after stopping: {port_user(t.port)}"
            )
    return notes


async def wait_ready(session: aiohttp.ClientSession, target: Target, headers: dict[str, str]):
    """Wait until every worker of `target` listens and a request is answered."""
    assert target.proc is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            log = target.log_tail()
            if target.workers > 1 and re.search(r"no such option.*--workers", log, re.I):
                raise WorkersUnsupported(
                    f"`mim serve --workers {target.workers}` failed: this `mim serve` has no "
                    "--workers option yet (it is being added to server/cli.py); "
                    f"{target.name} is not measured"
                )
            raise RuntimeError(f"{target.name} exited ({target.proc.returncode}):\n{log}")
        listening = socket_owners(listening_inodes(target.port), target.pids())
        if len(listening) >= target.workers:
            try:
                async with session.post(target.url, json={"query": QUERIES["q1"]}, headers=headers):
                    return
            except aiohttp.ClientError:
                pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{target.name} did not answer within {START_TIMEOUT:.0f} s")


async def answers(session: aiohttp.ClientSession, target: Target, headers: dict[str, str]):
    out = {}
    for name, query in QUERIES.items():
        body: dict[str, Any] = {"query": query}
        if name == "q3":
            body["variables"] = {"id": "INC-51000"}
        async with session.post(target.url, json=body, headers=headers) as response:
            out[name] = await response.json()
    return out


def compare(reference: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """Return how `other`'s answers differ from `reference`'s."""
    problems = []
    for name in QUERIES:
        a, b = reference[name], other[name]
        if a != b:
            problems.append(f"{name}: {json.dumps(a)[:300]} != {json.dumps(b)[:300]}")
        elif "errors" in a:
            problems.append(f"{name}: errors {a['errors']}")
    return problems


async def prepare(targets: list[Target], headers: dict[str, str]) -> tuple[list[str], list[str]]:
    """Wait for the servers and compare their answers; return why any was left out, and how
    the answers differ."""
    skipped, different = [], []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        ready = await asyncio.gather(
            *(wait_ready(session, t, headers) for t in targets), return_exceptions=True
        )
        for t, outcome in zip(list(targets), ready, strict=True):
            if isinstance(outcome, WorkersUnsupported):
                print(f"NOT MEASURED: {outcome}", flush=True)
                skipped.append(str(outcome))
                targets.remove(t)
            elif isinstance(outcome, BaseException):
                raise outcome
        if not any(t.kind.startswith("service") for t in targets) and skipped:
            raise SystemExit("no service target left to measure")
        got = {t.name: await answers(session, t, headers) for t in targets}
    reference = targets[0].name
    if "errors" in json.dumps(got[reference]):
        print(f"check: {reference} answers with errors: {json.dumps(got[reference])[:600]}")
    for t in targets[1:]:
        problems = compare(got[reference], got[t.name])
        print(f"check: {t.name} vs {reference}: {'DIFFERENT' if problems else 'same'} answers")
        for p in problems:
            print(f"  {p}")
            different.append(f"{t.name} vs {reference}: {p}")
    sizes = {q: len(json.dumps(got[reference][q], separators=(",", ":"))) for q in QUERIES}
    print(f"check: response sizes (bytes, compact JSON): {sizes}")
    return skipped, different


# --- the load: a lean HTTP/1.1 client, run in driver processes ----------------------------------


class Client(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight.

    No task and no asyncio.wait_for per request (each costs more than the rest of the request's
    handling here): a future, resolved by data_received or failed by a timer.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            response = parse_response(self.buffer)
        except ValueError as error:
            self.waiter.set_exception(error)
            return
        if response is not None:
            status, body, used = response
            del self.buffer[:used]
            self.waiter.set_result((status, body))
            if self.timer is not None:
                self.timer.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed by the server"))

    def request(self, data: bytes, timeout: float) -> asyncio.Future[tuple[int, bytes]]:
        """Send one request; return the future of its (status, body)."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.timer = loop.call_later(timeout, self._expire, self.waiter, timeout)
        self.transport.write(data)
        return self.waiter

    def _expire(self, waiter: asyncio.Future[tuple[int, bytes]], timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError(f"no answer within {timeout:.0f} s"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def parse_response(buffer: bytearray) -> tuple[int, bytes, int] | None:
    """Return (status, body, bytes used) of the complete response at the buffer's start."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    status = int(lines[0].split(None, 2)[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        headers[key.strip().lower()] = value.strip()
    start = end + 4
    if b"content-length" in headers:
        stop = start + int(headers[b"content-length"])
        return (status, bytes(buffer[start:stop]), stop) if len(buffer) >= stop else None
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        return _chunked(buffer, start, status)
    raise ValueError("a response with neither Content-Length nor chunked encoding")


def _chunked(buffer: bytearray, position: int, status: int) -> tuple[int, bytes, int] | None:
    body = bytearray()
    while True:
        eol = buffer.find(b"\r\n", position)
        if eol < 0:
            return None
        size = int(bytes(buffer[position:eol]).split(b";")[0], 16)
        position = eol + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", position - 2)
            return None if trailer_end < 0 else (status, bytes(body), trailer_end + 4)
        if len(buffer) < position + size + 2:
            return None
        body += buffer[position : position + size]
        position += size + 2


class Requests:
    """The request bytes of one query ("mix": Q1, Q2 or Q3 at random each time)."""

    def __init__(self, query: str, port: int, token: str) -> None:
        self.query = query
        self.head = (
            f"POST /graphql HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.fixed = {q: self._bytes({"query": QUERIES[q]}) for q in ("q1", "q2")}

    def _bytes(self, body: dict[str, Any]) -> bytes:
        data = json.dumps(body).encode()
        return self.head + str(len(data)).encode() + b"\r\n\r\n" + data

    def next(self, rng: random.Random) -> bytes:
        query = rng.choice(("q1", "q2", "q3")) if self.query == "mix" else self.query
        if query in self.fixed:
            return self.fixed[query]
        key = f"INC-{1000 + rng.randint(1, INCIDENTS)}"
        return self._bytes({"query": QUERIES["q3"], "variables": {"id": key}})


@dataclass
class Load:
    """One measurement's load: a query ("mix": Q1-Q3 at random), connections and seconds."""

    query: str
    connections: int
    warmup: float
    duration: float
    seed: int


@dataclass
class Job:
    """One driver process's share of a measurement (times are time.monotonic(), system-wide)."""

    index: int
    port: int
    query: str
    connections: int
    token: str
    begin: float  # the load starts
    measure_from: float
    stop_at: float
    seed: int


@dataclass
class JobResult:
    requests: int = 0  # answered 200 without errors, completed in the measured window
    errors: int = 0  # answered, but not 200 or with GraphQL errors (whole run)
    timeouts: int = 0  # not answered in REQUEST_TIMEOUT, or the connection failed (whole run)
    latencies: bytes = b""  # array("d") of the measured requests' seconds
    cpu: float = 0.0  # this driver process's CPU seconds in the measured window
    first_problem: str = ""


_progress: Any = None  # a shared array("q"): requests completed, one slot per driver process


def _init_driver(progress: Any) -> None:
    global _progress
    _progress = progress
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def run_job(job: Job) -> JobResult:
    """Run one driver process's share of a measurement (in a driver process)."""
    return asyncio.run(_job(job))


async def _job(job: Job) -> JobResult:
    result = JobResult()
    latencies = array("d")
    await asyncio.sleep(max(0.0, job.begin - time.monotonic()))
    requests = Requests(job.query, job.port, job.token)
    progress = _progress

    async def connection(seed: int) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(seed)
        client: Client | None = None
        while time.monotonic() < job.stop_at:
            started = time.monotonic()
            try:
                if client is None or client.closed:
                    connect = loop.create_connection(Client, HOST, job.port)
                    _, client = await asyncio.wait_for(connect, REQUEST_TIMEOUT)
                status, body = await client.request(requests.next(rng), REQUEST_TIMEOUT)
            except (OSError, TimeoutError, ValueError) as error:
                result.timeouts += 1
                result.first_problem = result.first_problem or repr(error)
                if client is not None:
                    client.close()
                client = None
                await asyncio.sleep(0.05)  # a refused connection must not spin
                continue
            ended = time.monotonic()
            if progress is not None:
                progress[job.index] += 1
            if status != 200 or b'"errors"' in body:
                result.errors += 1
                result.first_problem = result.first_problem or f"{status} {body[:300]!r}"
            elif job.measure_from <= ended <= job.stop_at:
                result.requests += 1
                latencies.append(ended - started)
        if client is not None:
            client.close()

    async def cpu_window() -> None:
        await asyncio.sleep(max(0.0, job.measure_from - time.monotonic()))
        before = own_cpu()
        await asyncio.sleep(max(0.0, job.stop_at - time.monotonic()))
        result.cpu = own_cpu() - before

    seeds = [job.seed * 1000 + n for n in range(job.connections)]
    await asyncio.gather(cpu_window(), *(connection(s) for s in seeds))
    result.latencies = latencies.tobytes()
    return result


class Drivers:
    """The driver processes; a measurement splits its connections between them."""

    def __init__(self, count: int, token: str) -> None:
        self.count = count
        self.token = token
        context = multiprocessing.get_context("fork")
        self.progress = context.Array("q", count, lock=False)
        self.pool = context.Pool(count, initializer=_init_driver, initargs=(self.progress,))

    def start(self, port: int, load: Load) -> tuple[float, Any]:
        """Start the load on `port`; return when it begins (monotonic) and its pending results."""
        begin = time.monotonic() + 0.3  # every driver process starts together
        measure_from, stop_at = begin + load.warmup, begin + load.warmup + load.duration
        jobs = []
        for i in range(self.count):
            share = load.connections // self.count + (i < load.connections % self.count)
            if share:
                job = Job(
                    index=i,
                    port=port,
                    query=load.query,
                    connections=share,
                    token=self.token,
                    begin=begin,
                    measure_from=measure_from,
                    stop_at=stop_at,
                    seed=load.seed + i,
                )
                jobs.append(job)
        return begin, self.pool.map_async(run_job, jobs)

    @staticmethod
    def results(pending: Any, load: Load) -> list[JobResult]:
        """Wait for a load's results (a driver is never stuck: its requests time out)."""
        out: list[JobResult] = pending.get(
            timeout=load.warmup + load.duration + REQUEST_TIMEOUT + 60
        )
        return out

    def completed(self) -> int:
        return sum(self.progress)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    workers: int
    query: str
    seconds: float
    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)
    server_cpu: float = 0.0  # cores, all processes of the target
    server_cpu_by_pid: dict[int, float] = field(default_factory=dict)
    postgres_cpu: float = 0.0  # cores
    driver_cpu: float = 0.0  # cores, all driver processes
    other_cpu: float = 0.0  # cores: the machine's busy time less all of the above
    first_problem: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    def add(self, jobs: list[JobResult]) -> None:
        """Add the driver processes' results: counts, latency samples, CPU."""
        for job in jobs:
            self.requests += job.requests
            self.errors += job.errors
            self.timeouts += job.timeouts
            self.latencies.extend(array("d", job.latencies))
            self.driver_cpu += job.cpu / self.seconds
            self.first_problem = self.first_problem or job.first_problem

    def figures(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "latencies"}
        out.update(
            rps=round(self.rps, 1), p50_ms=_round(self.pct(0.5)), p99_ms=_round(self.pct(0.99))
        )
        return out


def _round(value: float, digits: int = 2) -> float | None:
    return None if value != value else round(value, digits)  # NaN -> None (JSON null)


class Snapshot:
    """CPU seconds of the target's processes, PostgreSQL and the machine, at one moment."""

    def __init__(self, target: Target) -> None:
        self.by_pid = {pid: process_cpu(pid) for pid in target.pids()}
        self.postgres = postgres_cpu()
        self.machine = machine_busy()


def measure(drivers: Drivers, target: Target, load: Load) -> Result:
    """Drive `load` against `target`; sample CPU at the start and end of the measured window."""
    begin, pending = drivers.start(target.port, load)
    duration = load.duration
    time.sleep(max(0.0, begin + load.warmup - time.monotonic()))
    before = Snapshot(target)
    time.sleep(max(0.0, begin + load.warmup + duration - time.monotonic()))
    after = Snapshot(target)
    result = Result(target.name, target.workers, load.query, duration)
    result.add(drivers.results(pending, load))
    result.server_cpu_by_pid = {
        pid: round((after.by_pid[pid] - before.by_pid.get(pid, 0.0)) / duration, 3)
        for pid in after.by_pid
    }
    result.server_cpu = sum(result.server_cpu_by_pid.values())
    result.postgres_cpu = (after.postgres - before.postgres) / duration
    busy = (after.machine - before.machine) / duration
    result.other_cpu = max(0.0, busy - result.server_cpu - result.postgres_cpu - result.driver_cpu)
    return result


def print_result(r: Result) -> None:
    flag = "  <-- " + r.first_problem[:200] if r.errors or r.timeouts else ""
    per_pid = ""
    if len(r.server_cpu_by_pid) > 1:
        per_pid = " (" + " ".join(f"{c:.2f}" for c in r.server_cpu_by_pid.values()) + ")"
    print(
        f"{r.query} {r.target:14} {r.rps:8.1f} req/s  p50 {r.pct(0.5):7.2f} ms  "
        f"p99 {r.pct(0.99):7.2f} ms  errors {r.errors}  timeouts {r.timeouts}  CPU (cores): "
        f"server {r.server_cpu:4.2f}{per_pid}  postgres {r.postgres_cpu:4.2f}  "
        f"driver {r.driver_cpu:4.2f}  other {r.other_cpu:4.2f}"
        + (" (NOT QUIET)" if r.other_cpu > QUIET_OTHER_CPU else "")
        + flag,
        flush=True,
    )


# --- the memory soak ---------------------------------------------------------------------------


def least_squares_slope(points: list[tuple[float, float]]) -> float:
    """Return the least-squares slope of y over x (0 for fewer than two points)."""
    if len(points) < 2:
        return 0.0
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / den if den else 0.0


def memory_verdict(samples: list[tuple[float, float]], warmup: float) -> dict[str, Any]:
    """Summarise RSS samples (seconds since the load began, MiB) taken after `warmup`."""
    after = [(t, mib) for t, mib in samples if t >= warmup]
    if len(after) < 2:
        return {"samples": len(after), "flat": None}
    start, end = after[0][1], after[-1][1]
    minutes = (after[-1][0] - after[0][0]) / 60
    slope = least_squares_slope([(t / 60, mib) for t, mib in after])
    half = len(after) // 2
    limit = FLAT_SHARE * start
    return {
        "samples": len(after),
        "minutes": round(minutes, 2),
        "start_mib": round(start, 2),
        "end_mib": round(end, 2),
        "max_mib": round(max(mib for _, mib in after), 2),
        "growth_mib": round(end - start, 2),
        "slope_mib_per_min": round(slope, 4),
        "slope_first_half": round(least_squares_slope([(t / 60, m) for t, m in after[:half]]), 4),
        "slope_second_half": round(least_squares_slope([(t / 60, m) for t, m in after[half:]]), 4),
        "limit_mib": round(limit, 2),
        "flat": end - start < limit and slope * minutes < limit,
    }


def soak(drivers: Drivers, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Mixed load for args.soak seconds; sample each server process's RSS; judge it."""
    warmup = args.soak_warmup
    print(
        f"\nsoak {target.name}: mixed q1/q2/q3 for {args.soak:.0f} s, {args.connections} "
        f"connections, RSS sampled every {args.soak_interval:.0f} s, warm-up {warmup:.0f} s"
    )
    load = Load("mix", args.connections, warmup, args.soak - warmup, seed=7)
    begin, pending = drivers.start(target.port, load)
    time.sleep(max(0.0, begin - time.monotonic()))
    samples: list[dict[str, Any]] = []
    done0 = drivers.completed()
    last_print = -1e9
    while True:
        now = time.monotonic() - begin
        pids = target.pids()
        rss = {pid: process_rss(pid) / MIB for pid in pids}
        done = drivers.completed()
        samples.append({"t": round(now, 1), "rss_mib": rss, "completed": done - done0})
        if now - last_print >= 30 or now >= args.soak:
            rate = (done - done0) / now if now > 0 else 0.0
            mibs = " + ".join(f"{v:.1f}" for v in rss.values())
            total = sum(rss.values())
            line = f"  t {now:6.0f} s  RSS {total:7.1f} MiB ({mibs})  {rate:6.1f} req/s so far"
            print(line, flush=True)
            last_print = now
        if now >= args.soak or not pids:
            break
        time.sleep(min(args.soak_interval, max(0.0, args.soak - now)))
    measured = Result(target.name, target.workers, "mix", load.duration)
    measured.add(drivers.results(pending, load))
    every_pid = sorted({pid for s in samples for pid in s["rss_mib"]})
    assert target.proc is not None
    root = target.proc.pid
    per_process = {}
    for pid in every_pid:
        series = [(s["t"], s["rss_mib"][pid]) for s in samples if pid in s["rss_mib"]]
        role = "supervisor" if pid == root and target.workers > 1 else "worker"
        role = "server" if target.workers == 1 else role
        per_process[str(pid)] = {"role": role, **memory_verdict(series, warmup)}
    total = memory_verdict([(s["t"], sum(s["rss_mib"].values())) for s in samples], warmup)
    changed = len({tuple(sorted(s["rss_mib"])) for s in samples}) > 1
    return {
        "target": target.name,
        "workers": target.workers,
        "seconds": args.soak,
        "warmup": warmup,
        "interval": args.soak_interval,
        "load": measured.figures(),
        "processes_changed": changed,
        "total": total,
        "per_process": per_process,
        "samples": [
            {**s, "rss_mib": {str(k): round(v, 2) for k, v in s["rss_mib"].items()}}
            for s in samples
        ],
    }


def print_soak(report: dict[str, Any]) -> None:
    load = report["load"]
    print(
        f"soak {report['target']} load after warm-up: {load['rps']} req/s, p50 {load['p50_ms']} "
        f"ms, p99 {load['p99_ms']} ms, errors {load['errors']}, timeouts {load['timeouts']}"
        + (f" <-- {load['first_problem'][:200]}" if load["first_problem"] else "")
    )
    print(
        f"  flat = growth (end - start) and slope x minutes both under {FLAT_SHARE:.0%} of the "
        f"start RSS, over the samples after the {report['warmup']:.0f} s warm-up"
    )
    rows = [("all", report["total"])]
    rows += [(f"{v['role']} {p}", v) for p, v in report["per_process"].items()]
    titles = ("start", "end", "max", "growth", "MiB/min", "1st half", "2nd half", "limit")
    widths = (8, 8, 8, 8, 9, 9, 9, 7)
    print(
        f"  {'process':17} "
        + " ".join(f"{t:>{w}}" for t, w in zip(titles, widths, strict=True))
        + "  flat"
    )
    for name, v in rows:
        if v.get("flat") is None:
            print(f"  {name:17} too few samples after the warm-up")
            continue
        print(
            f"  {name:17} {v['start_mib']:8.1f} {v['end_mib']:8.1f} {v['max_mib']:8.1f} "
            f"{v['growth_mib']:+8.2f} {v['slope_mib_per_min']:+9.3f} "
            f"{v['slope_first_half']:+9.3f} {v['slope_second_half']:+9.3f} "
            f"{v['limit_mib']:7.1f}  {'FLAT' if v['flat'] else 'GROWING'}"
        )
    if report["processes_changed"]:
        print("  note: the set of server processes changed during the soak (a worker restarted?)")


# --- the report --------------------------------------------------------------------------------


def git(*command: str) -> bytes:
    return subprocess.run(["git", *command], cwd=ROOT, capture_output=True).stdout.strip()


def source_version() -> tuple[str, str | None]:
    """Return the commit ("abc1234", "+dirty" added when files differ from it, untracked ones
    included) and, when dirty, a digest of the differences (to tell apart two dirty runs)."""
    commit = git("rev-parse", "--short", "HEAD").decode() or "unknown"
    if not git("status", "--porcelain"):
        return commit, None
    digest = hashlib.sha1(git("diff", "HEAD", "--binary"))
    for name in sorted(git("ls-files", "--others", "--exclude-standard", "-z").split(b"\0")):
        path = ROOT / name.decode()
        if name and path.is_file():
            digest.update(name + b"\0" + path.read_bytes())
    return commit + "+dirty", digest.hexdigest()[:10]


def run_header(args: argparse.Namespace) -> dict[str, Any]:
    commit, changes = source_version()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "commit": commit,
        "changes_digest": changes,
        # The service's settings from this environment (MIM_FAST_PATH=0, say), secrets left out.
        "service_env": {
            k: v
            for k, v in sorted(os.environ.items())
            if k.startswith("MIM_")
            and k not in SERVER_ENV
            and not any(w in k for w in ("SECRET", "KEY", "TOKEN"))
        },
        "python": sys.version.split()[0],
        "connections": args.connections,
        "drivers": args.drivers,
        "warmup": args.warmup,
        "duration": args.duration,
        "soak": args.soak,
        "workers": args.workers,
        "tuned_baselines": args.tuned_baselines,
        "database": args.database_url,
    }


def version(header: dict[str, Any]) -> str:
    digest = header["changes_digest"]
    return header["commit"] + (f" (changes {digest})" if digest else "")


def print_header(h: dict[str, Any]) -> None:
    load = " ".join(f"{v:.2f}" for v in h["load_average"])
    if h["soak"] is None:
        plan = f"{h['warmup']} s warm-up, {h['duration']} s measured per cell"
    else:
        plan = f"memory soak of {h['soak']:.0f} s"
    print(
        f"{h['date']}  nproc {h['nproc']}  load average at start {load}  commit {version(h)}  "
        f"Python {h['python']}\n{h['connections']} connections from {h['drivers']} driver "
        f"process(es), {plan}; service workers {','.join(map(str, h['workers']))}"
        + "".join(f"; {k}={v}" for k, v in h["service_env"].items())
        + ("; baselines tuned (orjson, no pool reset query)" if h.get("tuned_baselines") else ""),
        flush=True,
    )


def summarise(results: list[Result]) -> list[dict[str, Any]]:
    """Return one row per query and service target: its figures, the baselines', the verdicts."""
    by = {(r.target, r.query): r for r in results}
    rows = []
    for query in dict.fromkeys(r.query for r in results):
        base, json_base = by.get(("baseline", query)), by.get(("baseline-json", query))
        services = [r for r in results if r.query == query and r.target.startswith("service")]
        one = next((r for r in services if r.workers == 1), None)
        for s in services or [None]:
            row: dict[str, Any] = {"query": query, "target": s.target if s else None}
            for label, r in (("service", s), ("baseline", base), ("baseline-json", json_base)):
                row[label] = r.figures() if r else None
            if s is None:
                rows.append(row)
                continue
            row["workers"] = s.workers
            ratio = s.rps / base.rps if base and base.rps else None
            row["ratio_baseline"] = _round(ratio, 3) if ratio is not None else None
            row["ratio_baseline_json"] = (
                round(s.rps / json_base.rps, 3) if json_base and json_base.rps else None
            )
            row["goal_ratio"] = GOAL_RATIO[query]
            row["goal_p99_ms"] = GOAL_P99_MS[query]
            row["milestone_ratio"] = MILESTONE_RATIO[query]
            p99 = s.pct(0.99)
            row["ratio_pass"] = ratio >= GOAL_RATIO[query] if ratio is not None else None
            row["milestone_pass"] = ratio >= MILESTONE_RATIO[query] if ratio is not None else None
            row["p99_pass"] = p99 <= GOAL_P99_MS[query] if p99 == p99 else False
            row["clean"] = s.errors == 0 and s.timeouts == 0
            row["gain_over_1_worker"] = (
                round(s.rps / one.rps, 3) if one and one.rps and s is not one else None
            )
            rows.append(row)
    return rows


def _verdict(value: bool | None) -> str:
    return "-" if value is None else "PASS" if value else "FAIL"


def print_summary(header: dict[str, Any], rows: list[dict[str, Any]], skipped: list[str]) -> None:
    load = header["load_average"][0]
    print(
        f"\nsummary  {header['date']}  nproc {header['nproc']}  load {load:.2f}"
        f"  commit {version(header)}  (goal: PostGraphile 5's ratio and p99, for 1 worker;"
        " milestone: PostGraphile 4's ratio)"
    )
    cols = "    req/s   p50 ms   p99 ms"
    print(
        f"{'':9}{'service':^27}|{'baseline':^27}|{'baseline-json':^27}| {'svc/base':>8} "
        f"{'goal':>6} {'ratio':>5} {'PG4':>5} | {'p99 goal':>9} {'p99':>5} | {'svc/json':>8}"
    )
    print(f"{'query':9}{cols}|{cols}|{cols}|")

    def cells(f: dict[str, Any] | None) -> str:
        if f is None:
            return f"{'-':>9}{'-':>9}{'-':>9}"
        p50 = "-" if f["p50_ms"] is None else f"{f['p50_ms']:.2f}"
        p99 = "-" if f["p99_ms"] is None else f"{f['p99_ms']:.2f}"
        return f"{f['rps']:9.1f}{p50:>9}{p99:>9}"

    for row in rows:
        workers = row.get("workers", 1)
        label = row["query"] + ("" if workers == 1 else f" w{workers}")
        if row.get("target", "service") in KIND_ENV:
            label += " " + row["target"].removeprefix("service-")[:5]
        if row["service"] is None:
            print(f"{label:9}{cells(None)}|{cells(row['baseline'])}|{cells(row['baseline-json'])}|")
            continue
        ratio, json_ratio = row["ratio_baseline"], row["ratio_baseline_json"]
        one = workers == 1
        print(
            f"{label:9}{cells(row['service'])}|{cells(row['baseline'])}|"
            f"{cells(row['baseline-json'])}| {'-' if ratio is None else f'{ratio:.3f}':>8} "
            f"{'>=' + str(row['goal_ratio']):>6} "
            f"{_verdict(row['ratio_pass']) if one else 'n/a':>5} "
            f"{_verdict(row['milestone_pass']) if one else 'n/a':>5} | "
            f"{'<=' + str(row['goal_p99_ms']) + ' ms':>9} "
            f"{_verdict(row['p99_pass']) if one else 'n/a':>5} | "
            f"{'-' if json_ratio is None else f'{json_ratio:.3f}':>8}"
            + ("" if row["clean"] else "  (errors or timeouts: see above)")
        )
    gains = [r for r in rows if r.get("gain_over_1_worker")]
    for r in gains:
        one = next(
            x for x in rows if x["query"] == r["query"] and x.get("workers") == 1 and x["service"]
        )
        print(
            f"gain {r['query']}: {r['workers']} workers {r['service']['rps']:.1f} req/s, "
            f"1 worker {one['service']['rps']:.1f}: x{r['gain_over_1_worker']:.2f}; server CPU "
            f"{r['service']['server_cpu']:.2f} vs {one['service']['server_cpu']:.2f} cores"
        )
    by_target = {(r["query"], r.get("target")): r for r in rows if r["service"] is not None}
    for query in dict.fromkeys(r["query"] for r in rows):
        plain = by_target.get((query, "service-nometrics"))
        if plain is None:
            continue
        names = ("service", "service-nometrics", "service-traced")
        rps = {n: by_target[(query, n)]["service"]["rps"] for n in names if (query, n) in by_target}
        on_off = rps["service"] / rps["service-nometrics"]
        line = f"observability {query}: metrics on/off {on_off:.3f}"
        if "service-traced" in rps:
            line += f", traced/untraced {rps['service-traced'] / rps['service']:.3f}"
        print(line)
    for note in skipped:
        print(f"not measured: {note}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--database-url", default=DEFAULT_URL)
    add("--connections", type=int, default=12, help="concurrent connections, 1 request each")
    add("--drivers", type=int, default=1, help="driver processes sharing the connections")
    add("--duration", type=float, default=10.0, metavar="S", help="measured seconds per cell")
    add("--warmup", type=float, default=2.0, metavar="S", help="unmeasured seconds per cell")
    add("--base-port", type=int, default=8190, help="service; +1 baseline, +2 baseline-json, +3..")
    add(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"servers to measure, of {','.join(TARGETS)}",
    )
    add("--queries", default="q1,q2,q3")
    add("--workers", default="1", help="service worker counts: 2, or 1,2 to compare (1: no flag)")
    add("--json-out", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    add("--soak", type=float, metavar="S", help="instead: mixed load for S seconds, RSS sampled")
    add("--soak-interval", type=float, default=5.0, metavar="S", help="RSS sample period")
    add("--soak-warmup", type=float, metavar="S", help="before the start RSS [min(300, soak/3)]")
    add("--keep-logs", action="store_true", help="keep the servers' log files")
    add(
        "--tuned-baselines",
        action="store_true",
        help="baselines with orjson and no pool reset query, as the service has",
    )
    args = parser.parse_args()
    args.queries = args.queries.split(",")
    args.targets = args.targets.split(",")
    try:
        args.workers = [int(n) for n in args.workers.split(",")]
    except ValueError:
        parser.error("--workers takes counts separated by commas, e.g. 1,2")
    if unknown := set(args.queries) - set(QUERIES):
        parser.error(f"unknown queries {sorted(unknown)}")
    if unknown := set(args.targets) - set(TARGETS):
        parser.error(f"unknown targets {sorted(unknown)}")
    if any(n < 1 for n in args.workers) or len(set(args.workers)) != len(args.workers):
        parser.error("--workers: distinct counts of at least 1")
    if not 1 <= args.drivers <= args.connections:
        parser.error("--drivers must be between 1 and --connections")
    if args.soak is not None:
        if args.soak <= 0:
            parser.error("--soak takes a positive number of seconds")
        args.targets = ["service"]
        if args.soak_warmup is None:
            # The service's RSS climbs for ~5 minutes (allocator high-water), then stays flat.
            args.soak_warmup = min(300.0, args.soak / 3)
        if not 0 <= args.soak_warmup < args.soak:
            parser.error("--soak-warmup must be shorter than --soak")
    return args


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    args = parse_args()
    header = run_header(args)
    print_header(header)
    logs = Path(tempfile.mkdtemp(prefix="perf_load-"))
    targets = plan_targets(args.targets, args.workers, args.base_port, logs, args.tuned_baselines)
    started = list(targets)  # prepare() drops a target that could not start; all get stopped
    busy = [f"{t.port} ({t.name}): {user}" for t in targets if (user := port_user(t.port))]
    if busy:
        shutil.rmtree(logs)
        sys.exit("ports in use, stop what holds them or pick --base-port:\n  " + "\n  ".join(busy))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    token = issue_token(Settings(jwt_secret=SECRET), personas=["exec"], subject="perf-bench")
    headers = {"Authorization": f"Bearer {token}"}
    drivers: Drivers | None = None
    results: list[Result] = []
    soaks: list[dict[str, Any]] = []
    skipped: list[str] = []
    different: list[str] = []
    failed = False
    try:
        for t in targets:
            start_target(t, args.database_url)
        # After the servers: the pool's threads must not exist while preexec_fn runs.
        drivers = Drivers(args.drivers, token)
        skipped, different = asyncio.run(prepare(targets, headers))
        if args.soak is not None:
            for t in targets:
                soaks.append(soak(drivers, t, args))
                print_soak(soaks[-1])
        else:
            for n, query in enumerate(args.queries):
                for t in targets:
                    load = Load(query, args.connections, args.warmup, args.duration, 100 * n)
                    r = measure(drivers, t, load)
                    results.append(r)
                    print_result(r)
    except KeyboardInterrupt:
        raise SystemExit("interrupted: servers stopped") from None
    except Exception:
        failed = True
        raise
    finally:
        if drivers is not None:
            drivers.close()
        for note in stop_targets(started):
            print(f"warning: {note}", file=sys.stderr)
        if failed or args.keep_logs:
            print(f"server logs kept in {logs}", file=sys.stderr)
        else:
            shutil.rmtree(logs, ignore_errors=True)
    rows = summarise(results)
    if results:
        print_summary(header, rows, skipped)
        if different:
            print("WARNING: the targets' answers differ (see the checks above): ratios not valid")
        driver = max(r.driver_cpu for r in results)
        other = max(r.other_cpu for r in results)
        print(
            f"driver CPU: at most {driver:.2f} cores in one cell, over {args.drivers} process(es) "
            f"(asyncio); other CPU (not servers, PostgreSQL or driver): at most {other:.2f} cores"
        )
        if other > QUIET_OTHER_CPU:
            print(
                f"WARNING: other processes used up to {other:.2f} of {header['nproc']} cores during"
                " the cells: the machine was not quiet, so these figures are not comparable with a"
                " quiet run's (the ratios of one run are less affected than the req/s)"
            )
    if args.json_out:
        out = {
            "header": header,
            "results": [r.figures() for r in results],
            "summary": rows,
            "soak": soaks,
            "not_measured": skipped,
            "different_answers": different,
        }
        args.json_out.write_text(json.dumps(out, indent=1) + "\n")
        print(f"figures written to {args.json_out}")


if __name__ == "__main__":
    main()
