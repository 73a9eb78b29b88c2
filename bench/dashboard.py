"""Dashboards at scorecard speed: summaries and series from rollups, against two baselines.

Starts the service (`mim serve`, one worker; and again as `fresh`, with kept answers off, so that
every answer is computed from the rollups) and two baselines (bench/dashboard_baseline.py:
`raw`, one aggregate statement over the raw observations; `rollup`, one statement over tables
materialized once, the physical limit) on the benchmark database, checks that they answer alike,
and drives each document with `--connections` keep-alive connections for `--duration` seconds
(after `--warmup`), exec token:

- list:       the plain KPI list, `{ kpis { slug name units visibility targets { ... } } }`
- dashboard:  the README's exec dashboard, every visible KPI's P1 summary
- series:     mttr's 13-week P1 series (start count mean p50 p90 meetsTarget)
- series-all: a 13-week series for every visible KPI
- dashboard-304: the dashboard by GET with If-None-Match of its current tag

It prints req/s and p50/p99 per cell and the ratios the goals name. With `--writes`, it also
times the write side on a scratch copy of the rows: `recordObservations` of 1,000 rows, and a
backfill of mttr (compute.run over every incident), with the rollup triggers and without them.

    .venv/bin/python bench/perf_data.py                    # 100,000 incidents (~1 min)
    .venv/bin/python bench/dashboard.py
    .venv/bin/python bench/perf_data.py --incidents 1000000 \\
        --database-url postgresql://postgres@127.0.0.1:5432/mim_perf_bench_1m
    .venv/bin/python bench/dashboard.py \\
        --database-url postgresql://postgres@127.0.0.1:5432/mim_perf_bench_1m
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import jwt

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import dashboard_baseline  # noqa: E402
import perf_load  # noqa: E402  (the lean HTTP client and process helpers)

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/mim_perf_bench"
SECRET = perf_load.SECRET
HOST = "127.0.0.1"
LIST = "{ kpis { slug name units visibility targets { severity persona comparison threshold } } }"
DASHBOARD = (
    "{ kpis { slug name units summary(severity: P1) { count value "
    "target { comparison threshold } meetsTarget } } }"
)
SERIES_ONE = (
    '{{ kpi(slug: "mttr") {{ series(bucket: WEEK, from: "{start}", to: "{end}", severity: P1) '
    "{{ start count mean p50 p90 }} }} }}"
)
SERIES_ALL = (
    '{{ kpis {{ slug series(bucket: WEEK, from: "{start}", to: "{end}") '
    "{{ start count mean p50 p90 }} }} }}"
)
WEEKS = 13


class Server:
    def __init__(
        self, name: str, port: int, command: list[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name, self.port, self.command, self.log = name, port, command, log
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, url: str) -> None:
        env = {**os.environ, "DATABASE_URL": url, "MIM_JWT_SECRET": SECRET, "MIM_GRAPHIQL": "0"}
        env.update(self.env)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=perf_load._die_with_parent,
            )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def token() -> str:
    now = int(time.time())
    claims = {"sub": "bench", "persona": "exec", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def post_bytes(port: int, query: str, bearer: str) -> bytes:
    data = json.dumps({"query": query}).encode()
    head = (
        f"POST /graphql HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {bearer}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def get_bytes(port: int, query: str, bearer: str, tag: str) -> bytes:
    return (
        f"GET /graphql?{urlencode({'query': query})} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Authorization: Bearer {bearer}\r\nIf-None-Match: {tag}\r\n\r\n"
    ).encode()


_parse_with_body = perf_load.parse_response


def parse(buffer: bytearray) -> tuple[int, bytes, int] | None:
    """perf_load's parser, plus responses that have no body by status (304)."""
    end = buffer.find(b"\r\n\r\n")
    if end >= 0 and buffer[9:12] == b"304":
        return 304, b"", end + 4
    return _parse_with_body(buffer)


perf_load.parse_response = parse  # the lean client reads 304s too


