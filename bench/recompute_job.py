"""An expression change at scale: how soon `updateKpiDefinition` answers, against the recompute it
used to run inside its own transaction, and how the background job that replaced it behaves.

One run, on a database it wipes and fills (the name must contain "bench"):
  (1) migrate, generate N incidents (bench/generate.py), compute mttr for all of them;
  (2) the baseline: mttr's expression changed, then `compute.run` of mttr in this process, timed:
      the work the mutation used to do before answering (the request time limit cut it at 15 s);
  (3) the service (`mim serve`, one process, MIM_RECOMPUTE_WAIT=0): an admin changes mttr's
      expression back (so both rewrite every row); the answer is timed, then the job is followed
      to DONE over GraphQL while `/healthz` and an exec's `kpis` read are timed alongside;
  (4) the rows checked: every computed mttr row carries the new version and their number is
      what the job says it wrote or kept.

    .venv/bin/python bench/recompute_job.py                        # 1,000,000 incidents, PostgreSQL
    .venv/bin/python bench/recompute_job.py --incidents 100000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import generate  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/mim_recompute_bench"
SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"
PORT = 8591
# The baseline changes mttr to BASELINE_EXPRESSION in-process; the service changes it back.
BASELINE_EXPRESSION = "1 * minutes(resolved_at - detected_at)"
NEW_EXPRESSION = "minutes(resolved_at - detected_at)"
UPDATE = (
    'mutation ($e: String!) { updateKpiDefinition(slug: "mttr", input: {expression: $e}, '
    'note: "bench") { version recompute { state done total } } }'
)
FOLLOW = '{ kpi(slug: "mttr") { recompute { state done total error } } }'
READ = "{ kpis { slug name units targets { severity threshold } } }"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def prepare(url: str, incidents: int) -> None:
    from backfill import analyze, prepare_database
    from piccolo.apps.migrations.commands.forwards import run_forwards

    await prepare_database(url)
    with contextlib.redirect_stdout(sys.stderr):
        migrated = await run_forwards(app_name="mim")
    if not migrated.success:
        sys.exit(f"migration failed: {migrated.message}")
    say(f"generating {incidents:,} incidents ...")
    await generate.generate(url, incidents)
    await analyze(url)


async def inline_recompute(expression: str | None = None) -> float:
    """Return the seconds `compute.run` of mttr takes: what the mutation once did in-request.

    With an expression, mttr gets it (and a new version) first, so every row is rewritten, as
    after a real change.
    """
    from registry import compute, db

    await db.open_engine()
    try:
        if expression is not None:
            await db.engine().run_ddl(
                "UPDATE kpi_definition SET expression = '"
                + expression.replace("'", "''")
                + "', version = version + 1 WHERE slug = 'mttr'"
            )
        started = time.perf_counter()
        await compute.run(await compute.computed_kpis(["mttr"]))
        return time.perf_counter() - started
    finally:
        await db.close_engine()


def start_service(url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "MIM_JWT_SECRET": SECRET,
        "MIM_RECOMPUTE_WAIT": "0",
        "MIM_RECOMPUTE_POLL": "5",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(ROOT / ".venv/bin/mim"), "serve", "--port", str(PORT)],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def drive(url: str) -> dict[str, float | int | str]:
    import aiohttp

    from server.auth import issue_token
    from server.config import Settings

    settings = Settings.from_env({"MIM_JWT_SECRET": SECRET})
    admin = {"Authorization": f"Bearer {issue_token(settings, personas=['admin'], subject='b')}"}
    execs = {"Authorization": f"Bearer {issue_token(settings, personas=['exec'], subject='b')}"}
    base = f"http://127.0.0.1:{PORT}"
    out: dict[str, float | int | str] = {}
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/readyz") as ready:
                    if ready.status == 200:
                        break
            await asyncio.sleep(0.1)
        else:
            sys.exit("the service did not become ready")

        async def post(query: str, headers: dict[str, str], variables: object = None) -> dict:
            payload = {"query": query, "variables": variables or {}}
            async with session.post(f"{base}/graphql", json=payload, headers=headers) as r:
                body: dict = await r.json()
                return body

        started = time.perf_counter()
        answer = await post(UPDATE, admin, {"e": NEW_EXPRESSION})
        out["answer_s"] = time.perf_counter() - started
        if "errors" in answer:
            sys.exit(f"the update failed: {answer}")
        out["answer_state"] = answer["data"]["updateKpiDefinition"]["recompute"]["state"]
        out["version"] = answer["data"]["updateKpiDefinition"]["version"]
        health: list[float] = []
        reads: list[float] = []
        while True:
            t = time.perf_counter()
            async with session.get(f"{base}/healthz") as r:
                await r.read()
            health.append(time.perf_counter() - t)
            t = time.perf_counter()
            await post(READ, execs)
            reads.append(time.perf_counter() - t)
            job = (await post(FOLLOW, admin))["data"]["kpi"]["recompute"]
            if job["state"] in ("DONE", "FAILED"):
                break
            await asyncio.sleep(0.1)
        out["job_s"] = time.perf_counter() - started
        out["job_state"] = job["state"]
        out["job_done"], out["job_total"] = job["done"], job["total"]
        out["healthz_max_ms"] = max(health) * 1000
        out["healthz_p50_ms"] = statistics.median(health) * 1000
        out["read_max_ms"] = max(reads) * 1000
        out["samples"] = len(health)
    return out


async def check_rows(url: str, version: int) -> tuple[int, int]:
    """Return (computed mttr rows at the new version, computed mttr rows at any other)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE definition_version = $1) AS new, "
            "count(*) FILTER (WHERE definition_version <> $1) AS old FROM kpi_observation "
            "WHERE kpi = 'mttr' AND source = 'computed'",
            version,
        )
        return int(row["new"]), int(row["old"])
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--incidents", type=int, default=1_000_000)
    parser.add_argument("--reuse", action="store_true", help="keep the data of an earlier run")
    args = parser.parse_args()
    if "bench" not in args.database_url:
        sys.exit("the database is wiped: its name must contain 'bench'")
    os.environ["DATABASE_URL"] = args.database_url  # piccolo_conf reads it at import
    if not args.reuse:
        asyncio.run(prepare(args.database_url, args.incidents))
        say("computing mttr for every incident (the starting state) ...")
        asyncio.run(inline_recompute())
    say("analyzing (as autovacuum would after the bulk load) ...")
    from backfill import analyze

    asyncio.run(analyze(args.database_url))
    say("baseline: the recompute the mutation used to run before answering ...")
    baseline = asyncio.run(inline_recompute(BASELINE_EXPRESSION))
    log = Path("/tmp/mim-recompute-bench.log")
    service = start_service(args.database_url, log)
    try:
        figures = asyncio.run(drive(args.database_url))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, signal.SIGTERM)
        service.wait(timeout=30)
    new, old = asyncio.run(check_rows(args.database_url, int(figures["version"])))
    print(f"incidents: {args.incidents:,}")
    print(f"baseline, the recompute inside the request: {baseline:.2f} s")
    print(
        f"updateKpiDefinition answered in {figures['answer_s'] * 1000:.1f} ms "
        f"({figures['answer_state']}): {figures['answer_s'] / baseline:.4f} of the baseline"
    )
    print(
        f"the job: {figures['job_state']} after {figures['job_s']:.2f} s "
        f"({figures['job_s'] / baseline:.2f}x the baseline), {figures['job_done']:,} of "
        f"{figures['job_total']:,} incidents"
    )
    print(
        f"meanwhile ({figures['samples']} samples): /healthz p50 {figures['healthz_p50_ms']:.1f} "
        f"ms, max {figures['healthz_max_ms']:.1f} ms; exec kpis read max "
        f"{figures['read_max_ms']:.1f} ms"
    )
    print(
        f"computed mttr rows at version {figures['version']}: {new:,}; at older versions: {old:,}"
    )


if __name__ == "__main__":
    main()
