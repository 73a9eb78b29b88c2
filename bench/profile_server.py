"""Profile the service under load: where does a request's CPU time go?

Runs `mim serve`'s application in this process under cProfile (pyinstrument is not a project
dependency; cProfile is in the standard library), drives one query at it from a separate
process over 12 connections with an exec token, then prints the top lines by own time and by
cumulative time. Usage:

    .venv/bin/python bench/profile_server.py --query q2 --seconds 10
    .venv/bin/python bench/profile_server.py --query q2 --fast-path 0   # the standard executor
    .venv/bin/python bench/profile_server.py --query dashboard          # KPI summaries
    .venv/bin/python bench/profile_server.py --query dashboard --profile 0   # req/s, no profiler
    .venv/bin/python bench/profile_server.py --query rest-q3 --profile 0     # the REST mirror

Needs the data set of bench/perf_data.py (DATABASE_URL defaults to mim_perf_bench).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/mim_perf_bench"
SECRET = "profile-secret-that-is-long-enough-0123456789"
QUERIES = {
    "q1": "{ kpis { slug name units visibility targets { severity persona comparison "
    "threshold } } }",
    "q2": "{ incidents(first: 50) { edges { node { id title severity kpis { value timestamp "
    "kpi { slug name } } } } } }",
    "q3": "query($id: ID!) { incident(id: $id) { id title kpis { value timestamp "
    "kpi { slug name } } } }",
    # The README's exec dashboard, and 13-week series (bench/dashboard.py's documents).
    "dashboard": "{ kpis { slug name units summary(severity: P1) { count value "
    "target { comparison threshold } meetsTarget } } }",
    "series": '{ kpi(slug: "mttr") { series(bucket: WEEK, from: "2026-08-24T00:00:00+00:00", '
    'to: "2026-11-23T00:00:00+00:00", severity: P1) { start count mean p50 p90 } } }',
    "series-all": '{ kpis { slug series(bucket: WEEK, from: "2026-08-24T00:00:00+00:00", '
    'to: "2026-11-23T00:00:00+00:00") { start count mean p50 p90 } } }',
}
# The seed page's REST reads: Q1's and Q3's questions asked of the REST mirror.
REST = {"rest-q1": "/kpis", "rest-q3": "/incidents/{id}/kpis"}


async def drive(port: int, query: str, seconds: float, connections: int, token: str) -> None:
    """Send `query` back to back over `connections` connections for `seconds`; print req/s."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/graphql"
    headers = {"Authorization": f"Bearer {token}"}
    done = 0
    stop = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal done
        async with aiohttp.ClientSession(headers=headers) as session:
            while time.perf_counter() < stop:
                key = f"INC-{random.randint(1001, 101000)}"
                if query in REST:
                    request = session.get(f"http://127.0.0.1:{port}{REST[query].format(id=key)}")
                else:
                    variables = {"id": key} if query == "q3" else {}
                    body = {"query": QUERIES[query], "variables": variables}
                    request = session.post(url, json=body)
                async with request as response:
                    await response.read()
                    if response.status != 200:
                        raise SystemExit(f"HTTP {response.status}")
                done += 1

    await asyncio.gather(*(connection() for _ in range(connections)))
    print(f"driver: {done / seconds:,.0f} req/s ({query})", flush=True)


def serve_profiled(port: int, top: int, profiled: bool) -> None:
    """Serve until SIGINT under cProfile, then print the top lines."""
    from aiohttp import web

    from server.app import create_app
    from server.config import Settings

    app = create_app(Settings.from_env())
    if not profiled:
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    finally:
        profile.disable()
        for order in ("tottime", "cumulative"):
            out = io.StringIO()
            stats = pstats.Stats(profile, stream=out).strip_dirs().sort_stats(order)
            stats.print_stats(top)
            print(f"--- top {top} by {order} ---")
            print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query", choices=sorted([*QUERIES, *REST]), default="q2")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=12)
    parser.add_argument("--port", type=int, default=8195)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--fast-path", choices=("0", "1"), default="1")
    parser.add_argument(
        "--profile", choices=("0", "1"), default="1", help="0: serve without cProfile (req/s only)"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
    os.environ.setdefault("MIM_JWT_SECRET", SECRET)
    os.environ["MIM_FAST_PATH"] = args.fast_path
    if args.serve:
        serve_profiled(args.port, args.top, args.profile == "1")
    elif args.drive:
        asyncio.run(drive(args.port, args.query, args.seconds, args.connections, args.token))
    else:
        run(args)


def run(args: argparse.Namespace) -> None:
    import urllib.request

    from server.auth import issue_token
    from server.config import Settings

    token = issue_token(Settings.from_env(), personas=["exec"], subject="profile")
    me = [sys.executable, __file__, "--port", str(args.port), "--fast-path", args.fast_path]
    server = subprocess.Popen([*me, "--serve", "--top", str(args.top), "--profile", args.profile])
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{args.port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        load = ["--query", args.query, "--seconds", str(args.seconds)]
        load += ["--connections", str(args.connections), "--token", token]
        subprocess.run([*me, "--drive", *load], check=True)
    finally:
        server.send_signal(2)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
