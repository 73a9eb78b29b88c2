"""A real crash: the test's own PostgreSQL cluster is killed under load, then started again.

The test makes a cluster of its own (initdb in a temporary directory, a free loopback port, trust
auth, fsync and synchronous_commit left on), migrates it with `mim migrate` and serves it with
`mim serve` as a subprocess. Under concurrent ingest (batches of observations, incident upserts
that recompute mttr) and reads, it kills the server with `pg_ctl stop -m immediate` (every
backend dies at once, nothing is checkpointed), keeps sending requests through the outage, and
starts the cluster again (crash recovery replays the WAL). Afterwards, read straight from the
cluster: every acknowledged write is there, no batch or upsert is partly there, and the rollups
the triggers keep equal the raw rows; the same service process answers again, and while the
database was away every request got a quick, coded UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from registry import rollups
from tests.conftest import ENV, is_postgres, make_token
from tests.registry.test_trends import floor_bucket
from tests.security.test_faults import Result, free_port

pytestmark = [
    pytest.mark.security,
    pytest.mark.skipif(not is_postgres(), reason="runs in the PostgreSQL half"),
]

MIM = str(Path(sys.executable).parent / "mim")
ROOT = Path(__file__).resolve().parents[2]
REQUEST_TIMEOUT = 5.0  # MIM_REQUEST_TIMEOUT for the served process
# "Quickly": under the request time limit, with a margin a loaded 2-core machine cannot exceed.
FAIL_FAST_SECONDS = REQUEST_TIMEOUT + 3.0
RECOVERY_SECONDS = 20.0
OUTAGE_SECONDS = 2.0
BATCH = 100  # observations per recordObservations batch
SEVERITIES = ("P1", "P2", "P3", "P4")
INCIDENTS = {f"INC-CRASH-{s}": s for s in SEVERITIES}  # the batches' incidents
DETECTED = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
TOKENS = {p: make_token(p, ttl=3600) for p in ("ingest", "responder", "exec")}
GRAINS = {"D": "DAY", "W": "WEEK", "M": "MONTH"}

UPSERT = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id } }"
RECORD_MANY = """
mutation ($inputs: [RecordObservationInput!]!) { recordObservations(inputs: $inputs) { value } }
"""
READ = "{ kpis { slug } incidents(first: 5) { totalCount edges { node { id title } } } }"
DASHBOARD = "{ kpis { slug summary { count value } } }"
COUNT = "query ($slug: String!) { kpi(slug: $slug) { summary { count } } }"
# kind -> (persona, query); "write" and "upsert" build their variables from a sequence number.
KINDS = {
    "write": ("ingest", RECORD_MANY),
    "upsert": ("ingest", UPSERT),
    "read": ("responder", READ),
    "dashboard": ("exec", DASHBOARD),
}
WORKERS = ["write"] * 3 + ["upsert", "read", "dashboard", "rest"]
# asyncpg's SSL negotiation (sslmode=prefer, the default) can leave a future holding the
# ConnectionError of a connection the dying or starting server closed; asyncio logs it at ERROR
# ("Future exception was never retrieved") when it is collected, a few times in a hundred
# crashes. It is log noise inside the driver: every answer is checked below.
DRIVER_NOISE = "unexpected connection_lost() call"
UNRETRIEVED = "Future exception was never retrieved"


# --- the cluster --------------------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """Return the directory of initdb, pg_ctl and postgres, or None when they are absent."""
    candidates = []
    if pg_config := shutil.which("pg_config"):
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidates.append(Path(found.stdout.strip()))
    candidates.append(Path("/usr/lib/postgresql/15/bin"))
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def as_postgres() -> list[str]:
    """Return the command prefix that runs a program as a user PostgreSQL agrees to run as."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root, and there is no 'postgres' OS user to run PostgreSQL as")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root, and there is no runuser to run PostgreSQL as 'postgres'")
    return [runuser, "-u", "postgres", "--"]


