"""Liveness and readiness: public, and readiness means "reachable and migrated"."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ENV, make_token

MIM = str(Path(sys.executable).parent / "mim")
ROOT = Path(__file__).resolve().parents[2]


async def test_healthz_is_200_without_a_token(client) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"


async def test_healthz_ignores_a_bad_token(client) -> None:
    response = await client.get("/healthz", headers={"Authorization": "Bearer not-a-jwt"})
    assert response.status == 200


async def test_readyz_is_200_ok_on_the_migrated_database_without_a_token(client) -> None:
    response = await client.get("/readyz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok"


async def test_readyz_is_200_with_a_token_too(client) -> None:
    response = await client.get(
        "/readyz", headers={"Authorization": f"Bearer {make_token('exec')}"}
    )
    assert response.status == 200
    assert (await response.json())["status"] == "ok"


# --- a database that is not migrated: a separate SQLite file served by its own `mim serve` ---


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mim_env(database_url: str) -> dict[str, str]:
    return {**os.environ, **ENV, "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}


@asynccontextmanager
async def served(database_url: str) -> AsyncIterator[Callable[[str], str]]:
    """Run `mim serve` on its own port and database; yield a function making URLs."""
    port = free_port()
    process = subprocess.Popen(
        [MIM, "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=mim_env(database_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                if process.poll() is not None:
                    raise AssertionError(process.stderr.read().decode())  # type: ignore[union-attr]
                try:
                    async with session.get(f"{base}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("mim serve did not come up")
        yield lambda path: base + path
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


async def readyz(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


@pytest.mark.skipif(not Path(MIM).exists(), reason="the mim command is not installed")
async def test_readyz_is_503_until_the_database_is_migrated(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'not-migrated.sqlite3'}"
    async with served(database_url) as url:
        status, body = await readyz(url("/readyz"))
        assert status == 503
        assert body["status"] != "ok"

        live, _ = await readyz(url("/healthz"))
        assert live == 200

        migrated = subprocess.run(
            [MIM, "migrate"],
            cwd=ROOT,
            env=mim_env(database_url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrated.returncode == 0, migrated.stderr

        status, body = await readyz(url("/readyz"))
        assert status == 200
        assert body["status"] == "ok"
