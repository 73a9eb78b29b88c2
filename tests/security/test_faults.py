"""Fault injection: the database connection is cut under load, then restored (PostgreSQL only).

The real service runs as a subprocess (`mim serve`) whose DATABASE_URL points at a TCP proxy in
this test; the proxy pipes bytes to the real PostgreSQL and can be cut (listener closed, every
open connection aborted) and restored (listening again on the same port). The real PostgreSQL
server is never touched. While the proxy is cut, requests must fail fast with a retryable
UNAVAILABLE (never INTERNAL, never a hang), /readyz must say so, and once it is restored the same
process must answer again with no write left half done.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import aiohttp
import pytest

from registry.tables import KpiObservation
from tests.conftest import DATABASE_URL, ENV, is_postgres, make_token

pytestmark = pytest.mark.security

needs_postgres = pytest.mark.skipif(
    not is_postgres(),
    reason="needs PostgreSQL: set TEST_DATABASE_URL=postgresql://... (the proxy cuts its TCP link)",
)

MIM = str(Path(sys.executable).parent / "mim")
ROOT = Path(__file__).resolve().parents[2]
FAIL_FAST_SECONDS = 8.0  # generous for a loaded 2-core machine; the request timeout is 5 s
RECOVERY_SECONDS = 20.0
BATCH = 200  # observations per recordObservations batch
TOKENS = {p: make_token(p, ttl=3600) for p in ("ingest", "responder", "exec")}
INCIDENT = "INC-FAULT"
DETECTED = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

UPSERT = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id } }"
RECORD_MANY = """
mutation ($inputs: [RecordObservationInput!]!) { recordObservations(inputs: $inputs) { value } }
"""
READ = "{ kpis { slug } incidents(first: 5) { totalCount edges { node { id title } } } }"


# --- the proxy ------------------------------------------------------------------------------


class Proxy:
    """A TCP proxy to PostgreSQL that can be cut and restored, optionally on a COMMIT."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.connections = 0
        self.armed = False  # cut as the next COMMIT goes by, dropping it
        self.cut_at: float | None = None
        self.was_cut = asyncio.Event()

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and abort every open connection, both ways."""
        self.armed = False
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        self.cut_at = time.monotonic()
        self.was_cut.set()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()
        tasks = [t for t in self.tasks if t is not asyncio.current_task()]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self.writers.add(up_writer)
            self.connections += 1
            await asyncio.gather(
                self._pipe(reader, up_writer, upstream=True), self._pipe(up_reader, writer)
            )
        finally:
            self.tasks.discard(task)
            for w in (writer, up_writer):
                if w is not None:
                    self.writers.discard(w)
                    w.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool = False
    ) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and self.armed and b"COMMIT" in data:
                    # A write transaction is about to commit: its rows are inserted, not yet
                    # committed. Drop the COMMIT and cut everything, mid-transaction.
                    await self.cut()
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()


# --- the service as a subprocess -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def through(database_url: str, port: int) -> str:
    """Return the database URL with its host and port replaced by the proxy's."""
    parsed = urlparse(database_url)
    credentials = parsed.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunparse(parsed._replace(netloc=netloc))


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    base: str
    proxy: Proxy
    log_path: Path

    def url(self, path: str) -> str:
        return self.base + path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    """`mim serve` on its own port, its database reached through a proxy this test controls."""
    target = urlparse(DATABASE_URL)
    proxy = Proxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    port = free_port()
    log_path = tmp_path / "mim-serve.log"
    env = {
        **os.environ,
        **ENV,
        "DATABASE_URL": through(DATABASE_URL, proxy.port),
        "MIM_REQUEST_TIMEOUT": "5",
        "PYTHONUNBUFFERED": "1",
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [MIM, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    served = Service(process, f"http://127.0.0.1:{port}", proxy, log_path)
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
        # Terminate while the proxy still runs, so that the pool closes without waiting.
        process.terminate()
        for _ in range(100):
            if process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        else:
            process.kill()
            process.wait()
        await proxy.close()


# --- load -------------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str  # rest, read, write
    started: float
    ended: float
    status: int
    body: dict[str, Any]
    text: str
    retry_after: str | None = None
    batch: int | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def codes(self) -> list[str]:
        return [e.get("extensions", {}).get("code", "<none>") for e in self.body.get("errors", [])]

    @property
    def ok(self) -> bool:
        if self.kind == "rest":
            return self.status == 200 and "kpis" in self.body
        return self.status == 200 and not self.body.get("errors") and bool(self.body.get("data"))

    @property
    def unavailable(self) -> bool:
        """The clear retryable error the service promises while the database is down."""
        errors = self.body.get("errors") or []
        if not errors or any(e.get("extensions", {}).get("code") != "UNAVAILABLE" for e in errors):
            return False
        if self.status == 503:
            return self.kind != "rest" or self.retry_after is not None
        return (
            self.status == 200
            and self.kind != "rest"
            and all(e["extensions"].get("retryable") is True for e in errors)
        )

    def __repr__(self) -> str:
        return (
            f"<{self.kind} batch={self.batch} +{self.seconds:.2f}s HTTP {self.status} "
            f"{self.text[:240]}>"
        )


def batch_of(n: int) -> list[dict[str, Any]]:
    """Observations of one batch: its own instants and its own source, so it can be counted."""
    start = DETECTED + timedelta(days=n)
    return [
        {
            "kpiSlug": ("mttr", "mtta")[i % 2],
            "incidentId": INCIDENT,
            "timestamp": (start + timedelta(seconds=i)).isoformat(),
            "value": float(i),
            "source": f"batch-{n}",
        }
        for i in range(BATCH)
    ]


@dataclass
class Load:
    service: Service
    session: aiohttp.ClientSession
    results: list[Result] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    batches: itertools.count[int] = field(default_factory=itertools.count)

    async def once(self, kind: str, batch: int | None = None) -> Result:
        if kind == "rest":
            request = self.session.get(
                self.service.url("/kpis"),
                headers={"Authorization": f"Bearer {TOKENS['exec']}"},
            )
        else:
            query, variables, persona = (
                (RECORD_MANY, {"inputs": batch_of(batch or 0)}, "ingest")
                if kind == "write"
                else (READ, {}, "responder")
            )
            request = self.session.post(
                self.service.url("/graphql"),
                json={"query": query, "variables": variables},
                headers={"Authorization": f"Bearer {TOKENS[persona]}"},
            )
        started = time.monotonic()
        try:
            async with request as response:
                text = await response.text()
                status, retry_after = response.status, response.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError) as error:
            text, status, retry_after = f"{type(error).__name__}: {error}", 0, None
        ended = time.monotonic()
        try:
            body = json.loads(text)
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        result = Result(kind, started, ended, status, body, text, retry_after, batch)
        self.results.append(result)
        return result

    async def worker(self, kind: str) -> None:
        while not self.stop.is_set():
            await self.once(kind, next(self.batches) if kind == "write" else None)
            await asyncio.sleep(0.02)


async def batch_rows(n: int) -> int:
    count: int = await KpiObservation.count().where(KpiObservation.source == f"batch-{n}")
    return count


async def readyz(session: aiohttp.ClientSession, service: Service) -> tuple[int, float, str]:
    started = time.monotonic()
    try:
        async with session.get(service.url("/readyz")) as response:
            return response.status, time.monotonic() - started, await response.text()
    except aiohttp.ClientError as error:
        return 0, time.monotonic() - started, repr(error)


@needs_postgres
async def test_a_cut_database_fails_fast_and_recovers_without_a_restart_or_partial_write(
    service: Service, figure: Any
) -> None:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        load = Load(service, session)
        setup = await session.post(
            service.url("/graphql"),
            json={
                "query": UPSERT,
                "variables": {
                    "input": {
                        "id": INCIDENT,
                        "title": "Database cut",
                        "severity": "P1",
                        "detectedAt": DETECTED.isoformat(),
                    }
                },
            },
            headers={"Authorization": f"Bearer {TOKENS['ingest']}"},
        )
        assert setup.status == 200 and "errors" not in await setup.json(), await setup.text()
        pid = service.process.pid

        kinds = ["write"] * 4 + ["read"] * 2 + ["rest"] * 2
        workers = [asyncio.create_task(load.worker(kind)) for kind in kinds]
        try:
            await asyncio.sleep(1.0)
            warm = list(load.results)
            assert warm and all(r.ok for r in warm), [r for r in warm if not r.ok][:5]

            # Cut as a write transaction sends its COMMIT: its rows exist, uncommitted.
            service.proxy.armed = True
            await asyncio.wait_for(service.proxy.was_cut.wait(), timeout=10)
            cut_at = service.proxy.cut_at
            assert cut_at is not None
            figure("faults injected", 1)

            await asyncio.sleep(1.5)
            down: list[tuple[int, float, str]] = []
            for _ in range(3):
                down.append(await readyz(session, service))
                await asyncio.sleep(0.3)
            async with session.get(service.url("/healthz")) as healthz:
                assert healthz.status == 200, "the process itself must stay live"
            restored_at = time.monotonic()
            await service.proxy.restore()

            recovered_at = None
            while time.monotonic() - restored_at < RECOVERY_SECONDS:
                status, _, _ = await readyz(session, service)
                if status == 200:
                    recovered_at = time.monotonic()
                    break
                await asyncio.sleep(0.25)
            assert recovered_at is not None, (
                f"/readyz still not 200 {RECOVERY_SECONDS:.0f} s after the database came back:"
                f"\n{service.log_tail()}"
            )
            await asyncio.sleep(1.5)
        finally:
            load.stop.set()
            await asyncio.gather(*workers, return_exceptions=True)

        # After recovery, a write succeeds, in the same process.
        after = await load.once("write", next(load.batches))
        assert after.ok, f"{after}\n{service.log_tail()}"
        assert await batch_rows(after.batch or 0) == BATCH
        assert service.process.poll() is None and service.process.pid == pid
        figure("faults recovered", 1)

    results = load.results
    report = f"\nserver log (tail):\n{service.log_tail()}"
    outage = [r for r in results if r.started >= cut_at and r.ended <= restored_at]
    in_flight = [r for r in results if r.started < cut_at < r.ended]
    settled = [r for r in results if r.started >= recovered_at]
    failed = [r for r in results if not r.ok]
    figure("requests sent under load", len(results))
    figure("requests during the outage", len(outage) + len(in_flight))
    figure("requests answered UNAVAILABLE", sum(r.unavailable for r in results))
    figure("slowest failure (ms)", int(1000 * max((r.seconds for r in failed), default=0)))
    figure("recovery after restore (ms)", int(1000 * (recovered_at - restored_at)))

    # Never INTERNAL, a 500 or a stack trace; every failure is the clear retryable error.
    leaks = [r for r in results if "Traceback" in r.text or "INTERNAL" in r.codes]
    assert not leaks, f"{leaks[:5]}{report}"
    assert all(r.unavailable for r in failed), (
        f"{[r for r in failed if not r.unavailable][:5]}{report}"
    )
    assert "unexpected error" not in service.log(), report
    # Fast: nothing waits for a timeout.
    slow = [r for r in failed + outage if r.seconds >= FAIL_FAST_SECONDS]
    assert not slow, f"requests took {FAIL_FAST_SECONDS} s or more: {slow[:5]}{report}"
    # While the database is away, every request (each one needs it) fails, and /readyz says so.
    assert outage, "the load sent nothing during the outage"
    assert all(r.unavailable for r in outage), (
        f"{[r for r in outage if not r.unavailable][:5]}{report}"
    )
    assert {r.kind for r in outage} == {"rest", "read", "write"}
    for status, seconds, text in down:
        assert status == 503 and '"unavailable"' in text, f"/readyz while down: {status} {text}"
        assert seconds < FAIL_FAST_SECONDS, f"/readyz took {seconds:.1f} s while down"
    # Once ready again, the service answers without a restart.
    assert settled, "the load sent nothing after recovery"
    assert all(r.ok for r in settled), f"{[r for r in settled if not r.ok][:5]}{report}"

    # No partial write: every batch is wholly present or wholly absent; a successful one present.
    writes = [r for r in results if r.kind == "write"]
    counts = {r.batch: await batch_rows(r.batch or 0) for r in writes}
    partial = {n: c for n, c in counts.items() if c not in (0, BATCH)}
    figure("write batches in flight at the cut", sum(r.kind == "write" for r in in_flight))
    figure("partial writes found", len(partial))
    assert not partial, f"batches partly written (batch: rows): {partial}"
    assert all(counts[r.batch] == BATCH for r in writes if r.ok)
    cut_writes = [r for r in in_flight if r.kind == "write"]
    assert cut_writes, "no write was in flight when the proxy cut (it cuts on a COMMIT)"
    assert any(counts[r.batch] == 0 for r in cut_writes), "the dropped COMMIT's rows exist"
