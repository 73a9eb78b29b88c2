"""GraphQL throughput: the service against a raw aiohttp + asyncpg baseline, Q1-Q3.

Starts, as subprocesses of this run, one process each: the service (`.venv/bin/mim serve`), the
baseline (bench/perf_baseline.py) and the baseline building JSON in PostgreSQL; checks that all
three answer Q1-Q3 with the same data; then, per target and query, drives `--connections`
concurrent keep-alive connections (one aiohttp client session each, one request in flight per
connection) for `--warmup` seconds unmeasured and `--duration` seconds measured, and prints
requests/second, p50 and p99 latency, the ratios service/baseline, and the CPU used by each server
process and by this driver (so a saturated driver shows up).

Prepare the database first with bench/perf_data.py.

    .venv/bin/python bench/perf_load.py                       # 10 s per query per target
    .venv/bin/python bench/perf_load.py --duration 5 --warmup 1
    .venv/bin/python bench/perf_load.py --targets service,baseline --queries q2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
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
INCIDENTS = 100_000
GOALS = {"q1": 0.45, "q2": 0.51, "q3": 0.46}
QUERIES = {"q1": perf_baseline.Q1, "q2": perf_baseline.Q2, "q3": perf_baseline.Q3}
TARGETS = ("service", "baseline", "baseline-json")
# A request unanswered this long counts as an error (a stuck server must not hang the driver).
REQUEST_TIMEOUT = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def payload(query: str, rng: random.Random) -> dict[str, Any]:
    if query == "q3":
        key = f"INC-{1000 + rng.randint(1, INCIDENTS)}"
        return {"query": QUERIES[query], "variables": {"id": key}}
    return {"query": QUERIES[query]}


def process_cpu(pid: int) -> float:
    """Return user + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Result:
    target: str
    query: str
    requests: int = 0
    errors: int = 0
    timeouts: int = 0  # client errors and timeouts, warm-up included
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    driver_cpu: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"


def start_targets(names: list[str], db_url: str, base_port: int) -> list[Target]:
    env = {**os.environ, "DATABASE_URL": db_url, "MIM_JWT_SECRET": SECRET, "MIM_GRAPHIQL": "0"}
    out: list[Target] = []
    for offset, name in enumerate(names):
        port = base_port + offset
        if name == "service":
            command = [str(ROOT / ".venv/bin/mim"), "serve", "--port", str(port)]
        else:
            command = [sys.executable, str(ROOT / "bench/perf_baseline.py"), "--port", str(port)]
            command += ["--json-in-postgres"] if name == "baseline-json" else []
        proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        out.append(Target(name, port, proc))
    return out


def stop_targets(targets: list[Target]) -> None:
    for t in targets:
        if t.proc.poll() is None:
            t.proc.send_signal(signal.SIGINT)
    for t in targets:
        try:
            t.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            t.proc.kill()


async def wait_ready(session: aiohttp.ClientSession, target: Target, headers: dict[str, str]):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            err = target.proc.stderr.read().decode() if target.proc.stderr else ""
            sys.exit(f"{target.name} exited: {err[-2000:]}")
        try:
            async with session.post(target.url, json={"query": QUERIES["q1"]}, headers=headers):
                return
        except aiohttp.ClientError:
            await asyncio.sleep(0.2)
    sys.exit(f"{target.name} did not answer within 30 s")


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
    """Return how `other`'s answers differ from `reference`'s (numbers compared as floats)."""
    problems = []
    for name in QUERIES:
        a, b = reference[name], other[name]
        if a != b:
            problems.append(f"{name}: {json.dumps(a)[:300]} != {json.dumps(b)[:300]}")
        elif "errors" in a:
            problems.append(f"{name}: errors {a['errors']}")
    return problems