@dataclass
class Cluster:
    bindir: Path
    prefix: list[str]
    home: Path
    port: int

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log_path(self) -> Path:
        return self.home / "postgres.log"

    def url(self, database: str = "mim") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return repr(error)
        return "\n".join(text.splitlines()[-lines:])

    async def run(self, program: str, *args: str) -> tuple[int, str]:
        """Run a PostgreSQL program as its user; return its exit status and output."""
        process = await asyncio.create_subprocess_exec(
            *self.prefix,
            str(self.bindir / program),
            *args,
            cwd=self.home,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        return process.returncode or 0, output.decode(errors="replace")

    async def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.home}"
        )
        status, output = await self.run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log_path),
            "-o", options,
        )  # fmt: skip
        assert status == 0, f"pg_ctl start failed: {output}\n{self.log_tail()}"

    async def crash(self) -> None:
        """Kill the server: every process quits at once, no checkpoint (recovery replays WAL)."""
        status, output = await self.run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.data))
        assert status == 0, f"pg_ctl stop -m immediate failed: {output}"


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """A PostgreSQL cluster of this test's own, with an empty database `mim`; removed after."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("the PostgreSQL server binaries (initdb, pg_ctl, postgres) are not installed")
    prefix = as_postgres()
    # Under /tmp, which the postgres user can reach (pytest's own temporary tree is root's only).
    home = Path(tempfile.mkdtemp(prefix="mim-crash-", dir="/tmp" if prefix else None))
    try:
        if prefix:
            shutil.chown(home, "postgres", "postgres")
        made = Cluster(bindir, prefix, home, free_port())
        status, output = await made.run(
            "initdb", "-D", str(made.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        assert status == 0, f"initdb failed: {output}"
        try:
            await made.start()
            connection = await asyncpg.connect(made.url("postgres"))
            try:
                await connection.execute("CREATE DATABASE mim")
            finally:
                await connection.close()
            yield made
        finally:
            await made.run("pg_ctl", "stop", "-m", "immediate", "-D", str(made.data))
    finally:
        shutil.rmtree(home, ignore_errors=True)


# --- the service as a subprocess ----------------------------------------------------------------


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    base: str
    log_path: Path

    def url(self, path: str) -> str:
        return self.base + path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def errors_logged(self) -> list[str]:
        """Return the log lines at level ERROR or above (an unexpected error, a crash), but the
        driver's noise (DRIVER_NOISE)."""
        lines = []
        for line in self.log().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # aiohttp's banner
            if not isinstance(entry, dict) or entry.get("level") not in ("ERROR", "CRITICAL"):
                continue
            message = str(entry.get("message"))
            if not (message.startswith(UNRETRIEVED) and DRIVER_NOISE in message):
                lines.append(line)
        return lines


@pytest.fixture
async def service(cluster: Cluster, tmp_path: Path) -> AsyncIterator[Service]:
    """`mim migrate`, then `mim serve` on its own port, on the test's cluster."""
    env = {
        **os.environ,
        **ENV,
        "DATABASE_URL": cluster.url(),
        "MIM_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
        "MIM_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    migrate = await asyncio.create_subprocess_exec(
        MIM, "migrate", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await migrate.communicate()
    assert migrate.returncode == 0, f"mim migrate failed:\n{output.decode(errors='replace')}"
    port = free_port()
    log_path = tmp_path / "mim-serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [MIM, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    served = Service(process, f"http://127.0.0.1:{port}", log_path)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                assert process.poll() is None, f"mim serve exited:\n{served.log_tail()}"
                try:
                    async with session.get(served.url("/readyz")) as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"mim serve did not become ready:\n{served.log_tail()}")
        yield served
    finally:
        process.terminate()
        for _ in range(100):
            if process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        else:
            process.kill()
            process.wait()


# --- load ---------------------------------------------------------------------------------------


