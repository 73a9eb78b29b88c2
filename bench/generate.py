"""Set-based generator of benchmark incidents with their alerts, timeline, milestones and surveys.

Everything is computed by the database in a handful of INSERT ... SELECT statements, so 100,000
incidents (about 1.1 million rows) load in seconds. The shape follows server/demo.py: mixed
severities, ~96% resolved, 1-3 alerts a few minutes before detection, the four phases (detect,
gather, mitigate, resolve), 2-4 milestones (~85% on time; ones delivered after the incident ended
are dropped), 0-3 survey scores of 1-5 on resolved incidents; plus a few irregular cases (see
QUIRK_NO_GATHER) so that the benchmark's correctness check covers more of the formulas' rules.

Randomness is a counter-based hash of (row, stream, seed) in plain integer arithmetic, evaluated
identically by SQLite and PostgreSQL: the same seed gives the same data on both engines. (SQLite's
random() cannot be seeded.) Times are whole seconds, stored exactly as Piccolo stores them:
timestamptz on PostgreSQL, `str(datetime_in_utc)` text ('2026-11-24 19:51:21+00:00') on SQLite.

Use it from bench/backfill.py, or on its own on an already-migrated database:

    .venv/bin/python bench/generate.py --database-url sqlite:///bench.sqlite3 --incidents 1000
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote, urlparse

# The data set's "now": fixed, so a seed always gives the same rows.
NOW = int(datetime(2026, 11, 27, tzinfo=UTC).timestamp())
PRIME = 2147483647  # 2**31 - 1: every product below stays under 2**63 on both engines
DEFAULT_SEED = 2041

SEVERITY_SQL = "CASE WHEN sev_r < 10 THEN 'P1' WHEN sev_r < 40 THEN 'P2' WHEN sev_r < 80 THEN 'P3' "
SEVERITY_SQL += "ELSE 'P4' END"
# Typical minutes to resolve and to acknowledge by severity (as in server/demo.py).
RESOLVE_MINUTES = {"P1": 100, "P2": 220, "P3": 600, "P4": 1800}
ACK_MINUTES = {"P1": 6, "P2": 14, "P3": 30, "P4": 60}
SERVICES = ("checkout", "payments", "search", "login", "notifications", "billing", "api-gateway")
SYMPTOMS = ("elevated error rate", "latency spike", "partial outage", "degraded throughput")
SOURCES = ("pagerduty", "datadog", "statuspage")
PHASES = ("detect", "gather", "mitigate", "resolve")
# A sum of four uniform integers in [0, 1000) has mean 1998 and standard deviation ~577.35: a
# good-enough normal deviate, in integers so both engines round it the same way.
NORMAL_MEAN, NORMAL_SD_X100 = 1998, 57735
# A few irregular cases, so the comparison exercises more of the formulas' rules: 1% of
# incidents have no gather entry (no MTTA), 1% entered gather before their first alert (a
# negative MTTA, as of that alert), and 1% of milestones were never delivered (null delivered_at).
QUIRK_NO_GATHER, QUIRK_EARLY_GATHER = 0, 1
ONE_TO_FOUR = "(SELECT 1 AS k UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4) AS ks"


@dataclass(frozen=True)
class Dialect:
    """What differs between the engines in the generator's SQL."""

    name: str  # "sqlite" or "postgres"

    def series(self, count: int) -> str:
        """Return a FROM item yielding n = 1..count as a 64-bit integer."""
        if self.name == "postgres":
            return f"generate_series(1::bigint, {count}::bigint) AS seq(n)"
        return (
            f"(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) "
            "SELECT n FROM s) AS seq"
        )

    def ts(self, epoch: str) -> str:
        """Return the stored form of a timestamp given as integer seconds since the epoch."""
        if self.name == "postgres":
            return f"to_timestamp({epoch})"
        return f"strftime('%Y-%m-%d %H:%M:%S+00:00', {epoch}, 'unixepoch')"

    @property
    def greatest(self) -> str:
        return "greatest" if self.name == "postgres" else "max"


def rnd(key: str, stream: int, seed: int) -> str:
    """Return SQL for a pseudo-random integer in [0, PRIME) from an integer key and a stream."""
    offset = (stream * 2654435761 + seed * 97 + 12345) % PRIME
    a = f"(({key}) * 40503 + {offset}) % {PRIME}"
    b = f"(({a}) * ({a}) + 1013904223) % {PRIME}"
    c = f"(({b}) * 48271 + ({key})) % {PRIME}"
    return f"(({c}) * ({c}) + {stream}) % {PRIME}"


