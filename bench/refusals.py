"""What a refusal costs a worker: refused as its bytes arrive, against refused by the middleware.

One worker, pinned to the first core, with a bound of one request in flight and the bound fixed
(`MIM_SHED_LAG=0`), is flooded by 500 keep-alive connections that resend as soon as they are
answered (tests/security/flood.py, closed loop, on the second core): nearly every request is
refused. The worker serves the same application two ways, alternately, in the same run:

- `middleware`: aiohttp's own runner, so every refusal goes through aiohttp's request machinery
  (a Request, a task, the shed middleware, a prepared response), as before server/shed.py's
  `Refusing`;
- `early`: server/shed.Runner, as `mim serve` serves, where a refusal is written as it arrives.

It prints, per round and runner, the answers a second, the worker's CPU (from /proc) per answer,
and the ratio of the two costs.

    .venv/bin/python bench/refusals.py                 # 3 rounds of 4 s per runner
    .venv/bin/python bench/refusals.py --rounds 1 --seconds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER_CORE, LOAD_CORE = 0, 1
SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _serve(runner_kind: str, port: int) -> None:
    from aiohttp import web

    from server import shed
    from server.app import create_app
    from server.config import Settings

    app = create_app(Settings.from_env())
    runner_class = shed.Runner if runner_kind == "early" else web.AppRunner
    runner = runner_class(app, handle_signals=False, access_log=None)
    await runner.setup()
    shed.freeze_heap()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def _token() -> str:
    import jwt

    now = int(time.time())
    claims = {"sub": "bench", "persona": "exec", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _run(kind: str, env: dict[str, str], seconds: float) -> dict[str, float]:
    port = _free_port()
    worker = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, {WORKER_CORE}),
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.1)
        load = [
            sys.executable, "-m", "tests.security.flood", "--port", str(port),
            "--token", _token(), "--connections", "500", "--cpu", str(LOAD_CORE),
        ]  # fmt: skip
        subprocess.run([*load, "--seconds", "1"], cwd=ROOT, capture_output=True, check=True)
        cpu = _cpu_seconds(worker.pid)
        done = subprocess.run(
            [*load, "--seconds", str(seconds)], cwd=ROOT, capture_output=True, check=True
        )
        cpu = _cpu_seconds(worker.pid) - cpu  # the load's start-up costs the worker nothing
    finally:
        worker.terminate()
        worker.wait()
    found = json.loads(done.stdout)
    admitted, refused = len(found["admitted"]), len(found["refused"])
    assert not found["other"] and not found["broken"], found["other"]
    return {
        "admitted": admitted,
        "refused": refused,
        "per_second": (admitted + refused) / seconds,
        "cpu_us": 1e6 * cpu / (admitted + refused),
        "cpu_share": cpu / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--serve", choices=["early", "middleware"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sys.path.insert(0, str(ROOT))
        asyncio.run(_serve(args.serve, args.port))
        return
    with tempfile.TemporaryDirectory(prefix="mim-refusals-") as scratch:
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{scratch}/bench.sqlite3",
            "MIM_JWT_SECRET": SECRET,
            "MIM_MAX_INFLIGHT": "1",
            "MIM_SHED_LAG": "0",
            "MIM_RECOMPUTE_POLL": "0",
            "MIM_LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
        }
        mim = str(Path(sys.executable).parent / "mim")
        for command in ("migrate", "demo"):
            subprocess.run([mim, command], env=env, cwd=ROOT, capture_output=True, check=True)
        costs: dict[str, list[float]] = {"middleware": [], "early": []}
        for round_ in range(1, args.rounds + 1):
            for kind in ("middleware", "early"):
                found = _run(kind, env, args.seconds)
                costs[kind].append(found["cpu_us"])
                print(
                    f"round {round_} {kind:10}: {found['per_second']:8,.0f} answers/s, "
                    f"{found['cpu_us']:6.1f} µs of worker CPU per answer "
                    f"(worker at {100 * found['cpu_share']:.0f}%), "
                    f"{found['admitted']:,} admitted, {found['refused']:,} refused",
                    flush=True,
                )
        middleware, early = min(costs["middleware"]), min(costs["early"])
        print(
            f"best of {args.rounds}: middleware {middleware:.1f} µs, early {early:.1f} µs per "
            f"refusal: early costs {early / middleware:.2f}x ({middleware / early:.1f}x cheaper)"
        )


if __name__ == "__main__":
    main()