async def request(port: int, data: bytes) -> tuple[int, bytes, dict[str, str]]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(data)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(1 << 24), 60)
    while b"\r\n\r\n" not in raw or (
        b"content-length" in raw.lower() and len(raw) < _expected(raw)
    ):
        more = await asyncio.wait_for(reader.read(1 << 24), 60)
        if not more:
            break
        raw += more
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), body, headers


def _expected(raw: bytes) -> int:
    head, _, _ = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return 0


async def wait_ready(server: Server, bearer: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert server.proc is not None
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            status, _, _ = await request(server.port, post_bytes(server.port, LIST, bearer))
            if status in (200, 400):
                return
        await asyncio.sleep(0.3)
    raise RuntimeError(f"{server.name} did not start")


async def load(port: int, data: bytes, connections: int, warmup: float, duration: float) -> dict:
    """Drive one request, over and over; return req/s and latency percentiles."""
    loop = asyncio.get_running_loop()
    begin = time.monotonic()
    measure_from, stop_at = begin + warmup, begin + warmup + duration
    latencies: list[float] = []
    problems: list[str] = []

    async def one() -> None:
        _, client = await loop.create_connection(perf_load.Client, HOST, port)
        while time.monotonic() < stop_at:
            started = time.monotonic()
            # The raw baseline at a million incidents takes seconds a request.
            status, body = await client.request(data, 600)
            ended = time.monotonic()
            if status not in (200, 304) or b'"errors"' in body:
                problems.append(f"{status} {body[:200]!r}")
            elif measure_from <= ended <= stop_at:
                latencies.append(ended - started)
        client.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "rps": len(latencies) / duration,
        "p50_ms": pct(0.5) if latencies else math.nan,
        "p99_ms": pct(0.99) if latencies else math.nan,
        "errors": len(problems),
        "first_problem": problems[0] if problems else "",
    }