def normal(key: str, first_stream: int, seed: int) -> str:
    """Return SQL for an approximately normal integer, mean 0 and sd NORMAL_SD_X100 / 100."""
    parts = " + ".join(f"{rnd(key, first_stream + i, seed)} % 1000" for i in range(4))
    return f"({parts} - {NORMAL_MEAN})"


def _case(expr: str, values: tuple[str, ...] | dict[str, int], key: str = "") -> str:
    """Return CASE expr WHEN i THEN values[i] ... for a tuple, or by severity for a dict."""
    if isinstance(values, dict):
        whens = " ".join(f"WHEN '{sev}' THEN {v}" for sev, v in values.items())
        return f"CASE {expr} {whens} END"
    whens = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(values))
    return f"CASE {expr} {whens} END"


def statements(dialect: Dialect, count: int, seed: int) -> list[str]:
    """Return the statements that insert `count` incidents (ids 1..count) with their data."""
    ts, greatest = dialect.ts, dialect.greatest
    alert_key = "g.n * 4 + ks.k"
    # One row per incident with everything its children derive from, as epoch seconds.
    level1 = f"""
        SELECT n,
          {rnd("n", 1, seed)} % 100 AS sev_r,
          {NOW} - 60 * (1440 + {rnd("n", 2, seed)} % {60 * 24 * 179 + 1}) AS det,
          {normal("n", 3, seed)} AS z_resolve,
          CASE WHEN {rnd("n", 7, seed)} % 100 < 96 THEN 1 ELSE 0 END AS resolved,
          1 + {rnd("n", 8, seed)} % 3 AS na,
          {rnd("n * 4 + 1", 20, seed)} % 9 AS o1,
          {rnd("n * 4 + 2", 20, seed)} % 9 AS o2,
          {rnd("n * 4 + 3", 20, seed)} % 9 AS o3,
          {normal("n", 9, seed)} AS z_ack,
          2 + {rnd("n", 13, seed)} % 3 AS nm,
          {rnd("n", 14, seed)} % 4 AS ns,
          {rnd("n", 15, seed)} % {len(SERVICES)} AS svc,
          {rnd("n", 16, seed)} % {len(SYMPTOMS)} AS sym,
          {rnd("n", 17, seed)} % 100 AS quirk
        FROM {dialect.series(count)}"""
    level2 = f"""
        SELECT l1.*, {SEVERITY_SQL} AS sev,
          det - 60 * {greatest}(o1, CASE WHEN na >= 2 THEN o2 ELSE 0 END,
                                CASE WHEN na >= 3 THEN o3 ELSE 0 END) AS first_issue
        FROM ({level1}) AS l1"""
    level3 = f"""
        SELECT l2.*,
          {_case("sev", RESOLVE_MINUTES)} AS mu,
          {_case("sev", ACK_MINUTES)} AS ack
        FROM ({level2}) AS l2"""
    level4 = f"""
        SELECT l3.*,
          {greatest}(5, mu + (mu * 35 * z_resolve) / {NORMAL_SD_X100}) AS resolve_min,
          {greatest}(1, ack + (ack * 40 * z_ack) / {NORMAL_SD_X100}) AS ack_min
        FROM ({level3}) AS l3"""
    staging = f"""
        CREATE TABLE bench_gen AS
        SELECT n, sev, svc, sym, det, na, o1, o2, o3, nm, ns, quirk,
          CASE WHEN resolved = 1 THEN det + 60 * resolve_min END AS res,
          CASE WHEN quirk = {QUIRK_EARLY_GATHER} THEN first_issue - 60 * (1 + o1)
               ELSE first_issue + 60 * ack_min END AS gather,
          CASE WHEN resolved = 1 THEN det + 60 * resolve_min ELSE {NOW} END AS end_
        FROM ({level4}) AS l4"""
    incidents = f"""
        INSERT INTO incident (id, key, title, severity, detected_at, resolved_at)
        SELECT n, 'INC-' || (1000 + n),
          {_case("svc", SERVICES)} || ': ' || {_case("sym", SYMPTOMS)},
          sev, {ts("det")}, CASE WHEN res IS NULL THEN NULL ELSE {ts("res")} END
        FROM bench_gen ORDER BY n"""
    alerts = f"""
        INSERT INTO alert (incident, issue_time, source)
        SELECT g.n,
          {ts("g.det - 60 * CASE ks.k WHEN 1 THEN g.o1 WHEN 2 THEN g.o2 ELSE g.o3 END")},
          {_case(f"{rnd(alert_key, 21, seed)} % 3", SOURCES)}
        FROM bench_gen AS g JOIN {ONE_TO_FOUR} ON ks.k <= g.na
        ORDER BY g.n, ks.k"""
    timeline = f"""
        INSERT INTO timeline_event (incident, kind, phase, occurred_at, note)
        SELECT g.n, 'phase_entered', {_case("ks.k - 1", PHASES)},
          {
        ts(
            "CASE ks.k WHEN 1 THEN g.det WHEN 2 THEN g.gather "
            "WHEN 3 THEN g.gather + (g.end_ - g.gather) / 2 ELSE g.end_ END"
        )
    },
          NULL
        FROM bench_gen AS g JOIN {ONE_TO_FOUR}
          ON (ks.k <= 3 OR g.res IS NOT NULL) AND (ks.k <> 2 OR g.quirk <> {QUIRK_NO_GATHER})
        ORDER BY g.n, ks.k"""
    milestone_rows = f"""
        SELECT g.n, ks.k, g.end_, g.det + 1800 * ks.k AS eta,
          CASE WHEN {rnd(alert_key, 30, seed)} % 100 < 15
            THEN g.det + 1800 * ks.k + 60 * (1 + {rnd(alert_key, 31, seed)} % 20)
            ELSE g.det + 1800 * ks.k - 60 * ({rnd(alert_key, 31, seed)} % 11) END AS delivered,
          {rnd(alert_key, 32, seed)} % 100 AS pending
        FROM bench_gen AS g JOIN {ONE_TO_FOUR} ON ks.k <= g.nm"""
    milestones = f"""
        INSERT INTO milestone (incident, name, committed_eta, delivered_at)
        SELECT m.n, 'update-' || m.k, {ts("m.eta")},
          CASE WHEN m.pending = 0 THEN NULL ELSE {ts("m.delivered")} END
        FROM ({milestone_rows}) AS m
        WHERE m.delivered <= m.end_
        ORDER BY m.n, m.k"""
    score_x100 = f"430 + (70 * 100 * {normal(alert_key, 40, seed)}) / {NORMAL_SD_X100}"
    survey_rows = f"""
        SELECT g.n, ks.k, g.end_, ({score_x100} + 50) / 100 AS raw
        FROM bench_gen AS g JOIN {ONE_TO_FOUR} ON ks.k <= g.ns AND g.res IS NOT NULL"""
    surveys = f"""
        INSERT INTO survey_response (incident, score, submitted_at)
        SELECT s.n, CASE WHEN s.raw < 1 THEN 1 WHEN s.raw > 5 THEN 5 ELSE s.raw END,
          {ts("s.end_ + 3600 * (1 + s.k)")}
        FROM ({survey_rows}) AS s
        ORDER BY s.n, s.k"""
    out = [
        "DROP TABLE IF EXISTS bench_gen",
        staging,
        incidents,
        alerts,
        timeline,
        milestones,
        surveys,
        "DROP TABLE bench_gen",
    ]
    if dialect.name == "postgres":
        out.append(f"SELECT setval(pg_get_serial_sequence('incident', 'id'), {max(count, 1)})")
    return out


def dialect_of(url: str) -> Dialect:
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return Dialect("sqlite")
    if scheme in ("postgres", "postgresql"):
        return Dialect("postgres")
    raise ValueError(f"unsupported database URL {url!r}")


def sqlite_file(url: str) -> str:
    """Return the file of a sqlite:///relative or sqlite:////absolute URL (as registry/db.py)."""
    path = unquote(urlparse(url).path)
    return path[1:] if path.startswith("/") else path


async def generate(url: str, count: int, seed: int = DEFAULT_SEED) -> dict[str, int]:
    """Insert `count` incidents with their data in one transaction; return row counts by table."""
    dialect = dialect_of(url)
    sql = statements(dialect, count, seed)
    tables = ("incident", "alert", "timeline_event", "milestone", "survey_response")
    if dialect.name == "postgres":
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                for statement in sql:
                    await conn.execute(statement)
            return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in tables}
        finally:
            await conn.close()
    conn = sqlite3.connect(sqlite_file(url), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in sql:
            conn.execute(statement)
        conn.execute("COMMIT")
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a migrated, empty database")
    parser.add_argument("--incidents", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args()
    started = time.perf_counter()
    counts = asyncio.run(generate(args.database_url, args.incidents, args.seed))
    print(f"generated {counts} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
