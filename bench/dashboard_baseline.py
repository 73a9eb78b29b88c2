"""Baselines of the dashboard benchmark (bench/dashboard.py): raw aiohttp + asyncpg, one statement.

Answers the benchmark's documents for an exec token, as perf_baseline.py does for Q1-Q3 (same
token check, pool and orjson), in one of two ways:

- `--mode raw`: today's approach before rollups, one aggregate statement over the raw
  observations (count, avg and percentile_cont, joined to incidents for the severity);
- `--mode rollup`: the physical limit, one statement over tables materialized once by
  bench/dashboard.py (`bench_total`, `bench_weekly`: count, sum and exact percentiles per KPI,
  severity and week); exact when built, stale at the first write.

    MIM_JWT_SECRET=... .venv/bin/python bench/dashboard_baseline.py --port 8095 --mode raw
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import perf_baseline  # noqa: E402

from registry import targets  # noqa: E402  (the target rules, so answers compare equal)
from registry.model import Persona, Severity  # noqa: E402

EXEC = frozenset({Persona.EXEC})

# Materialized once by bench/dashboard.py before the load: the physical-limit baseline's tables.
MATERIALIZE = [
    "DROP TABLE IF EXISTS bench_total, bench_weekly",
    """CREATE TABLE bench_total AS
       SELECT o.kpi, i.severity, count(*) AS n, sum(o.value) AS total
       FROM kpi_observation AS o JOIN incident AS i ON i.id = o.incident GROUP BY 1, 2""",
    """CREATE TABLE bench_weekly AS
       SELECT o.kpi, coalesce(i.severity, 'all') AS severity,
         date_trunc('week', o.timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS week,
         count(*) AS n, sum(o.value) AS total,
         percentile_cont(0.5) WITHIN GROUP (ORDER BY o.value) AS p50,
         percentile_cont(0.9) WITHIN GROUP (ORDER BY o.value) AS p90
       FROM kpi_observation AS o JOIN incident AS i ON i.id = o.incident
       GROUP BY GROUPING SETS (
         (o.kpi, i.severity, date_trunc('week', o.timestamp AT TIME ZONE 'UTC')),
         (o.kpi, date_trunc('week', o.timestamp AT TIME ZONE 'UTC')))""",
    "CREATE INDEX ON bench_total (kpi, severity)",
    "CREATE INDEX ON bench_weekly (kpi, severity, week)",
    "ANALYZE bench_total",
    "ANALYZE bench_weekly",
]

RAW_TOTALS = """
    SELECT d.slug, d.name, d.units, d.targets::text AS targets, count(o.value) AS n,
      avg(o.value) AS mean
    FROM kpi_definition AS d
    LEFT JOIN (kpi_observation AS o JOIN incident AS i ON i.id = o.incident AND i.severity = 'P1')
      ON o.kpi = d.slug
    WHERE d.visibility = 'exec' GROUP BY d.slug ORDER BY d.slug"""
ROLLUP_TOTALS = """
    SELECT d.slug, d.name, d.units, d.targets::text AS targets, coalesce(t.n, 0) AS n,
      t.total / t.n AS mean
    FROM kpi_definition AS d LEFT JOIN bench_total AS t ON t.kpi = d.slug AND t.severity = 'P1'
    WHERE d.visibility = 'exec' ORDER BY d.slug"""
RAW_WEEKS = """
    SELECT o.kpi, date_trunc('week', o.timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS week,
      count(*) AS n, avg(o.value) AS mean,
      percentile_cont(0.5) WITHIN GROUP (ORDER BY o.value) AS p50,
      percentile_cont(0.9) WITHIN GROUP (ORDER BY o.value) AS p90
    FROM kpi_observation AS o JOIN kpi_definition AS d ON d.slug = o.kpi
    JOIN incident AS i ON i.id = o.incident
    WHERE d.visibility = 'exec' AND o.kpi = ANY($1::text[]) AND o.timestamp >= $2
      AND o.timestamp < $3 AND ($4::text IS NULL OR i.severity = $4)
    GROUP BY 1, 2"""
ROLLUP_WEEKS = """
    SELECT w.kpi, w.week, w.n, w.total / w.n AS mean, w.p50, w.p90
    FROM bench_weekly AS w JOIN kpi_definition AS d ON d.slug = w.kpi
    WHERE d.visibility = 'exec' AND w.kpi = ANY($1::text[]) AND w.week >= $2 AND w.week < $3
      AND w.severity = coalesce($4, 'all')"""
EXEC_SLUGS = "SELECT slug, targets::text AS targets FROM kpi_definition WHERE visibility = 'exec'"


def target_json(target: Any) -> dict[str, Any] | None:
    if target is None:
        return None
    return {"comparison": target.comparison.name, "threshold": float(target.threshold)}


class Documents:
    """The benchmark's documents, by their normalised text."""

    def __init__(self, dashboard: str, series_one: str, series_all: str, weeks: list[str]):
        self.dashboard = perf_baseline.normalise(dashboard)
        self.series_one = perf_baseline.normalise(series_one)
        self.series_all = perf_baseline.normalise(series_all)
        self.weeks = [datetime.fromisoformat(w) for w in weeks]


class DashboardBaseline(perf_baseline.Baseline):
    def __init__(self, url: str, secret: str, mode: str, documents: Documents) -> None:
        super().__init__(url, secret, json_in_postgres=False, tuned=True)
        self.rollup = mode == "rollup"
        self.documents = documents

    async def graphql(self, request: web.Request) -> web.Response:
        if "exec" not in self._personas(request.headers.get("Authorization")):
            return web.json_response({"errors": [{"message": "only the exec persona"}]})
        document = perf_baseline.normalise((await request.json()).get("query", ""))
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            if document == self.documents.dashboard:
                body = await self.dashboard(conn)
            elif document == self.documents.series_one:
                body = {"data": {"kpi": {"series": (await self.weeks(conn, ["mttr"], "P1"))[0]}}}
            elif document == self.documents.series_all:
                body = await self.series_all(conn)
            else:
                return web.json_response({"errors": [{"message": "unknown document"}]})
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def dashboard(self, conn: asyncpg.Connection) -> dict[str, Any]:
        kpis = []
        for row in await conn.fetch(ROLLUP_TOTALS if self.rollup else RAW_TOTALS):
            target = targets.applicable(
                [targets.from_json(t) for t in json.loads(row["targets"])],
                severity=Severity.P1,
                personas=EXEC,
            )
            value = row["mean"] if row["n"] else None
            summary = {
                "count": row["n"],
                "value": value,
                "target": target_json(target),
                "meetsTarget": targets.meets(target, value),
            }
            kpis.append({"slug": row["slug"], "name": row["name"], "units": row["units"],
                         "summary": summary})  # fmt: skip
        return {"data": {"kpis": kpis}}

    async def weeks(
        self, conn: asyncpg.Connection, slugs: list[str], severity: str | None
    ) -> list[list[dict[str, Any]]]:
        weeks = self.documents.weeks
        end = weeks[-1] + timedelta(days=7)
        rows = await conn.fetch(
            ROLLUP_WEEKS if self.rollup else RAW_WEEKS, slugs, weeks[0], end, severity
        )
        found = {(r["kpi"], r["week"]): r for r in rows}
        out = []
        for slug in slugs:
            points = []
            for week in weeks:
                r = found.get((slug, week))
                points.append(
                    {
                        "start": week.isoformat(),
                        "count": r["n"] if r else 0,
                        "mean": r["mean"] if r else None,
                        "p50": r["p50"] if r else None,
                        "p90": r["p90"] if r else None,
                    }
                )
            out.append(points)
        return out

    async def series_all(self, conn: asyncpg.Connection) -> dict[str, Any]:
        slugs = sorted(r["slug"] for r in await conn.fetch(EXEC_SLUGS))
        series = await self.weeks(conn, slugs, None)
        kpis = [{"slug": s, "series": p} for s, p in zip(slugs, series, strict=True)]
        return {"data": {"kpis": kpis}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8095)
    parser.add_argument("--mode", choices=("raw", "rollup"), required=True)
    parser.add_argument("--documents", required=True, help="a JSON file written by dashboard.py")
    args = parser.parse_args()
    spec = json.loads(Path(args.documents).read_text())
    documents = Documents(spec["dashboard"], spec["series_one"], spec["series_all"], spec["weeks"])
    baseline = DashboardBaseline(
        os.environ["DATABASE_URL"], os.environ["MIM_JWT_SECRET"], args.mode, documents
    )
    app = web.Application()
    app.on_startup.append(baseline.start)
    app.on_cleanup.append(baseline.stop)
    app.router.add_post("/graphql", baseline.graphql)
    asyncio.set_event_loop_policy(None)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
