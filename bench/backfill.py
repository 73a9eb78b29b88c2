"""Time the service's four-KPI backfill against hand-written set-based SQL, on one engine.

One run: reset the schema and migrate, generate N incidents (bench/generate.py), then
  (a) the baseline: four `INSERT ... SELECT ... ON CONFLICT DO UPDATE` statements, one per seed
      KPI, computing the values and as-of timestamps the service's formulas compute; timed;
  (b) the service: `await compute.run(await compute.computed_kpis())` on an empty observation
      table; timed, with resident-set growth (ru_maxrss before/after);
  (c) an exact comparison of the two row sets: same (kpi, incident, timestamp) keys, values
      within 1e-9;
  (d) the service again under tracemalloc (separately, since tracing slows Python down), for its
      peak Python allocation; and, with --profile, once more under a profiler.

    .venv/bin/python bench/backfill.py                      # SQLite, fresh temp file, 100,000
    .venv/bin/python bench/backfill.py --database-url postgresql://postgres@127.0.0.1:5432/mim_bench
    .venv/bin/python bench/backfill.py --sizes 25000,100000  # one fresh process per size
    .venv/bin/python bench/backfill.py --repeat 3           # medians of three timings each
    .venv/bin/python bench/backfill.py --incidents 20000 --profile cprofile --no-tracemalloc

The database is wiped: a PostgreSQL database must have "bench" in its name (it is created if
missing); a SQLite file must have "bench" in its path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import generate  # noqa: E402  (bench/generate.py: no project imports, safe before DATABASE_URL)

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/mim_bench"
# The figure: the four hand-written statements on PostgreSQL, 100,000 incidents.
REFERENCE_BASELINE_S = 6.5
REFERENCE_INCIDENTS = 100_000
TOLERANCE = 1e-9
MIB = 1024 * 1024
PROFILE_HIDE = (
    r"^(?!base_events\.py|events\.py|backfill\.py|selectors\.py|tasks\.py|futures\.py"
    r"|\{method 'run' of '_contextvars)"
)

# The seed expressions the baseline SQL below implements; a drift makes the comparison moot.
EXPECTED_EXPRESSIONS = {
    "mttr": "minutes(resolved_at - detected_at)",
    "mtta": 'minutes(phase_entered_at("gather") - first(alerts.issue_time))',
    "cadence-adherence": (
        "100 * count(milestones where delivered_at <= committed_eta) / count(milestones)"
    ),
    "stakeholder-satisfaction": "avg(surveys.score)",
}

COLUMNS = "kpi, incident, timestamp, value, source, confidence, definition_version, recorded_at"
UPSERT = (
    "ON CONFLICT (kpi, incident, timestamp) DO UPDATE SET value = excluded.value, "
    "confidence = excluded.confidence, definition_version = excluded.definition_version, "
    "recorded_at = excluded.recorded_at WHERE kpi_observation.source = 'computed'"
)


# ---------------------------------------------------------------------------------------------
# The baseline: one set-based statement per seed KPI.
#
# What the formulas compute (registry/formulas: runtime, aggregates, compiler, ops), per incident:
#   mttr     value (resolved_at - detected_at) in minutes; none when resolved_at is null.
#            as of later(resolved_at, detected_at): a binary op takes the later as-of of its sides.
#   mtta     phase_entered_at("gather") = earliest occurred_at of a timeline entry whose phase is
#            'gather' (any kind), as of itself; first(alerts.issue_time) = the earliest alert's
#            issue_time, as of itself. Value (gather - first issue) in minutes, as of the later
#            of the two; none without an alert or a gather entry.
#   cadence  100 * count(on time) / count(all); "on time" is delivered_at <= committed_eta (a
#            null delivered_at is not kept). A kept milestone is as of later(committed_eta,
#            delivered_at) = committed_eta; count(...) is as of its latest item, or detected_at
#            when it has none; the division takes the later. So: as of the latest committed_eta,
#            or later(latest committed_eta, detected_at) when no milestone is on time. No
#            milestones: 0 / 0 is no value.
#   satisf.  avg(surveys.score), as of the latest submitted_at; none without surveys.
# ---------------------------------------------------------------------------------------------


def _minutes(dialect: str, later: str, earlier: str) -> str:
    """Return SQL for (later - earlier) in minutes as a double, like timedelta arithmetic."""
    if dialect == "postgres":
        return f"extract(epoch FROM {later} - {earlier})::float8 / 60"
    # Exact for whole-second timestamps (the generator's); unixepoch() drops fractions.
    return f"(unixepoch({later}) - unixepoch({earlier})) / 60.0"


def baseline_statements(dialect: str, now: str) -> dict[str, str]:
    """Return slug -> INSERT ... SELECT ... ON CONFLICT DO UPDATE; `now` is the recorded_at SQL."""
    greatest = "greatest" if dialect == "postgres" else "max"
    # float8 arithmetic on PostgreSQL (its 100.0 and avg(integer) are numeric), as in Python.
    score = "s.score::float8" if dialect == "postgres" else "s.score"
    hundred = "100.0::float8" if dialect == "postgres" else "100.0"
    selects = {
        "mttr": f"""
            SELECT d.slug, i.id AS incident, {greatest}(i.resolved_at, i.detected_at) AS as_of,
              {_minutes(dialect, "i.resolved_at", "i.detected_at")} AS value, d.version
            FROM incident AS i JOIN kpi_definition AS d ON d.slug = 'mttr'
            WHERE i.resolved_at IS NOT NULL""",
        "mtta": f"""
            SELECT d.slug, a.incident, {greatest}(g.gathered, a.first_issue) AS as_of,
              {_minutes(dialect, "g.gathered", "a.first_issue")} AS value, d.version
            FROM (SELECT incident, min(issue_time) AS first_issue FROM alert GROUP BY incident)
              AS a
            JOIN (SELECT incident, min(occurred_at) AS gathered FROM timeline_event
                  WHERE phase = 'gather' GROUP BY incident) AS g ON g.incident = a.incident
            JOIN kpi_definition AS d ON d.slug = 'mtta'""",
        "cadence-adherence": f"""
            SELECT d.slug, m.incident,
              CASE WHEN m.on_time > 0 THEN m.latest_eta
                   ELSE {greatest}(m.latest_eta, i.detected_at) END AS as_of,
              {hundred} * m.on_time / m.total AS value, d.version
            FROM (SELECT incident, count(*) AS total, max(committed_eta) AS latest_eta,
                    count(CASE WHEN delivered_at <= committed_eta THEN 1 END) AS on_time
                  FROM milestone GROUP BY incident) AS m
            JOIN incident AS i ON i.id = m.incident
            JOIN kpi_definition AS d ON d.slug = 'cadence-adherence'""",
        "stakeholder-satisfaction": f"""
            SELECT d.slug, s.incident, max(s.submitted_at) AS as_of, avg({score}) AS value,
              d.version
            FROM survey_response AS s
            JOIN kpi_definition AS d ON d.slug = 'stakeholder-satisfaction'
            GROUP BY s.incident, d.slug, d.version""",
    }
    return {
        slug: (
            f"INSERT INTO kpi_observation ({COLUMNS}) "
            f"SELECT x.slug, x.incident, x.as_of, x.value, 'computed', 1.0, x.version, {now} "
            f"FROM ({select}) AS x WHERE true {UPSERT}"
        )
        for slug, select in selects.items()
    }


# ---------------------------------------------------------------------------------------------
# Database access outside the service (raw drivers): reset, baseline, comparison.
# ---------------------------------------------------------------------------------------------


class Raw:
    """One raw connection: asyncpg for PostgreSQL, sqlite3 (autocommit) for SQLite."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = generate.dialect_of(url).name
        self.conn: Any = None

    async def __aenter__(self) -> Raw:
        if self.dialect == "postgres":
            import asyncpg

            self.conn = await asyncpg.connect(self.url)
        else:
            self.conn = sqlite3.connect(generate.sqlite_file(self.url), isolation_level=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.dialect == "postgres":
            await self.conn.close()
        else:
            self.conn.close()

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the rows it changed."""
        if self.dialect == "postgres":
            status = await self.conn.execute(sql, *args)
            last = status.rsplit(" ", 1)[-1]
            return int(last) if last.isdigit() else 0
        return int(self.conn.execute(sql.replace("$1", "?"), args).rowcount)

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        if self.dialect == "postgres":
            return [tuple(r) for r in await self.conn.fetch(sql)]
        return list(self.conn.execute(sql).fetchall())


async def prepare_database(url: str) -> None:
    """Create the PostgreSQL database if missing and empty it; or remove the SQLite file."""
    dialect = generate.dialect_of(url).name
    if dialect == "sqlite":
        path = Path(generate.sqlite_file(url))
        if "bench" not in str(path):
            sys.exit(f"refusing to wipe {path}: a benchmark SQLite path must contain 'bench'")
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    import asyncpg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    if "bench" not in name:
        sys.exit(f"refusing to wipe database {name!r}: its name must contain 'bench'")
    admin = await asyncpg.connect(urlunparse(parsed._replace(path="/postgres")))
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DROP SCHEMA public CASCADE")
        await conn.execute("CREATE SCHEMA public")
    finally:
        await conn.close()


async def analyze(url: str) -> None:
    """Give the planner statistics after the bulk load, as autovacuum eventually would."""
    async with Raw(url) as raw:
        await raw.execute("VACUUM ANALYZE" if raw.dialect == "postgres" else "ANALYZE")


async def empty_observations(url: str) -> None:
    async with Raw(url) as raw:
        await raw.execute(
            "TRUNCATE kpi_observation"
            if raw.dialect == "postgres"
            else "DELETE FROM kpi_observation"
        )


async def run_baseline(url: str) -> tuple[float, dict[str, tuple[int, float]]]:
    """Run the four statements (each its own transaction); return total s, slug -> (rows, s)."""
    per_kpi: dict[str, tuple[int, float]] = {}
    async with Raw(url) as raw:
        if raw.dialect == "postgres":
            now_sql, now = "$1::timestamptz", datetime.now(UTC)
        else:  # stored as Piccolo stores datetimes
            now_sql, now = "$1", str(datetime.now(UTC))  # type: ignore[assignment]
        started = time.perf_counter()
        for slug, sql in baseline_statements(raw.dialect, now_sql).items():
            t0 = time.perf_counter()
            rows = await raw.execute(sql, now)
            per_kpi[slug] = (rows, time.perf_counter() - t0)
        total = time.perf_counter() - started
    return total, per_kpi


async def keep_baseline(url: str) -> None:
    """Copy the baseline's rows aside and empty the observation table for the service."""
    async with Raw(url) as raw:
        await raw.execute("DROP TABLE IF EXISTS bench_baseline")
        await raw.execute(
            "CREATE TABLE bench_baseline AS SELECT kpi, incident, timestamp, value "
            "FROM kpi_observation"
        )
        await raw.execute("CREATE INDEX bench_baseline_key ON bench_baseline (kpi, incident)")
    await empty_observations(url)


@dataclass
class Comparison:
    baseline_rows: int = 0
    service_rows: int = 0
    by_kpi: dict[str, dict[str, int]] = field(default_factory=dict)
    mismatches: int = 0
    examples: list[list[Any]] = field(default_factory=list)


async def compare(url: str, examples: int = 8) -> Comparison:
    """Compare the service's computed rows with the baseline's, paired by (kpi, incident)."""
    # Both sides should hold at most one row per (kpi, incident): pair on that and compare the
    # timestamps and values. Two indexed LEFT JOINs (not a FULL JOIN, which SQLite runs as a
    # nested loop here) keep this to seconds.
    pairs = """
        SELECT b.kpi, b.incident, b.timestamp AS b_ts, b.value AS b_value,
               s.timestamp AS s_ts, s.value AS s_value, 1 AS in_b,
               CASE WHEN s.kpi IS NULL THEN 0 ELSE 1 END AS in_s
        FROM bench_baseline AS b
        LEFT JOIN bench_service AS s ON s.kpi = b.kpi AND s.incident = b.incident
        UNION ALL
        SELECT s.kpi, s.incident, NULL, NULL, s.timestamp, s.value, 0, 1
        FROM bench_service AS s
        WHERE NOT EXISTS (SELECT 1 FROM bench_baseline AS b
                          WHERE b.kpi = s.kpi AND b.incident = s.incident)"""
    stamp_differs = "in_b = 1 AND in_s = 1 AND b_ts <> s_ts"
    value_differs = f"in_b = 1 AND in_s = 1 AND abs(b_value - s_value) > {TOLERANCE}"
    bad = f"(in_b = 0 OR in_s = 0 OR b_ts <> s_ts OR abs(b_value - s_value) > {TOLERANCE})"
    out = Comparison()
    async with Raw(url) as raw:
        await raw.execute("DROP TABLE IF EXISTS bench_service")
        await raw.execute(
            "CREATE TABLE bench_service AS SELECT kpi, incident, timestamp, value "
            "FROM kpi_observation WHERE source = 'computed'"
        )
        await raw.execute("CREATE INDEX bench_service_key ON bench_service (kpi, incident)")
        await raw.execute("DROP TABLE IF EXISTS bench_pairs")
        await raw.execute(f"CREATE TABLE bench_pairs AS {pairs}")
        out.baseline_rows = (await raw.fetch("SELECT count(*) FROM bench_baseline"))[0][0]
        out.service_rows = (await raw.fetch("SELECT count(*) FROM bench_service"))[0][0]
        rows = await raw.fetch(
            f"""SELECT kpi, sum(in_b), sum(in_s),
                  sum(CASE WHEN in_s = 0 THEN 1 ELSE 0 END),
                  sum(CASE WHEN in_b = 0 THEN 1 ELSE 0 END),
                  sum(CASE WHEN {stamp_differs} THEN 1 ELSE 0 END),
                  sum(CASE WHEN {value_differs} THEN 1 ELSE 0 END)
                FROM bench_pairs GROUP BY kpi ORDER BY kpi"""
        )
        for kpi, n_b, n_s, only_b, only_s, stamp, value in rows:
            out.by_kpi[kpi] = {
                "baseline": int(n_b),
                "service": int(n_s),
                "only_baseline": int(only_b),
                "only_service": int(only_s),
                "timestamp_differs": int(stamp),
                "value_differs": int(value),
            }
        out.mismatches = (await raw.fetch(f"SELECT count(*) FROM bench_pairs WHERE {bad}"))[0][0]
        if out.mismatches:
            found = await raw.fetch(
                f"""SELECT kpi, incident, b_ts, b_value, s_ts, s_value FROM bench_pairs
                    WHERE {bad} ORDER BY kpi, incident LIMIT {examples}"""
            )
            out.examples = [[str(v) for v in r] for r in found]
        await raw.execute("DROP TABLE bench_pairs")
    return out


async def stored_expressions(url: str) -> dict[str, str | None]:
    async with Raw(url) as raw:
        rows = await raw.fetch("SELECT slug, expression FROM kpi_definition ORDER BY slug")
    return {slug: expression for slug, expression in rows}


# ---------------------------------------------------------------------------------------------
# The service's backfill.
# ---------------------------------------------------------------------------------------------


def max_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


async def service_backfill() -> list[Any]:
    """The service's full backfill of every computed KPI, exactly as the issue names it."""
    from registry import compute

    return await compute.run(await compute.computed_kpis())


async def timed(run: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await run()
    return time.perf_counter() - started, result


def source_digest() -> str:
    """A short hash of the service's compute and formula code, to tie figures to a version."""
    digest = hashlib.sha1()
    for path in sorted([ROOT / "registry/compute.py", *(ROOT / "registry/formulas").glob("*.py")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass
class Report:
    engine: str
    incidents: int
    seed: int
    source_digest: str
    pool: bool
    generated_rows: dict[str, int] = field(default_factory=dict)
    generate_s: float = 0.0
    baseline_s: float = 0.0  # the median of baseline_runs
    baseline_runs: list[float] = field(default_factory=list)
    baseline_by_kpi: dict[str, tuple[int, float]] = field(default_factory=dict)
    baseline_rows: int = 0
    service_s: float = 0.0  # the median of service_runs
    service_runs: list[float] = field(default_factory=list)
    service_cpu_s: float = 0.0  # this process's user + system CPU (all threads), median
    service_cpu_runs: list[float] = field(default_factory=list)
    service_rows_written: int = 0
    service_results: list[dict[str, Any]] = field(default_factory=list)
    rss_before_mib: float = 0.0
    rss_peak_after_mib: float = 0.0
    rss_current_after_mib: float = 0.0
    traced_s: float | None = None
    tracemalloc_peak_mib: float | None = None
    comparison: dict[str, Any] = field(default_factory=dict)
    expressions_ok: bool = True
    load_before: float = 0.0  # 1-minute load average: other work on the machine skews timings
    load_after: float = 0.0
    profile: str | None = None

    @property
    def ratio(self) -> float:
        return self.service_s / self.baseline_s if self.baseline_s else float("inf")


async def bench(args: argparse.Namespace, url: str) -> Report:
    engine_name = generate.dialect_of(url).name
    report = Report(engine_name, args.incidents, args.seed, source_digest(), not args.no_pool)
    report.load_before = os.getloadavg()[0]
    await prepare_database(url)

    from piccolo.apps.migrations.commands.forwards import run_forwards

    from registry import db

    with contextlib.redirect_stdout(sys.stderr):  # Piccolo's progress lines
        migrated = await run_forwards(app_name="mim")
    if not migrated.success:
        sys.exit(f"migration failed: {migrated.message}")
    if engine_name == "sqlite" and not args.no_pool:
        await db.open_engine()  # WAL, as the served app sets; persists in the file

    stored = await stored_expressions(url)
    drift = {s: stored.get(s) for s, e in EXPECTED_EXPRESSIONS.items() if stored.get(s) != e}
    extra = {s: e for s, e in stored.items() if e and s not in EXPECTED_EXPRESSIONS}
    if drift or extra:
        report.expressions_ok = False
        print(f"WARNING: stored expressions differ from the baseline's: {drift or extra}")

    say(f"[{engine_name}] generating {args.incidents:,} incidents (seed {args.seed}) ...")
    report.generate_s, report.generated_rows = await timed(
        lambda: generate.generate(url, args.incidents, args.seed)
    )
    say(f"  {report.generated_rows} in {report.generate_s:.1f} s; analyzing ...")
    await analyze(url)

    say("  baseline: four INSERT ... SELECT ... ON CONFLICT DO UPDATE statements ...")
    for attempt in range(args.repeat):
        if attempt:
            await empty_observations(url)
        seconds, report.baseline_by_kpi = await run_baseline(url)
        report.baseline_runs.append(seconds)
    report.baseline_s = statistics.median(report.baseline_runs)
    report.baseline_rows = sum(rows for rows, _ in report.baseline_by_kpi.values())
    await keep_baseline(url)

    if engine_name == "postgres" and not args.no_pool:
        await db.open_engine()  # the served app's connection pool
    say("  service: compute.run(await compute.computed_kpis()) ...")
    report.rss_before_mib = max_rss_mib()
    for attempt in range(args.repeat):
        if attempt:
            await empty_observations(url)
        cpu = cpu_seconds()
        seconds, results = await timed(service_backfill)
        report.service_cpu_runs.append(cpu_seconds() - cpu)
        report.service_runs.append(seconds)
    report.service_s = statistics.median(report.service_runs)
    report.service_cpu_s = statistics.median(report.service_cpu_runs)
    report.rss_peak_after_mib = max_rss_mib()
    report.rss_current_after_mib = current_rss_mib()
    report.service_results = [_result(r) for r in results]
    report.service_rows_written = sum(
        r.get("observations_written", 0) for r in report.service_results
    )

    say("  comparing the two row sets ...")
    report.comparison = asdict(await compare(url))

    if not args.no_tracemalloc:
        say("  service again under tracemalloc ...")
        await empty_observations(url)
        tracemalloc.start()
        tracemalloc.reset_peak()
        report.traced_s, _ = await timed(service_backfill)
        report.tracemalloc_peak_mib = tracemalloc.get_traced_memory()[1] / MIB
        tracemalloc.stop()

    if args.profile:
        say(f"  service again under {args.profile} ...")
        await empty_observations(url)
        report.profile = await profiled(args.profile, args.profile_lines)

    if not args.no_pool:
        await db.close_engine()
    report.load_after = os.getloadavg()[0]
    return report


def _result(result: Any) -> dict[str, Any]:
    try:
        return asdict(result)
    except TypeError:
        return {"repr": repr(result)}


async def profiled(kind: str, lines: int) -> str:
    """Run the service's backfill under a profiler; return the report text."""
    if kind == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="enabled")
        profiler.start()
        await service_backfill()
        profiler.stop()
        return str(profiler.output_text(unicode=False, color=False, show_all=False))
    import cProfile
    import io
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    await service_backfill()
    profile.disable()
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text).strip_dirs().sort_stats("cumulative")
    # Leave out the event loop's plumbing and this script's own frames, which only wrap the
    # backfill; epoll's poll stays: it is the time spent waiting for the database.
    stats.print_stats(PROFILE_HIDE, lines)
    return text.getvalue()


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_report(r: Report) -> None:
    n = r.incidents
    print(f"\n== {r.engine}: {n:,} incidents (seed {r.seed}, service code {r.source_digest}) ==")
    print(
        f"generated    {sum(r.generated_rows.values()):,} rows in {r.generate_s:.1f} s  "
        f"{r.generated_rows}"
    )
    print(
        f"baseline     {r.baseline_s:8.2f} s  {n / r.baseline_s:10,.0f} incidents/s  "
        f"{r.baseline_rows:,} rows written{_runs(r.baseline_runs)}"
    )
    for slug, (rows, seconds) in r.baseline_by_kpi.items():
        print(f"  {slug:<26}{seconds:8.2f} s  {rows:,} rows")
    print(
        f"service      {r.service_s:8.2f} s  {n / r.service_s:10,.0f} incidents/s  "
        f"{r.service_rows_written:,} rows written{_runs(r.service_runs)}"
    )
    print(
        f"             this process's CPU {r.service_cpu_s:.2f} s; "
        f"pool/WAL {'on' if r.pool else 'off'}; load average {r.load_before:.1f} before, "
        f"{r.load_after:.1f} after"
    )
    print(f"ratio        service / baseline = {r.ratio:.2f}x  (goal: <= 3x)")
    if r.engine == "postgres":
        reference = REFERENCE_BASELINE_S * n / REFERENCE_INCIDENTS
        print(
            f"             service / the issue's {REFERENCE_BASELINE_S} s per 100k reference "
            f"= {r.service_s / reference:.2f}x (baseline here: {r.baseline_s / reference:.2f}x)"
        )
    print(
        f"memory       ru_maxrss {r.rss_before_mib:.0f} -> {r.rss_peak_after_mib:.0f} MiB "
        f"(growth {r.rss_peak_after_mib - r.rss_before_mib:.0f} MiB; "
        f"current after {r.rss_current_after_mib:.0f} MiB)"
    )
    if r.tracemalloc_peak_mib is not None:
        print(
            f"             tracemalloc peak {r.tracemalloc_peak_mib:.1f} MiB "
            f"(traced run {r.traced_s:.1f} s)"
        )
    c = r.comparison
    verdict = "IDENTICAL" if c["mismatches"] == 0 else f"{c['mismatches']:,} MISMATCHES"
    print(
        f"correctness  {verdict}: baseline {c['baseline_rows']:,} rows, "
        f"service {c['service_rows']:,} rows (tolerance {TOLERANCE})"
    )
    for kpi, counts in c["by_kpi"].items():
        flags = {k: v for k, v in counts.items() if k not in ("baseline", "service") and v}
        print(f"  {kpi:<26}{counts['baseline']:>9,} vs {counts['service']:>9,}  {flags or 'ok'}")
    if c["examples"]:
        print("  examples (kpi, incident, baseline ts, baseline value, service ts, service value):")
        for example in c["examples"]:
            print("   ", " | ".join(example))
    if not r.expressions_ok:
        print("  NOTE: stored expressions differ from the ones the baseline implements.")
    if r.profile:
        print("\nprofile of the service's backfill:\n" + r.profile)


def _runs(runs: list[float]) -> str:
    """Return the individual timings when there were several (the figure is their median)."""
    if len(runs) < 2:
        return ""
    return "  (median of " + ", ".join(f"{s:.2f}" for s in runs) + ")"


def run_sizes(args: argparse.Namespace, sizes: list[int]) -> None:
    """One fresh process per size (clean ru_maxrss), then a summary table."""
    reports = []
    for size in sizes:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
            path = out.name
        command = [sys.executable, __file__, "--incidents", str(size), "--json", path]
        command += ["--seed", str(args.seed)]
        if args.database_url:
            command += ["--database-url", args.database_url]
        command += ["--repeat", str(args.repeat)]
        for flag in ("no_tracemalloc", "no_pool"):
            if getattr(args, flag):
                command.append("--" + flag.replace("_", "-"))
        subprocess.run(command, check=True)
        reports.append(json.loads(Path(path).read_text()))
        Path(path).unlink()
    print("\n== summary ==")
    print(
        f"{'engine':<9}{'incidents':>10}{'baseline s':>11}{'service s':>10}{'ratio':>7}"
        f"{'svc inc/s':>10}{'tracemalloc MiB':>16}{'RSS growth MiB':>15}{'mismatches':>11}"
    )
    for r in reports:
        peak = r["tracemalloc_peak_mib"]
        print(
            f"{r['engine']:<9}{r['incidents']:>10,}{r['baseline_s']:>11.2f}{r['service_s']:>10.2f}"
            f"{r['service_s'] / r['baseline_s']:>6.2f}x{r['incidents'] / r['service_s']:>10,.0f}"
            f"{'-' if peak is None else f'{peak:.1f}':>16}"
            f"{r['rss_peak_after_mib'] - r['rss_before_mib']:>15.0f}"
            f"{r['comparison']['mismatches']:>11,}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        help=f"sqlite:///path (default: a fresh file in a temp dir) or e.g. {DEFAULT_PG_URL}",
    )
    parser.add_argument("--incidents", type=int, default=100_000)
    parser.add_argument("--sizes", help="comma-separated sizes, each in its own process")
    parser.add_argument("--seed", type=int, default=generate.DEFAULT_SEED)
    parser.add_argument(
        "--no-tracemalloc", action="store_true", help="skip the extra run under tracemalloc"
    )
    parser.add_argument(
        "--no-pool",
        action="store_true",
        help="run the service as `mim kpi backfill` does: no PostgreSQL pool, no SQLite WAL",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="time the baseline and the service this many times each; report the medians",
    )
    parser.add_argument("--profile", choices=("cprofile", "pyinstrument"))
    parser.add_argument("--profile-lines", type=int, default=15)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary SQLite file")
    args = parser.parse_args()

    if args.sizes:
        run_sizes(args, [int(s) for s in args.sizes.split(",")])
        return

    tmp = None
    url = args.database_url
    if url is None:
        tmp = tempfile.mkdtemp(prefix="mim-bench-")
        url = f"sqlite:///{tmp}/bench.sqlite3"
    os.environ["DATABASE_URL"] = url  # piccolo_conf reads it at import: before any project import
    try:
        report = asyncio.run(bench(args, url))
    finally:
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), default=str, indent=1))


if __name__ == "__main__":
    main()
