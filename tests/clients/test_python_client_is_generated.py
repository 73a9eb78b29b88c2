"""The checked-in typed Python client (clients/python/mim_client) is what the pinned generator
makes from today's schema.graphql and schema/operations, byte for byte.

Regenerates into a temporary folder with the codegen venv that `make clients` builds (the
generator needs a ruff older than the project's, so it has its own venv). Without that venv the
test is skipped, saying so; in CI it fails instead, so the comparison always runs there.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODEGEN_PYTHON = ROOT / "clients" / "python" / ".venv" / "bin" / "python"
CHECKED_IN = ROOT / "clients" / "python" / "mim_client"


def files(package: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(package)): path.read_bytes()
        for path in sorted(package.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_checked_in_python_client_is_what_the_generator_makes(tmp_path: Path) -> None:
    if not CODEGEN_PYTHON.exists():
        message = f"{CODEGEN_PYTHON.relative_to(ROOT)} is absent: run `make clients`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    subprocess.run(
        [CODEGEN_PYTHON, ROOT / "clients" / "python" / "generate.py", "--into", tmp_path],
        check=True,
        capture_output=True,
        timeout=300,
    )
    fresh, kept = files(tmp_path / "mim_client"), files(CHECKED_IN)
    differ = sorted(
        name for name in fresh.keys() | kept.keys() if fresh.get(name) != kept.get(name)
    )
    assert differ == [], f"run `make clients` and commit clients/python/mim_client: {differ}"
