"""Prepare the PostgreSQL database of the GraphQL throughput benchmark (bench/perf_load.py).

Wipes the database (its name must contain "bench"; it is created if missing), migrates it,
generates 100,000 incidents with bench/generate.py (over 180 days), adds 46 KPI definitions (23
internal, 23 exec) to the 4 seed ones, backfills the seed KPIs with the service's own
`compute.run`, then tops the observation table up to about 4 observations per incident with
ingested values of the added KPIs. `--incidents` scales it (the same 180 days, denser).

    .venv/bin/python bench/perf_data.py
    .venv/bin/python bench/perf_data.py --incidents 1000000 \
        --database-url postgresql://postgres@127.0.0.1:5432/mim_perf_bench_1m
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import backfill  # noqa: E402  (bench/backfill.py: prepare_database, analyze)
import generate  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/mim_perf_bench"
INCIDENTS = 100_000
EXTRA_KPIS = 46
OBSERVATIONS = 400_000
INGEST_SOURCE = "perf-bench"

# The added definitions: units, targets and visibility vary so that Q1 has real JSON to return.
UNITS = ("minutes", "percent", "count", "score")
EXTRA_DEFINITIONS_SQL = f"""
    INSERT INTO kpi_definition (slug, name, description, formula, expression, units, targets,
      data_sources, visibility, owner, review_cadence, last_reviewed_at, version, created_at,
      updated_at)
    SELECT 'perf-kpi-' || lpad(n::text, 2, '0'), 'Perf KPI ' || n,
      'Synthetic KPI ' || n || ' of the throughput benchmark.',
      'ingested value ' || n, NULL,
      (ARRAY{list(UNITS)!r})[1 + n % {len(UNITS)}],
      CASE n % 3
        WHEN 0 THEN '[]'::json
        WHEN 1 THEN json_build_array(json_build_object('severity', 'P1', 'persona', NULL,
          'comparison', 'AT_MOST', 'threshold', (n * 10)::float8))
        ELSE json_build_array(
          json_build_object('severity', 'P1', 'persona', NULL, 'comparison', 'AT_MOST',
            'threshold', (n * 5)::float8),
          json_build_object('severity', NULL, 'persona', 'exec', 'comparison', 'AT_LEAST',
            'threshold', (n * 1.5)::float8))
      END,
      '["external"]'::json,
      CASE WHEN n % 2 = 0 THEN 'exec' ELSE 'internal' END,
      'Perf Owner', 'P90D', NULL, 1, now(), now()
    FROM generate_series(1, {EXTRA_KPIS}) AS g(n)"""

# Observations of the added KPIs: row n goes to KPI 1 + n % 46, a scattered incident, and a
# timestamp a few minutes after that incident's detection; (kpi, incident, timestamp) stays
# unique because the timestamp offset grows with n.
INGESTED_SQL = f"""
    INSERT INTO kpi_observation (kpi, incident, timestamp, value, source, confidence,
      definition_version, recorded_at)
    SELECT 'perf-kpi-' || lpad((1 + s.n % {EXTRA_KPIS})::text, 2, '0'), i.id,
      i.detected_at + make_interval(secs => 60 + s.n), ((s.n::bigint * 7919) % 1000) / 10.0,
      '{INGEST_SOURCE}', 1.0, 1, now()
    FROM generate_series(1, $1::int) AS s(n)
    JOIN incident AS i ON i.id = 1 + (s.n::bigint * 48271) % $2::int"""


async def prepare(url: str, incidents: int, observations: int) -> dict[str, object]:
    await backfill.prepare_database(url)
    from piccolo.apps.migrations.commands.forwards import run_forwards

    with contextlib.redirect_stdout(sys.stderr):
        migrated = await run_forwards(app_name="mim")
    if not migrated.success:
        sys.exit(f"migration failed: {migrated.message}")
    out: dict[str, object] = {}
    started = time.perf_counter()
    out["generated"] = await generate.generate(url, incidents)
    out["generate_s"] = round(time.perf_counter() - started, 1)
    await backfill.analyze(url)

    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(EXTRA_DEFINITIONS_SQL)
    finally:
        await conn.close()

    from registry import compute

    started = time.perf_counter()
    await compute.run(await compute.computed_kpis())
    out["compute_s"] = round(time.perf_counter() - started, 1)

    conn = await asyncpg.connect(url)
    try:
        computed = await conn.fetchval("SELECT count(*) FROM kpi_observation")
        missing = max(0, observations - computed)
        await conn.execute(INGESTED_SQL, missing, incidents)
        await conn.execute("VACUUM ANALYZE")
        out["definitions"] = dict(
            await conn.fetch("SELECT visibility, count(*) FROM kpi_definition GROUP BY 1")
        )
        out["observations"] = dict(
            await conn.fetch("SELECT source, count(*) FROM kpi_observation GROUP BY 1")
        )
        out["incidents"] = await conn.fetchval("SELECT count(*) FROM incident")
    finally:
        await conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--incidents", type=int, default=INCIDENTS)
    parser.add_argument("--observations", type=int, help="default: 4 per incident")
    args = parser.parse_args()
    if args.observations is None:
        args.observations = OBSERVATIONS * args.incidents // INCIDENTS
    os.environ["DATABASE_URL"] = args.database_url  # piccolo_conf reads it at import
    started = time.perf_counter()
    out = asyncio.run(prepare(args.database_url, args.incidents, args.observations))
    print(json.dumps(out, default=str, indent=1))
    print(f"prepared {args.database_url} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