def batch_of(n: int) -> list[dict[str, Any]]:
    """Batch n's observations: its own source and instants (9 h apart), over both KPIs and all
    four incidents, so that it can be counted and its rows land in several rollup groups."""
    start = DETECTED + timedelta(hours=9 * n)
    keys = list(INCIDENTS)
    return [
        {
            "kpiSlug": ("mttr", "mtta")[i % 2],
            "incidentId": keys[i // 2 % 4],
            "timestamp": (start + timedelta(seconds=i)).isoformat(),
            "value": round(0.1 * (i + 1) + n, 1),
            "source": f"crash-{n}",
        }
        for i in range(BATCH)
    ]


def upserted(n: int) -> dict[str, Any]:
    """Incident n, resolved: the upsert computes its mttr (`minutes_of(n)`) in its transaction."""
    detected = DETECTED + timedelta(hours=5 * n)
    return {
        "id": f"INC-CRASH-U{n}",
        "title": f"Crash upsert {n}",
        "severity": SEVERITIES[n % 4],
        "detectedAt": detected.isoformat(),
        "resolvedAt": (detected + timedelta(minutes=minutes_of(n))).isoformat(),
    }


def minutes_of(n: int) -> int:
    return 7 + n % 90


@dataclass
class Load:
    service: Service
    session: aiohttp.ClientSession
    results: list[Result] = field(default_factory=list)
    in_flight: dict[int, tuple[str, float]] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    numbers: dict[str, itertools.count[int]] = field(
        default_factory=lambda: {"write": itertools.count(), "upsert": itertools.count()}
    )

    async def once(self, kind: str) -> Result:
        number = next(self.numbers[kind]) if kind in self.numbers else None
        if kind == "rest":
            request = self.session.get(
                self.service.url("/kpis"), headers={"Authorization": f"Bearer {TOKENS['exec']}"}
            )
        else:
            persona, query = KINDS[kind]
            variables: dict[str, Any] = {}
            if kind == "write":
                variables = {"inputs": batch_of(number or 0)}
            elif kind == "upsert":
                variables = {"input": upserted(number or 0)}
            request = self.session.post(
                self.service.url("/graphql"),
                json={"query": query, "variables": variables},
                headers={"Authorization": f"Bearer {TOKENS[persona]}"},
            )
        started = time.monotonic()
        self.in_flight[id(request)] = (kind, started)
        try:
            async with request as response:
                text = await response.text()
                status, retry_after = response.status, response.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError) as error:
            text, status, retry_after = f"{type(error).__name__}: {error}", 0, None
        finally:
            del self.in_flight[id(request)]
        ended = time.monotonic()
        try:
            body = json.loads(text)
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        result = Result(kind, started, ended, status, body, text, retry_after, number)
        self.results.append(result)
        return result

    async def worker(self, kind: str) -> None:
        while not self.stop.is_set():
            await self.once(kind)
            await asyncio.sleep(0.02)

    async def write_under_way(self, seconds: float = 0.01) -> float:
        """Wait until a batch has been in flight for `seconds`; return the moment it is so."""
        while True:
            now = time.monotonic()
            if any(k == "write" and now - t >= seconds for k, t in self.in_flight.values()):
                return now
            await asyncio.sleep(0.002)


async def readyz(session: aiohttp.ClientSession, service: Service) -> tuple[int, float, str]:
    started = time.monotonic()
    try:
        async with session.get(service.url("/readyz")) as response:
            return response.status, time.monotonic() - started, await response.text()
    except aiohttp.ClientError as error:
        return 0, time.monotonic() - started, repr(error)


async def count_of(session: aiohttp.ClientSession, service: Service, slug: str) -> Any:
    """Return the observations the service's summary of `slug` counts, or its error body."""
    async with session.post(
        service.url("/graphql"),
        json={"query": COUNT, "variables": {"slug": slug}},
        headers={"Authorization": f"Bearer {TOKENS['responder']}"},
    ) as response:
        body = await response.json()
    if response.status != 200 or body.get("errors"):
        return body
    return body["data"]["kpi"]["summary"]["count"]


# --- what the cluster holds after recovery ------------------------------------------------------


@dataclass
class Stored:
    batch_rows: Counter[int]  # batch number -> its observations found
    incidents: dict[str, str]  # key -> severity
    computed: dict[str, list[float]]  # key -> its computed mttr values
    raw_counts: Counter[str]  # kpi -> observations
    rollup_mismatches: list[str]


async def read_back(url: str) -> Stored:
    connection = await asyncpg.connect(url)
    try:
        batches = await connection.fetch(
            "SELECT source, count(*) AS n FROM kpi_observation "
            "WHERE source LIKE 'crash-%' GROUP BY source"
        )
        incidents = await connection.fetch("SELECT key, severity FROM incident")
        computed = await connection.fetch(
            "SELECT i.key, o.value FROM kpi_observation AS o JOIN incident AS i "
            "ON i.id = o.incident WHERE o.kpi = 'mttr' AND o.source = 'computed'"
        )
        raw = await connection.fetch(
            "SELECT o.kpi, i.severity, o.timestamp, o.value FROM kpi_observation AS o "
            "JOIN incident AS i ON i.id = o.incident"
        )
        rollup_rows = await connection.fetch("SELECT * FROM kpi_rollup")
    finally:
        await connection.close()
    by_key: dict[str, list[float]] = defaultdict(list)
    for row in computed:
        by_key[row["key"]].append(row["value"])
    return Stored(
        batch_rows=Counter({int(r["source"].removeprefix("crash-")): r["n"] for r in batches}),
        incidents={r["key"]: r["severity"] for r in incidents},
        computed=dict(by_key),
        raw_counts=Counter(r["kpi"] for r in raw),
        rollup_mismatches=rollup_mismatches(raw, rollup_rows),
    )