async def connection(
    url: str, query: str, headers: dict[str, str], stop_at: float, measure_from: float,
    result: Result, seed: int,
) -> None:  # fmt: skip
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            try:
                async with session.post(url, json=payload(query, rng), headers=headers) as r:
                    body = await r.read()
                    ok = r.status == 200 and b'"errors"' not in body
            except (aiohttp.ClientError, TimeoutError):
                ok = False
                result.timeouts += 1
            ended = time.perf_counter()
            if started >= measure_from and ended <= stop_at:
                if ok:
                    result.requests += 1
                    result.latencies.append(ended - started)
                else:
                    result.errors += 1


async def drive(
    target: Target, query: str, headers: dict[str, str], args: argparse.Namespace
) -> Result:
    result = Result(target.name, query)
    now = time.perf_counter()
    measure_from = now + args.warmup
    stop_at = measure_from + args.duration
    tasks = [
        connection(target.url, query, headers, stop_at, measure_from, result, seed)
        for seed in range(args.connections)
    ]
    await asyncio.sleep(0)
    gathered = asyncio.gather(*tasks)
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    cpu0, own0 = process_cpu(target.proc.pid), own_cpu()
    await gathered
    result.seconds = args.duration
    result.server_cpu = process_cpu(target.proc.pid) - cpu0
    result.driver_cpu = own_cpu() - own0
    return result


async def run(args: argparse.Namespace, targets: list[Target]) -> list[Result]:
    token = issue_token(Settings(jwt_secret=SECRET), personas=["exec"], subject="perf-bench")
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        for t in targets:
            await wait_ready(session, t, headers)
        got = {t.name: await answers(session, t, headers) for t in targets}
    reference = targets[0].name
    for t in targets[1:]:
        problems = compare(got[reference], got[t.name])
        verdict = "same answers" if not problems else "DIFFERENT answers"
        print(f"check: {t.name} vs {reference}: {verdict}")
        for p in problems:
            print(f"  {p}")
    sizes = {q: len(json.dumps(got[reference][q])) for q in QUERIES}
    print(f"check: {reference} response sizes (bytes, compact JSON): {sizes}")
    results = []
    for query in args.queries:
        for t in targets:
            r = await drive(t, query, headers, args)
            results.append(r)
            print(
                f"{query} {t.name:14} {r.rps:8.1f} req/s  p50 {r.pct(0.5):7.2f} ms  "
                f"p99 {r.pct(0.99):7.2f} ms  errors {r.errors}  timeouts {r.timeouts}  "
                f"server CPU {r.server_cpu / r.seconds:4.2f}  "
                f"driver CPU {r.driver_cpu / r.seconds:4.2f}",
                flush=True,
            )
    return results


def report(results: list[Result]) -> None:
    by = {(r.target, r.query): r for r in results}
    print("\nratios service / baseline (req/s), goal in brackets:")
    for query in dict.fromkeys(r.query for r in results):
        service = by.get(("service", query))
        if service is None:
            continue
        parts = []
        for base in ("baseline", "baseline-json"):
            b = by.get((base, query))
            if b and b.rps:
                ratio = service.rps / b.rps
                mark = "ok" if ratio >= GOALS[query] else "below"
                parts.append(f"vs {base} {ratio:.3f} ({mark})")
        print(f"  {query} [>= {GOALS[query]}]: " + ", ".join(parts))
    mean_driver = statistics.mean(r.driver_cpu / r.seconds for r in results)
    print(f"driver CPU, mean over runs: {mean_driver:.2f} cores (loop: {loop_name()})")


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--connections", type=int, default=12)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--base-port", type=int, default=8190)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--queries", default="q1,q2,q3")
    args = parser.parse_args()
    args.queries = args.queries.split(",")
    names = args.targets.split(",")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}  {os.cpu_count()} CPUs  "
        f"load {os.getloadavg()[0]:.2f}  wrk: {shutil.which('wrk') or 'not installed'}  "
        f"{args.connections} connections, {args.warmup} s warm-up, {args.duration} s measured"
    )
    targets = start_targets(names, args.database_url, args.base_port)
    try:
        if loop_name() == "uvloop":
            import uvloop

            results = uvloop.run(run(args, targets))
        else:
            results = asyncio.run(run(args, targets))
    finally:
        stop_targets(targets)
    report(results)


if __name__ == "__main__":
    main()
