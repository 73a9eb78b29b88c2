"""The catalogue page against the GraphQL KPI list, in the same run (issue 15's speed goal).

Starts the service (`mim serve`, one worker) on the benchmark database, signs in an exec through
the sign-in form, and drives, each with `--connections` keep-alive connections for `--duration`
seconds (after `--warmup`):

- list:      `POST /graphql` with the plain KPI list (bench/dashboard.py's LIST), exec token
- catalogue: `GET /ui/kpis` with the exec's session cookie: every visible KPI's definition, its
             P1 and P2 summaries over all incidents and its 13-week P1 trend, rendered as HTML

and prints req/s, p50/p99 and the ratio catalogue / list (the goal: at least 0.3).

    .venv/bin/python bench/perf_data.py      # 100,000 incidents in mim_perf_bench (~1 min)
    .venv/bin/python bench/pages.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import dashboard  # noqa: E402  (the service runner, the token and the lean load driver)

HOST = dashboard.HOST


async def sign_in(port: int, bearer: str) -> str:
    """Sign in through the form as a browser does; return the session cookie's value."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        base = f"http://{HOST}:{port}"
        form = await (await http.get(f"{base}/ui/login")).text()
        found = re.search(r'name="csrf" value="([^"]+)"', form)
        assert found is not None, form[:500]
        response = await http.post(
            f"{base}/ui/login",
            data={"token": bearer, "csrf": found[1], "next": "/ui/kpis"},
            allow_redirects=False,
        )
        assert response.status == 303, await response.text()
        return response.cookies["mim_session"].value


def page_bytes(port: int, path: str, session: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nCookie: mim_session={session}\r\n\r\n"
    ).encode()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="mim-pages-"))
    command = [str(ROOT / ".venv/bin/mim"), "serve", "--host", HOST, "--port", str(args.port)]
    server = dashboard.Server("service", args.port, command, logs / "service.log")
    bearer = dashboard.token()
    results: dict[str, Any] = {"cells": {}}
    try:
        server.start(args.database_url)
        await dashboard.wait_ready(server, bearer)
        session = await sign_in(args.port, bearer)
        cells = {
            "list": dashboard.post_bytes(args.port, dashboard.LIST, bearer),
            "catalogue": page_bytes(args.port, "/ui/kpis", session),
        }
        for name, data in cells.items():
            status, body, _ = await dashboard.request(args.port, data)
            assert status == 200, (name, status, body[:300])
            results[f"{name}_bytes"] = len(body)
        for name, data in cells.items():
            print(f"{name:<10} driving {args.duration:.0f} s ...", flush=True)
            cell = await dashboard.load(
                args.port, data, args.connections, args.warmup, args.duration
            )
            results["cells"][name] = cell
            print(
                f"{name:<10} {cell['rps']:9.1f} req/s  p50 {cell['p50_ms']:7.1f} ms  "
                f"p99 {cell['p99_ms']:7.1f} ms  errors {cell['errors']}",
                flush=True,
            )
    finally:
        server.stop()
    cells = results["cells"]
    ratio = cells["catalogue"]["rps"] / max(cells["list"]["rps"], 1e-9)
    results["ratio"] = ratio
    results["when"] = datetime.now(UTC).isoformat(timespec="minutes")
    results["commit"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(f"\ncatalogue / list: {ratio:.2f}x (goal: at least 0.3x)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=dashboard.DEFAULT_URL)
    parser.add_argument("--port", type=int, default=8795)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