def rollup_mismatches(raw: list[Any], rollup_rows: list[Any]) -> list[str]:
    """Compare every kpi_rollup row with its group's count and exact sum in the raw rows, as
    tests/registry/test_rollups.py does; return what disagrees."""
    want: dict[tuple[str, str, str, datetime], list[float]] = defaultdict(list)
    for row in raw:
        moment = rollups.as_utc(row["timestamp"])
        for grain, bucket in GRAINS.items():
            want[(row["kpi"], grain, row["severity"], floor_bucket(moment, bucket))].append(
                row["value"]
            )
    got = {
        (r["kpi"], r["grain"], r["severity"], rollups.as_utc(r["start"])): (
            r["n"],
            r["total"] + r["residue"],
        )
        for r in rollup_rows
    }
    wrong = []
    for key, values in want.items():
        expected = (len(values), math.fsum(values))
        if got.get(key) != expected:
            wrong.append(f"{key}: rollup {got.get(key)}, raw rows {expected}")
    wrong += [f"{k}: rollup {v}, no raw rows" for k, v in got.items() if k not in want and any(v)]
    return wrong


# --- the test -----------------------------------------------------------------------------------


async def test_a_crashed_database_loses_no_acknowledged_write_and_the_service_recovers(
    service: Service, cluster: Cluster, figure: Any
) -> None:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        load = Load(service, session)
        for key, severity in INCIDENTS.items():
            setup = await session.post(
                service.url("/graphql"),
                json={
                    "query": UPSERT,
                    "variables": {
                        "input": {
                            "id": key,
                            "title": key,
                            "severity": severity,
                            "detectedAt": DETECTED.isoformat(),
                        }
                    },
                },
                headers={"Authorization": f"Bearer {TOKENS['ingest']}"},
            )
            assert setup.status == 200 and "errors" not in await setup.json(), await setup.text()
        pid = service.process.pid

        workers = [asyncio.create_task(load.worker(kind)) for kind in WORKERS]
        try:
            await asyncio.sleep(1.5)
            warm = list(load.results)
            assert warm and all(r.ok for r in warm), [r for r in warm if not r.ok][:5]

            # Kill the server while a batch is in flight (its transaction is likely open).
            crash_at = await asyncio.wait_for(load.write_under_way(), timeout=10)
            await cluster.crash()
            down_at = time.monotonic()

            await asyncio.sleep(OUTAGE_SECONDS)
            down = [await readyz(session, service) for _ in range(3)]
            async with session.get(service.url("/healthz")) as healthz:
                assert healthz.status == 200, "the process itself must stay live"

            restart_at = time.monotonic()
            await cluster.start()
            up_at = time.monotonic()

            recovered_at = None
            while time.monotonic() - up_at < RECOVERY_SECONDS:
                probe = await load.once("read")
                if probe.ok:
                    recovered_at = time.monotonic()
                    break
                await asyncio.sleep(0.1)
            assert recovered_at is not None, (
                f"no correct answer {RECOVERY_SECONDS:.0f} s after the database came back:"
                f"\n{service.log_tail()}"
            )
            await asyncio.sleep(1.5)
        finally:
            load.stop.set()
            await asyncio.gather(*workers, return_exceptions=True)

        # The same process writes and counts correctly again.
        after = await load.once("write")
        assert after.ok, f"{after}\n{service.log_tail()}"
        assert service.process.poll() is None and service.process.pid == pid
        stored = await read_back(cluster.url())
        counted = {slug: await count_of(session, service, slug) for slug in ("mttr", "mtta")}

    results = load.results
    report = f"\nserver log (tail):\n{service.log_tail()}\npostgres log:\n{cluster.log_tail()}"
    writes = [r for r in results if r.kind == "write"]
    upserts = [r for r in results if r.kind == "upsert"]
    acknowledged = [r for r in writes + upserts if r.ok]
    found = [r for r in writes if r.ok and stored.batch_rows[r.batch or 0] == BATCH]
    found += [
        r
        for r in upserts
        if r.ok
        and (key := upserted(r.batch or 0)["id"]) in stored.incidents
        and stored.computed.get(key) == [float(minutes_of(r.batch or 0))]
    ]
    partial = {n: c for n, c in stored.batch_rows.items() if c != BATCH}
    # An upsert's incident and its computed mttr commit together, or neither does.
    half_upserts = sorted(
        key
        for n in {r.batch or 0 for r in upserts}
        if ((key := upserted(n)["id"]) in stored.incidents) != (key in stored.computed)
    )
    outage = [r for r in results if r.started >= down_at and r.ended <= restart_at]
    # Sent before the server was surely gone, answered after the kill began.
    at_crash = [r for r in results if r.started < down_at and r.ended > crash_at]
    in_doubt = [r for r in writes if not r.ok and stored.batch_rows[r.batch or 0] == BATCH]
    failed = [r for r in results if not r.ok]
    worst = max((r.seconds for r in outage + at_crash + failed), default=0.0)
    figure("crash: writes acknowledged", len(acknowledged))
    figure("crash: acknowledged writes found", len(found))
    figure("crash: batches partly present", len(partial) + len(half_upserts))
    figure("crash: requests during the outage", len(outage))
    figure("crash: write batches overlapping the kill", sum(r.kind == "write" for r in at_crash))
    figure("crash: unacknowledged batches found committed", len(in_doubt))
    figure("crash: worst outage answer (ms)", int(1000 * worst), worst=True)
    figure("crash: recovery (s)", round(recovered_at - up_at, 2), worst=True)
    noise = sum(DRIVER_NOISE in line for line in service.log().splitlines())
    figure("crash: driver futures logged at ERROR", noise)

    # Durable and atomic: every acknowledged write survived the crash, nothing is half there.
    assert not partial, f"batches partly present after the crash (batch: rows): {partial}"
    assert not half_upserts, f"an incident without its computed mttr, or one alone: {half_upserts}"
    lost = [r for r in acknowledged if r not in found]
    assert not lost, f"acknowledged writes missing after the crash: {lost[:5]}{report}"
    assert after.batch is not None and stored.batch_rows[after.batch] == BATCH
    assert any(r.kind == "write" for r in at_crash), "no batch was in flight at the kill"
    # The rollups the triggers keep survived the crash equal to the raw rows, and the recovered
    # service counts from them what the raw rows hold.
    assert not stored.rollup_mismatches, stored.rollup_mismatches[:10]
    assert counted == {s: stored.raw_counts[s] for s in counted}, (counted, stored.raw_counts)

    # Never INTERNAL, a 500 or a stack trace; every failure is the clear retryable error.
    leaks = [r for r in results if "Traceback" in r.text or "INTERNAL" in r.codes]
    assert not leaks, f"{leaks[:5]}{report}"
    assert all(r.unavailable for r in failed), (
        f"{[r for r in failed if not r.unavailable][:5]}{report}"
    )
    assert not service.errors_logged(), f"{service.errors_logged()[:5]}{report}"
    # Quickly: nothing waited for a time limit, let alone hung.
    assert worst < FAIL_FAST_SECONDS, f"an answer took {worst:.1f} s{report}"
    # While the database was down, every request (each one needs it) failed, and /readyz said so.
    assert {r.kind for r in outage} == set(WORKERS), f"kinds sent during the outage: {outage}"
    assert all(r.unavailable for r in outage), (
        f"{[r for r in outage if not r.unavailable][:5]}{report}"
    )
    for status, seconds, text in down:
        assert status == 503 and '"unavailable"' in text, f"/readyz while down: {status} {text}"
        assert seconds < FAIL_FAST_SECONDS, f"/readyz took {seconds:.1f} s while down"
    # Once it answered again, it kept answering: no stale connection was handed out.
    settled = [r for r in results if r.started >= recovered_at]
    assert settled, "the load sent nothing after recovery"
    assert all(r.ok for r in settled), f"{[r for r in settled if not r.ok][:5]}{report}"
