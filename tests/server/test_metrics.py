"""GET /metrics: Prometheus text for the metrics token or an admin, a 404 like any unknown route
for everyone else, counters that move with traffic on both GraphQL paths, bounded labels that
carry no slug, subject, token or incident id."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from registry import db
from server.app import create_app
from server.config import Settings
from server.observe import METRICS
from tests.conftest import gql, is_postgres, make_token

METRICS_TOKEN = "metrics-token-0123456789abcdef"
DOCS = Path(__file__).resolve().parents[2] / "docs"
PLAN_QUERY = "query ExecDashboard { kpis { slug name units } }"
EXECUTOR_QUERY = "query Whoami { viewer { subject personas } }"
# Not covered by the plans (revisions), and it reads the database.
READING_QUERY = "{ kpis { slug revisions { version } } }"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    app = create_app(replace(settings, metrics_token=METRICS_TOKEN))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def scrape(client: TestClient, bearer: str = METRICS_TOKEN) -> dict[str, Any]:
    """Return {(name, labels): value} from /metrics, read by Prometheus' own parser."""
    response = await client.get("/metrics", headers={"Authorization": f"Bearer {bearer}"})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = await response.text()
    samples: dict[Any, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    samples["_text"] = text  # type: ignore[index]
    return samples


def value(samples: dict[Any, Any], name: str, **labels: str) -> float:
    """Return the sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(
        v
        for key, v in samples.items()
        if key != "_text" and key[0] == name and wanted <= set(key[1])
    )


async def test_metrics_token_and_admin_token_read_the_metrics(client: TestClient) -> None:
    by_token = await scrape(client)
    by_admin = await scrape(client, make_token("admin"))
    for samples in (by_token, by_admin):
        assert value(samples, "mim_build_info", engine="postgresql" if is_postgres() else "sqlite")
        assert ("mim_requests_refused_total", frozenset({("limit", "depth")})) in samples


@pytest.mark.parametrize(
    "bearer",
    [
        None,
        "not-a-token",
        METRICS_TOKEN + "x",
        make_token("exec"),
        make_token("stakeholder"),
        make_token("responder"),
        make_token("ingest"),
    ],
    ids=["none", "garbage", "wrong-metrics-token", "exec", "stakeholder", "responder", "ingest"],
)
async def test_anyone_else_gets_the_answer_of_an_unknown_route(
    client: TestClient, bearer: str | None
) -> None:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    metrics = await client.get("/metrics", headers=headers)
    unknown = await client.get("/no-such-route", headers=headers)
    assert metrics.status == unknown.status
    assert metrics.status in (401, 404)
    assert await metrics.read() == await unknown.read()
    assert metrics.headers.get("Content-Type") == unknown.headers.get("Content-Type")
    assert metrics.headers.get("WWW-Authenticate") == unknown.headers.get("WWW-Authenticate")


async def test_metrics_are_not_served_when_turned_off(settings: Settings) -> None:
    app = create_app(replace(settings, metrics=False, metrics_token=METRICS_TOKEN))
    async with TestClient(TestServer(app)) as client:
        response = await client.get(
            "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert response.status == 401  # an unknown route, and the metrics token is no JWT
        response = await client.get(
            "/metrics", headers={"Authorization": f"Bearer {make_token('admin')}"}
        )
        assert response.status == 404


async def test_requests_and_operations_are_counted_by_route_status_and_path(
    client: TestClient,
) -> None:
    before = await scrape(client)
    for _ in range(3):
        body = await gql(client, PLAN_QUERY, persona="exec")
        assert "errors" not in body
    body = await gql(client, READING_QUERY, persona="exec")
    assert body["data"]["kpis"] and "errors" not in body
    body = await gql(client, "{ kpi(slug: 5) { slug } }", persona="exec")
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    response = await client.get("/kpis", headers={"Authorization": f"Bearer {make_token('exec')}"})
    assert response.status == 200
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("mim_http_requests_total", method="POST", route="/graphql", status="200") == 5
    assert moved("mim_http_requests_total", method="GET", route="/kpis", status="200") == 1
    assert moved("mim_http_request_duration_seconds_count", method="POST", route="/graphql") == 5
    assert (
        moved(
            "mim_graphql_operations_total",
            type="query",
            operation="ExecDashboard",
            path="plan",
            code="none",
        )
        == 3
    )
    assert (
        moved(
            "mim_graphql_operations_total",
            type="query",
            operation="other",
            path="executor",
            code="none",
        )
        == 1
    )
    assert moved("mim_graphql_operations_total", path="executor", code="BAD_USER_INPUT") == 1
    assert moved("mim_graphql_operation_duration_seconds_count", path="plan") == 3
    # The scrape itself is a request too: the earlier one was counted by the later one.
    assert moved("mim_http_requests_total", route="/metrics", status="200") == 1


async def test_revalidated_answers_are_counted(client: TestClient) -> None:
    headers = {"Authorization": f"Bearer {make_token('exec')}"}
    first = await client.get("/graphql", params={"query": PLAN_QUERY}, headers=headers)
    assert first.status == 200
    tag = first.headers["ETag"]
    before = await scrape(client)
    again = await client.get(
        "/graphql", params={"query": PLAN_QUERY}, headers={**headers, "If-None-Match": tag}
    )
    assert again.status == 304
    after = await scrape(client)
    for name, labels in (
        ("mim_http_not_modified_total", {"route": "/graphql"}),
        ("mim_http_requests_total", {"route": "/graphql", "status": "304"}),
        ("mim_graphql_operations_total", {"path": "not_modified", "operation": "ExecDashboard"}),
    ):
        assert value(after, name, **labels) - value(before, name, **labels) == 1, name


async def test_each_limit_counts_its_refusals(client: TestClient) -> None:
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    too_deep = (
        "{ incidents { edges { node { " + "kpis { incident { " * 6 + "id" + " } }" * 6 + " } } } }"
    )
    aliases = "{ " + " ".join(f"a{n}: viewer {{ subject }}" for n in range(16)) + " }"
    tokens = "{ viewer { " + " ".join(["subject"] * 1001) + " } }"
    costly = "{ " + " ".join(
        f"i{n}: incidents(first: 100) {{ edges {{ node {{ kpis {{ kpi {{ revisions {{ version }} }} }} }} }} }}"  # noqa: E501
        for n in range(5)
    ) + " }"  # fmt: skip
    listed = '{{ kpis {{ slug }} incident(id: "x") {{ kpis(slugs: [{}]) {{ value }} }} }}'.format(
        ", ".join(f'"k{n}"' for n in range(101))
    )
    limits = ("depth", "aliases", "tokens", "cost", "list_size", "body_size")

    async def refused() -> dict[str, float]:
        samples = await scrape(client)
        return {
            limit: value(samples, "mim_requests_refused_total", limit=limit) for limit in limits
        }

    oversized = json.dumps({"query": "{ viewer { subject } }", "pad": "x" * 2**20}).encode()
    for limit, query in (
        ("depth", too_deep), ("aliases", aliases), ("tokens", tokens), ("cost", costly),
        ("list_size", listed), ("body_size", None),
    ):  # fmt: skip
        before = await refused()
        if query is None:
            response = await client.post(
                "/graphql",
                data=io.BytesIO(oversized),
                headers={**admin, "Content-Type": "application/json"},
            )
            assert response.status == 413
        else:
            response = await client.post("/graphql", json={"query": query}, headers=admin)
            assert (await response.json())["errors"], limit
        after = await refused()
        assert after[limit] - before[limit] == 1, limit


async def test_requests_past_their_time_limit_are_counted(settings: Settings) -> None:
    app = create_app(replace(settings, metrics_token=METRICS_TOKEN, request_timeout_seconds=1e-9))
    async with TestClient(TestServer(app)) as slow:
        response = await slow.post(
            "/graphql",
            json={"query": READING_QUERY},
            headers={"Authorization": f"Bearer {make_token('admin')}"},
        )
        assert response.status == 503
        assert (await response.json())["errors"][0]["extensions"]["code"] == "TIMEOUT"
        metrics = app[METRICS]
        text = (await metrics.exposition()).decode()
        samples = {
            (s.name, s.labels.get("limit")): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }
        assert samples[("mim_requests_refused_total", "timeout")] == 1
        assert samples[("mim_requests_refused_total", "depth")] == 0
        timed_out = [
            s
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "mim_graphql_operations_total" and s.labels.get("code") == "TIMEOUT"
        ]
        assert [s.value for s in timed_out] == [1]


async def test_labels_stay_bounded_and_name_no_kpi_subject_token_or_incident(
    client: TestClient,
) -> None:
    secret_subject = "subject-that-must-not-appear"
    admin_token = make_token("admin", sub=secret_subject)
    admin = {"Authorization": f"Bearer {admin_token}"}
    incident = "INC-METRICS-7731"
    await gql(
        client,
        f'mutation {{ upsertIncident(input: {{ id: "{incident}", title: "t", severity: P1, '
        'detectedAt: "2026-11-27T09:00:00Z" }) { id } }',
        token=admin_token,
    )

    async def attack(n: int) -> None:
        await client.post(
            "/graphql",
            json={"query": f'query Attack{n} {{ kpi(slug: "mtta") {{ slug }} }}',
                  "operationName": f"Attack{n}"},
            headers=admin,
        )  # fmt: skip
        await client.get(f"/kpis/mtta-{n}", headers=admin)
        await client.get(f"/incidents/{incident}/kpis", headers=admin)
        brewed = await client.request("PATCH", f"/random-{n}", headers=admin)
        assert brewed.status in (404, 405), brewed.status

    for n in range(3):
        await attack(n)
    await scrape(client)  # the scrape's own series
    first = await scrape(client)
    for n in range(3, 40):
        await attack(n)
    second = await scrape(client)
    # Thirty-seven more operation names, paths and methods made no new series.
    assert {key for key in second if key != "_text"} == {key for key in first if key != "_text"}
    text = second["_text"]
    for needle in ("mtta", secret_subject, admin_token, incident, "Attack", "random-"):
        assert needle not in text, needle
    routes = {dict(key[1]).get("route") for key in second if key != "_text"} - {None}
    assert routes <= {"/graphql", "/kpis", "/kpis/{slug}", "/incidents/{id}/kpis", "/metrics",
                      "/healthz", "/readyz", "unmatched"}  # fmt: skip
    methods = {dict(key[1]).get("method") for key in second if key != "_text"} - {None}
    assert methods <= {"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE", "other"}


async def test_recompute_jobs_report_their_progress_and_duration(client: TestClient) -> None:
    before = await scrape(client)
    body = await gql(
        client,
        'mutation { createKpiDefinition(input: { slug: "alert-count", name: "Alerts", '
        'description: "d", formula: "count of alerts", expression: "count(alerts)", '
        'units: "count", visibility: INTERNAL, owner: "o", reviewCadence: "P90D" }) '
        "{ recompute { state done total } } }",
    )
    job = body["data"]["createKpiDefinition"]["recompute"]
    assert job["state"] == "DONE"
    after = await scrape(client)
    assert (
        value(after, "mim_recompute_jobs", state="done")
        - value(before, "mim_recompute_jobs", state="done")
        == 1
    )
    assert value(after, "mim_recompute_incidents_remaining", state="queued") == 0
    assert value(after, "mim_recompute_incidents_scanned", state="done") >= job["done"]
    ran = value(after, "mim_recompute_duration_seconds_count", outcome="done") - value(
        before, "mim_recompute_duration_seconds_count", outcome="done"
    )
    assert ran == 1
    assert "alert-count" not in after["_text"]


@pytest.mark.skipif(not is_postgres(), reason="SQLite opens a connection per statement: no pool")
async def test_pool_gauges_and_waits_on_postgresql(client: TestClient) -> None:
    samples = await scrape(client)
    assert value(samples, "mim_db_pool_max") == 10
    assert value(samples, "mim_db_pool_size") >= 1
    pool = db.engine().pool  # type: ignore[attr-defined]
    before = await scrape(client)  # (a scrape reads the job table through the pool)
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        asking = asyncio.create_task(gql(client, READING_QUERY, persona="admin"))
        await asyncio.sleep(0.3)
        assert not asking.done()  # it waits for a connection
    finally:
        for connection in held:
            await pool.release(connection)
    await asking
    after = await scrape(client)
    assert (
        value(after, "mim_db_pool_wait_seconds_count")
        - value(before, "mim_db_pool_wait_seconds_count")
        >= 1
    )


def _named_in(expression: str) -> set[str]:
    return set(re.findall(r"\bmim_[a-z_]*[a-z]\b", expression))


async def test_every_metric_the_docs_name_is_exported(client: TestClient) -> None:
    await gql(client, PLAN_QUERY, persona="exec")  # some traffic, so labelled series exist
    samples = await scrape(client)
    exported = {name for key in samples if key != "_text" for name in [key[0]]}
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    named = set().union(*(_named_in(e) for e in expressions))
    assert len(named) >= 12
    assert named <= exported, sorted(named - exported)
    guide = (DOCS / "operations.md").read_text()
    in_guide = _named_in(guide) - {"mim_kpi"}
    # Histograms and counters are named in the guide by family (without _bucket, _total, ...).
    families = {re.sub(r"_(bucket|count|sum|total|created)$", "", name) for name in exported}
    assert {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in in_guide} <= families


async def raw_request(client: TestClient, head: bytes) -> tuple[int, bytes]:
    """Send a request's bytes as they are (headers no client would send); return status, body."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(head)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


async def test_a_header_that_is_not_utf8_meets_the_unknown_route_answer(
    client: TestClient,
) -> None:
    answers = []
    for path in (b"/metrics", b"/no-such-route"):
        answers.append(
            await raw_request(
                client,
                b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: Bearer \xff\xfe\xfd\r\n\r\n",
            )
        )
    assert answers[0] == answers[1]
    assert answers[0][0] == 401


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_other_methods_meet_the_unknown_route_answer(client: TestClient, method: str) -> None:
    for bearer in (make_token("exec"), make_token("admin"), METRICS_TOKEN):
        headers = {"Authorization": f"Bearer {bearer}"}
        metrics = await client.request(method, "/metrics", headers=headers)
        unknown = await client.request(method, "/no-such-route", headers=headers)
        if bearer == METRICS_TOKEN:
            # The metrics token is no viewer's: elsewhere it is refused; here it is no scrape.
            assert (metrics.status, unknown.status) == (404, 401)
            continue
        assert metrics.status == unknown.status == 404
        assert await metrics.read() == await unknown.read()


async def test_faults_are_counted_with_the_code_they_answer(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from schema.fast_path import FastPath

    async def broken(self: Any, body: Any, viewer: Any) -> bytes:
        raise RuntimeError("a fault of the service")

    before = await scrape(client)
    monkeypatch.setattr(FastPath, "respond", broken)
    response = await client.post(
        "/graphql", json={"query": PLAN_QUERY}, headers={"Authorization": f"Bearer {make_token()}"}
    )
    monkeypatch.undo()
    assert response.status == 500
    after = await scrape(client)
    labels = {"operation": "ExecDashboard", "code": "INTERNAL"}
    moved = value(after, "mim_graphql_operations_total", **labels) - value(
        before, "mim_graphql_operations_total", **labels
    )
    assert moved == 1


async def test_a_scrape_answers_without_the_database(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry import recompute

    async def unreachable() -> Any:
        raise ConnectionRefusedError("the database is down")

    monkeypatch.setattr(recompute, "progress", unreachable)
    samples = await scrape(client)
    assert value(samples, "mim_build_info") == 1
    assert not any(key[0].startswith("mim_recompute_jobs") for key in samples if key != "_text")


async def test_an_echoed_message_is_not_counted_as_a_refusal(client: TestClient) -> None:
    before = await scrape(client)
    for text in (
        "Syntax Error: Document contains more than 1 tokens. Parsing aborted.",
        "'x' exceeds maximum operation depth of 1",
        "3 aliases found. Allowed: 1",
    ):
        echoing = '{ kpis(visibility: "' + text + '") { slug } }'
        body = await gql(client, echoing)
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    after = await scrape(client)
    for limit in ("tokens", "depth", "aliases"):
        assert value(after, "mim_requests_refused_total", limit=limit) == value(
            before, "mim_requests_refused_total", limit=limit
        ), limit


def test_the_multiprocess_directory_is_made_and_only_samples_are_cleared(tmp_path: Path) -> None:
    from server.metrics import prepare_directory

    directory = tmp_path / "made" / "here"
    prepare_directory(str(directory))
    assert directory.is_dir()
    for name in ("counter_12.db", "histogram_12.db", "gauge_livesum_12.db", "mim.sqlite3.db"):
        (directory / name).write_text("x")
    prepare_directory(str(directory))
    assert sorted(p.name for p in directory.iterdir()) == ["mim.sqlite3.db"]


async def test_long_documents_are_not_kept_by_the_operation_cache(client: TestClient) -> None:
    from server.observe import CACHED_DOCUMENT_CHARS, _cached_operations

    long = "query Long { kpis { slug } }" + " " * CACHED_DOCUMENT_CHARS
    await gql(client, "query Short { kpis { slug } }", persona="exec")
    held = _cached_operations.cache_info().currsize
    body = await gql(client, long, persona="exec")
    assert body["data"]["kpis"]
    assert _cached_operations.cache_info().currsize == held
