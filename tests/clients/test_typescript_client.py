"""The frontend's codegen (clients/typescript/codegen.ts, graphql-codegen's client preset).

Over the shipped operations it makes types that a frontend's code type-checks against, and
documents that carry the hashes the server knows them by, which a token limited to the shipped
operations may send alone. Runs the pinned tools `make clients` installs (npm ci).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import graphql
import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.config import Settings
from server.persisted import SHIPPED_BY_HASH
from tests.conftest import ENV, make_token

HERE = Path(__file__).resolve().parents[2] / "clients" / "typescript"
BIN = HERE / "node_modules" / ".bin"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (BIN / "graphql-codegen").exists(),
    reason="the TypeScript codegen needs Node and `make clients` (npm ci in clients/typescript)",
)


def operation_name(document: str) -> str:
    [operation] = graphql.parse(document).definitions
    assert isinstance(operation, graphql.OperationDefinitionNode) and operation.name is not None
    return operation.name.value


@pytest.fixture(scope="module")
def generated() -> Path:
    """Run graphql-codegen as a frontend would, and return the folder it writes."""
    subprocess.run(
        [BIN / "graphql-codegen", "--config", "codegen.ts", "--silent"],
        cwd=HERE,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return HERE / "src" / "gql"


@pytest.fixture
def manifest(generated: Path) -> dict[str, str]:
    """Return the hash -> printed document map the preset writes."""
    found: dict[str, str] = json.loads((generated / "persisted-documents.json").read_text())
    return found


def test_the_generated_types_and_a_frontends_use_of_them_type_check(generated: Path) -> None:
    checked = subprocess.run(
        [BIN / "tsc", "--noEmit", "-p", "tsconfig.json"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_document_carries_the_hash_the_server_ships_it_under(
    generated: Path, manifest: dict[str, str]
) -> None:
    assert set(manifest) == set(SHIPPED_BY_HASH)
    for sha256, printed in manifest.items():
        assert operation_name(printed) == operation_name(SHIPPED_BY_HASH[sha256])
    embedded = re.findall(
        r'"__meta__":\{"hash":"([0-9a-f]{64})"\}', (generated / "graphql.ts").read_text()
    )
    assert sorted(embedded) == sorted(SHIPPED_BY_HASH)


@pytest.fixture
async def trusted_client() -> AsyncIterator[TestClient]:
    settings = Settings.from_env({**ENV, "MIM_TRUSTED_OPERATIONS": "exec,stakeholder"})
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


async def test_an_exec_token_limited_to_shipped_operations_runs_a_generated_hash_alone(
    trusted_client: TestClient, manifest: dict[str, str]
) -> None:
    [sha256] = [h for h, printed in manifest.items() if operation_name(printed) == "ExecDashboard"]
    # What clients/typescript/example.ts sends for a query: a GET, the hash alone.
    params = {
        "variables": json.dumps({"severity": "P1"}),
        "extensions": json.dumps({"persistedQuery": {"version": 1, "sha256Hash": sha256}}),
    }
    headers = {"Authorization": f"Bearer {make_token('exec')}"}
    response = await trusted_client.get("/graphql", params=params, headers=headers)
    body = await response.json()
    assert response.status == 200 and "errors" not in body, body
    assert {kpi["slug"] for kpi in body["data"]["kpis"]} == {
        "mttr",
        "cadence-adherence",
        "stakeholder-satisfaction",
    }
    # The preset's printed text is not the shipped text: such a token may not send it instead.
    printed = await trusted_client.post(
        "/graphql", json={"query": manifest[sha256]}, headers=headers
    )
    assert [e["extensions"]["code"] for e in (await printed.json())["errors"]] == ["FORBIDDEN"]