def close(a: Any, b: Any, path: str = "") -> list[str]:
    """Differences between two answers: exact but for floats (relative 1e-9; p50/p90 looser)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        pairs = enumerate(zip(a, b, strict=True))
        return [d for n, (x, y) in pairs for d in close(x, y, f"{path}[{n}]")]
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        # p50/p90 are estimated beyond 128 values per group (rank error <= 1%): compare loosely.
        tolerance = 0.05 if path.endswith(("p50", "p90")) else 1e-9
        return (
            [] if math.isclose(a, b, rel_tol=tolerance, abs_tol=1e-9) else [f"{path}: {a} != {b}"]
        )
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


async def weeks_of(url: str) -> list[datetime]:
    """The last 13 whole weeks (Monday, UTC) before the newest observation."""
    conn = await asyncpg.connect(url)
    try:
        newest = await conn.fetchval(
            "SELECT max(timestamp) FROM kpi_observation WHERE kpi = 'mttr'"
        )
        for statement in dashboard_baseline.MATERIALIZE:
            await conn.execute(statement)
    finally:
        await conn.close()
    monday = (newest - timedelta(days=newest.weekday())).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    return [monday - timedelta(days=7 * (WEEKS - n)) for n in range(WEEKS)]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    weeks = await weeks_of(args.database_url)
    bounds = {"start": weeks[0].isoformat(), "end": (weeks[-1] + timedelta(days=7)).isoformat()}
    documents = {
        "list": LIST,
        "dashboard": DASHBOARD,
        "series": SERIES_ONE.format(**bounds),
        "series-all": SERIES_ALL.format(**bounds),
    }
    logs = Path(tempfile.mkdtemp(prefix="mim-dashboard-"))
    spec = logs / "documents.json"
    spec.write_text(json.dumps({
        "dashboard": documents["dashboard"], "series_one": documents["series"],
        "series_all": documents["series-all"], "weeks": [w.isoformat() for w in weeks],
    }))  # fmt: skip
    base = args.port
    servers = {
        "service": Server("service", base, [str(ROOT / ".venv/bin/mim"), "serve", "--host", HOST,
                                            "--port", str(base)], logs / "service.log"),
        "raw": Server("raw", base + 1, [sys.executable, str(ROOT / "bench/dashboard_baseline.py"),
                                        "--port", str(base + 1), "--mode", "raw",
                                        "--documents", str(spec)], logs / "raw.log"),
        "rollup": Server("rollup", base + 2, [sys.executable,
                                              str(ROOT / "bench/dashboard_baseline.py"),
                                              "--port", str(base + 2), "--mode", "rollup",
                                              "--documents", str(spec)], logs / "rollup.log"),
        # The service computing every answer afresh: kept answers off (server/answers.py).
        "fresh": Server("fresh", base + 3, [str(ROOT / ".venv/bin/mim"), "serve", "--host", HOST,
                                            "--port", str(base + 3)], logs / "fresh.log",
                        {"MIM_ANSWER_CACHE": "0"}),
    }  # fmt: skip
    bearer = token()
    results: dict[str, Any] = {"weeks": bounds, "cells": {}, "differences": {}, "first_ms": {}}
    try:
        for server in servers.values():
            server.start(args.database_url)
        for server in servers.values():
            await wait_ready(server, bearer)
        # The same answers (a warm-up too: the service summarizes its groups once).
        for name in ("dashboard", "series", "series-all"):
            answers = {}
            for target in ("service", "fresh", "raw", "rollup"):
                port = servers[target].port
                started = time.perf_counter()
                status, body, _ = await request(port, post_bytes(port, documents[name], bearer))
                took = (time.perf_counter() - started) * 1000
                results["first_ms"][f"{name}/{target}"] = took
                print(f"{name:<14} {target:<8} first request {took:9.1f} ms", flush=True)
                assert status == 200, (target, body[:300])
                answers[target] = json.loads(body)
                assert "errors" not in answers[target], (target, answers[target])
            results["differences"][name] = {
                t: close(answers["service"], answers[t])[:3] for t in ("fresh", "raw", "rollup")
            }
        port = base
        _, _, headers = await request(
            port, get_bytes(port, documents["dashboard"], bearer, '"none"')
        )
        tag = headers["etag"]
        cells: list[tuple[str, str, bytes]] = [
            ("list", "service", post_bytes(port, LIST, bearer)),
        ]
        for name in ("dashboard", "series", "series-all"):
            for target in ("service", "fresh", "raw", "rollup"):
                p = servers[target].port
                cells.append((name, target, post_bytes(p, documents[name], bearer)))
        cells.append(("dashboard-304", "service", get_bytes(port, DASHBOARD, bearer, tag)))
        for name, target, data in cells:
            p = servers[target].port
            cell = await load(p, data, args.connections, args.warmup, args.duration)
            results["cells"][f"{name}/{target}"] = cell
            print(
                f"{name:<14} {target:<8} {cell['rps']:>9.1f} req/s  p50 {cell['p50_ms']:6.2f} ms"
                f"  p99 {cell['p99_ms']:6.2f} ms  errors {cell['errors']}"
                + (f"  ({cell['first_problem']})" if cell["errors"] else ""),
                flush=True,
            )
    finally:
        for server in servers.values():
            server.stop()
    return results


def summary(results: dict[str, Any]) -> None:
    cells = results["cells"]

    def rps(key: str) -> float:
        # A cell with no request answered inside its measured seconds (the raw baseline at a
        # million incidents) counts one, so that ratios stay defined (and flattering it).
        return float(cells[key]["rps"]) or 1 / cells[key].get("duration", 8.0)

    listing = rps("list/service")
    print("\nratios (same run):")
    for name in ("dashboard", "series", "series-all"):
        service, fresh, rollup = (rps(f"{name}/{t}") for t in ("service", "fresh", "rollup"))
        print(
            f"  {name:<11} service/list {service / listing:5.3f}   service/raw "
            f"{service / rps(f'{name}/raw'):6.2f}   service/rollup {service / rollup:5.3f}"
            f"   fresh/rollup {fresh / rollup:5.3f} (kept answers off)"
        )
    print(f"  304         /list {rps('dashboard-304/service') / listing:5.3f}")
    for name, found in results["differences"].items():
        for target, lines in found.items():
            if lines:
                print(f"  answers differ ({name}, {target}): {lines}")


# --- the write side: with the rollups' and the generation's triggers, and without ---------------

TRIGGERS = (
    ("kpi_rollup_insert", "kpi_observation"),
    ("kpi_rollup_delete", "kpi_observation"),
    ("kpi_rollup_update", "kpi_observation"),
    ("kpi_rollup_severity", "incident"),
    ("incident_forget_observations", "incident"),
    *(("mim_generation_touch", table) for table in
      ("kpi_definition", "kpi_revision", "incident", "alert", "timeline_event", "milestone",
       "survey_response", "kpi_observation", "kpi_recompute")),
)  # fmt: skip


async def triggers(url: str, enabled: bool) -> None:
    """Enable or disable (ALTER TABLE ... DISABLE TRIGGER) this issue's triggers."""
    conn = await asyncpg.connect(url)
    try:
        verb = "ENABLE" if enabled else "DISABLE"
        for name, table in TRIGGERS:
            await conn.execute(f"ALTER TABLE {table} {verb} TRIGGER {name}")
    finally:
        await conn.close()


