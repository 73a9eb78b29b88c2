"""The `mim` command: tokens, the KPI list and the demo data set.

`mim token` needs no database and runs in-process through click's CliRunner. The commands that
touch the database call asyncio.run(), which cannot run inside the tests' event loop, so they run
as the installed `mim` command in a subprocess against the test database.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner

from registry.tables import (
    Alert,
    Incident,
    KpiDefinition,
    KpiObservation,
    KpiRevision,
    Milestone,
    TimelineEvent,
)
from server.cli import main
from tests.conftest import ENV, TEST_SECRET, gql

MIM = str(Path(sys.executable).parent / "mim")
ROOT = Path(__file__).resolve().parents[2]
SEED_SLUGS = {"cadence-adherence", "mtta", "mttr", "stakeholder-satisfaction"}
NO_KEYS = {"MIM_JWT_SECRET": None, "MIM_JWT_PUBLIC_KEY": None, "MIM_JWT_JWKS_URL": None}

needs_mim = pytest.mark.skipif(not Path(MIM).exists(), reason="the mim command is not installed")


def mim(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `mim` against the test database; assert it succeeded."""
    result = subprocess.run(
        [MIM, *args],
        cwd=ROOT,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result


def decode(token: str, secret: str = TEST_SECRET) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(
        token, secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
    )
    return claims


# --- mim token -----------------------------------------------------------------------------


def test_token_prints_a_token_signed_with_the_secret_for_the_persona_and_subject() -> None:
    before = int(time.time())
    result = CliRunner().invoke(
        main, ["token", "--persona", "exec", "--sub", "x"], env={"MIM_JWT_SECRET": TEST_SECRET}
    )
    after = int(time.time())
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert len(result.output.strip().splitlines()) == 1
    claims = decode(token)
    assert claims["persona"] == "exec"
    assert claims["sub"] == "x"
    assert before + 3600 <= int(claims["exp"]) <= after + 3600  # type: ignore[call-overload]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_token_expires_after_the_given_ttl() -> None:
    before = int(time.time())
    result = CliRunner().invoke(
        main,
        ["token", "--persona", "admin", "--sub", "ops", "--ttl", "120"],
        env={"MIM_JWT_SECRET": TEST_SECRET},
    )
    after = int(time.time())
    assert result.exit_code == 0, result.output
    claims = decode(result.output.strip())
    assert before + 120 <= int(claims["exp"]) <= after + 120  # type: ignore[call-overload]


def test_token_longer_than_the_max_ttl_is_refused_before_it_is_signed() -> None:
    result = CliRunner().invoke(
        main,
        ["token", "--persona", "admin", "--ttl", "7200"],
        env={"MIM_JWT_SECRET": TEST_SECRET, "MIM_JWT_MAX_TTL": "3600"},
    )
    assert result.exit_code == 2, result.output
    assert "MIM_JWT_MAX_TTL" in result.output and "--ttl" in result.output
    assert "Traceback" not in result.output
    assert not any(word.count(".") == 2 for word in result.output.split()), "no token printed"


def test_token_with_several_personas_carries_them_all() -> None:
    result = CliRunner().invoke(
        main,
        ["token", "--persona", "responder", "--persona", "ingest"],
        env={"MIM_JWT_SECRET": TEST_SECRET},
    )
    assert result.exit_code == 0, result.output
    claims = decode(result.output.strip())
    assert sorted(claims["persona"]) == ["ingest", "responder"]  # type: ignore[type-var]


def test_token_signed_with_another_secret_does_not_verify_with_the_test_secret() -> None:
    other = "another-secret-that-is-long-enough-for-hs256-9876543210"
    result = CliRunner().invoke(main, ["token", "--persona", "exec"], env={"MIM_JWT_SECRET": other})
    assert result.exit_code == 0, result.output
    assert decode(result.output.strip(), other)["persona"] == "exec"
    with pytest.raises(jwt.InvalidSignatureError):
        decode(result.output.strip())


def test_token_rejects_an_unknown_persona() -> None:
    result = CliRunner().invoke(
        main, ["token", "--persona", "janitor"], env={"MIM_JWT_SECRET": TEST_SECRET}
    )
    assert result.exit_code != 0
    assert "eyJ" not in result.output


async def test_token_from_the_cli_is_accepted_by_the_service(client) -> None:
    result = CliRunner().invoke(
        main,
        ["token", "--persona", "exec", "--sub", "cli-user"],
        env={"MIM_JWT_SECRET": TEST_SECRET},
    )
    assert result.exit_code == 0, result.output
    body = await gql(
        client, "{ viewer { subject personas } kpis { slug } }", token=result.output.strip()
    )
    assert "errors" not in body, body
    assert body["data"]["viewer"] == {"subject": "cli-user", "personas": ["EXEC"]}
    assert "mtta" not in [k["slug"] for k in body["data"]["kpis"]]


def test_token_without_a_secret_creates_a_private_secret_file_and_reuses_it(
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "jwt-secret"
    env = {**NO_KEYS, "MIM_JWT_SECRET_FILE": str(secret_file)}

    first = CliRunner().invoke(main, ["token", "--persona", "admin", "--sub", "a"], env=env)
    assert first.exit_code == 0, first.output
    assert secret_file.exists()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret.encode()) >= 32
    assert decode(first.output.strip(), secret)["sub"] == "a"
    with pytest.raises(jwt.InvalidSignatureError):
        decode(first.output.strip())

    content = secret_file.read_bytes()
    second = CliRunner().invoke(main, ["token", "--persona", "exec", "--sub", "b"], env=env)
    assert second.exit_code == 0, second.output
    assert secret_file.read_bytes() == content
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    claims = decode(second.output.strip(), secret)
    assert (claims["sub"], claims["persona"]) == ("b", "exec")


def test_token_secret_files_differ_between_places(tmp_path: Path) -> None:
    secrets = []
    for name in ("one", "two"):
        path = tmp_path / name
        result = CliRunner().invoke(
            main,
            ["token", "--persona", "admin"],
            env={**NO_KEYS, "MIM_JWT_SECRET_FILE": str(path)},
        )
        assert result.exit_code == 0, result.output
        secrets.append(path.read_text().strip())
    assert secrets[0] != secrets[1]


# --- mim kpi list --------------------------------------------------------------------------


@needs_mim
async def test_kpi_list_lists_the_four_seed_slugs() -> None:
    result = mim("kpi", "list")
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    header, *kpis = rows
    assert header[0] == "slug"
    assert {row[0] for row in kpis} == SEED_SLUGS
    assert len(kpis) == 4
    by_slug = {row[0]: row for row in kpis}
    assert "internal" in by_slug["mtta"]
    assert "exec" in by_slug["mttr"]


@needs_mim
async def test_kpi_list_shows_a_kpi_created_over_graphql(client) -> None:
    body = await gql(
        client,
        'mutation { createKpiDefinition(input: {slug: "mean-time-to-detect", name: "MTTD", '
        'description: "d", formula: "f", units: "minutes", visibility: INTERNAL, '
        'owner: "SRE", reviewCadence: "P30D"}) { slug } }',
    )
    assert "errors" not in body, body
    result = mim("kpi", "list")
    slugs = {line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip()}
    assert slugs == {*SEED_SLUGS, "mean-time-to-detect"}


# --- mim demo ------------------------------------------------------------------------------


async def table_counts() -> dict[str, int]:
    return {
        table._meta.tablename: await table.count()
        for table in (Incident, Alert, TimelineEvent, Milestone, KpiObservation)
    }


@needs_mim
async def test_demo_loads_incidents_with_their_data_and_observations() -> None:
    result = mim("demo", "--incidents", "20")
    assert "20" in result.stdout

    counts = await table_counts()
    assert counts["incident"] == 20
    assert counts["alert"] >= 20
    assert counts["timeline_event"] >= 20
    assert counts["milestone"] > 0
    assert counts["kpi_observation"] > 0

    incident_ids = {r["id"] for r in await Incident.select(Incident.id)}
    for table in (Alert, TimelineEvent, KpiObservation):
        owners = {r["incident"] for r in await table.select(table.incident)}
        assert owners == incident_ids, f"every demo incident has {table._meta.tablename} rows"
    observed = {r["kpi"] for r in await KpiObservation.select(KpiObservation.kpi)}
    assert observed <= SEED_SLUGS
    assert len(observed) >= 2
    # The demo adds data, not definitions: the seed KPIs with their two revisions each.
    assert (await KpiDefinition.count(), await KpiRevision.count()) == (4, 8)
    # Its observations are the seed expressions (version 2) computed over the demo's data.
    sources = await KpiObservation.select(
        KpiObservation.source, KpiObservation.definition_version
    ).distinct()
    assert sources == [{"source": "computed", "definition_version": 2}]


@needs_mim
async def test_demo_if_empty_does_nothing_when_incidents_exist() -> None:
    mim("demo", "--incidents", "20")
    loaded = await table_counts()
    assert loaded["incident"] == 20

    again = mim("demo", "--incidents", "20", "--if-empty")
    assert await table_counts() == loaded
    assert "loaded" not in again.stdout


@needs_mim
async def test_demo_if_empty_loads_into_an_empty_database() -> None:
    assert (await table_counts())["incident"] == 0
    mim("demo", "--incidents", "5", "--if-empty")
    assert (await table_counts())["incident"] == 5


@needs_mim
async def test_demo_data_is_served_over_graphql(client) -> None:
    mim("demo", "--incidents", "20")
    body = await gql(
        client,
        "{ incidents(first: 100) { totalCount edges { node { id alerts { issueTime } "
        "timeline { kind } kpis { value } } } } "
        'kpi(slug: "mttr") { summary { count value } } }',
    )
    assert "errors" not in body, body
    connection = body["data"]["incidents"]
    assert connection["totalCount"] == 20
    assert len(connection["edges"]) == 20
    assert all(edge["node"]["alerts"] for edge in connection["edges"])
    assert all(edge["node"]["timeline"] for edge in connection["edges"])
    summary = body["data"]["kpi"]["summary"]
    assert summary["count"] > 0
    assert summary["value"] > 0