async def writes(url: str, rounds: int) -> dict[str, Any]:
    """Time recordObservations of 1,000 rows and mttr's backfill (every row written), with and
    without the triggers."""
    os.environ["DATABASE_URL"] = url
    from registry import compute, db, observations, rollups
    from registry.model import Persona, Viewer
    from registry.observations import ObservationInput

    await db.open_engine(statement_timeout_seconds=600)
    ingest = Viewer(subject="bench", personas=frozenset({Persona.INGEST}))
    conn = await asyncpg.connect(url)
    keys = [r["key"] for r in await conn.fetch("SELECT key FROM incident ORDER BY id LIMIT 1000")]
    await conn.close()
    times: dict[str, list[float]] = {"record/on": [], "record/off": [],
                                     "backfill/on": [], "backfill/off": []}  # fmt: skip
    mttr = await compute.computed_kpis(["mttr"])
    try:
        for n in range(rounds):
            for state in ("off", "on") if n % 2 else ("on", "off"):
                await triggers(url, state == "on")
                # New rows each time: 1,000 incidents, one instant per round and state.
                at = datetime.fromisoformat("2030-01-01T00:00:00+00:00") + timedelta(
                    hours=2 * n + (state == "on")
                )
                inputs = [
                    ObservationInput(kpi_slug="perf-kpi-01", incident_key=key, timestamp=at,
                                     value=float(i % 97), source="bench")
                    for i, key in enumerate(keys)
                ]  # fmt: skip
                started = time.perf_counter()
                await observations.record(viewer=ingest, inputs=inputs)
                times[f"record/{state}"].append(time.perf_counter() - started)
                # A backfill that writes every row: mttr's computed rows are taken away first
                # (untimed), so the timed run inserts one per resolved incident.
                conn = await asyncpg.connect(url)
                await conn.execute("DELETE FROM kpi_observation WHERE kpi = 'mttr'")
                await conn.close()
                started = time.perf_counter()
                await compute.run(mttr)
                times[f"backfill/{state}"].append(time.perf_counter() - started)
    finally:
        await triggers(url, True)
        conn = await asyncpg.connect(url)
        await conn.execute("DELETE FROM kpi_observation WHERE source = 'bench'")
        await conn.close()
        await rollups.rebuild()  # the rows written with the triggers off
        await db.close_engine()
    return {key: min(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--port", type=int, default=8190)
    parser.add_argument("--connections", type=int, default=12)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--writes", type=int, default=0, help="rounds of the write side")
    parser.add_argument("--no-reads", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if not args.no_reads:
        results = asyncio.run(run(args))
        summary(results)
    if args.writes:
        found = asyncio.run(writes(args.database_url, args.writes))
        results["writes"] = found
        print("\nwrites (best of rounds; triggers on / off):")
        for what in ("record", "backfill"):
            on, off = found[f"{what}/on"], found[f"{what}/off"]
            print(f"  {what:<9} {on * 1000:9.1f} ms / {off * 1000:9.1f} ms = {on / off:5.3f}")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
