"""A real `mim serve --workers 2` with MIM_LOG_FORMAT=json and MIM_METRICS_TOKEN: its output read
back as JSON lines carrying request ids and no token, and one consistent set of metrics whichever
worker answers the scrape."""

from __future__ import annotations

import json
import logging
import queue
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from server import logs
from server.app import create_app
from server.config import Settings
from tests.conftest import ENV, make_token
from tests.server.test_workers import Server, server_env, serving, wait_until

METRICS_TOKEN = "scrape-me-0123456789abcdef"
DASHBOARD = "query ExecDashboard { kpis { slug name units } }"
READING = "{ kpis { slug revisions { version } } }"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = server_env(MIM_LOG_FORMAT="json", MIM_METRICS_TOKEN=METRICS_TOKEN)
    with serving(tmp_path_factory.mktemp("json-logs"), env, workers=2) as running:
        yield running


def call(
    server: Server,
    path: str,
    *,
    token: str | None = None,
    query: str | None = None,
    request_id: str | None = None,
    operation_name: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Make one request on a new connection (the kernel picks a worker afresh)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    sent: dict[str, Any] = {"query": query}
    if operation_name is not None:
        sent["operationName"] = operation_name
    data = json.dumps(sent).encode() if query is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{path}", data=data, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read()


def lines(server: Server) -> list[dict[str, Any]]:
    """Return every line the server wrote, each parsed as JSON (failing on any that is not)."""
    parsed = []
    for number, line in enumerate(server.output().splitlines(), 1):
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"line {number} is not JSON: {line!r}")
    return parsed


def access_lines(server: Server, request_id: str) -> list[dict[str, Any]]:
    return [
        line
        for line in lines(server)
        if line.get("logger") == "aiohttp.access" and line.get("request_id") == request_id
    ]


def test_every_line_is_json_with_the_request_fields_and_no_token(server: Server) -> None:
    token = make_token("exec", sub="log-tester")
    refused_token = "not.a-valid.token-but-secret-looking-0123456789"
    status, headers, _ = call(server, "/graphql", token=token, query=DASHBOARD, request_id="r-plan")
    assert (status, headers["X-Request-ID"]) == (200, "r-plan")
    status, _, _ = call(server, "/graphql", token=token, query="{ nope }", request_id="r-error")
    assert status == 200
    status, headers, _ = call(server, "/graphql", token=refused_token, query=DASHBOARD)
    assert status == 401
    made = headers["X-Request-ID"]
    status, _, _ = call(server, "/kpis/mttr", token=token, request_id="r-rest")
    in_query = "token-in-a-query-string-0123456789abcdef"
    status, _, _ = call(server, f"/graphql?query=%7Bkpis%7Bslug%7D%7D&access_token={in_query}")
    assert status == 401
    # A name no operation has (a lone surrogate: JSON cannot carry it) is refused, not logged.
    status, _, body = call(server, "/graphql", token=token, query=DASHBOARD,
                           request_id="r-name", operation_name="\ud800")  # fmt: skip
    assert status == 400 and b"BAD_USER_INPUT" in body

    plan = wait_until(lambda: access_lines(server, "r-plan"), "the access line is written")[0]
    assert plan["level"] == "INFO" and plan["time"] and plan["message"]
    assert {k: plan[k] for k in ("method", "route", "status", "operation_name",
                                 "operation_type", "path", "sub")} == {
        "method": "POST", "route": "/graphql", "status": 200, "operation_name": "ExecDashboard",
        "operation_type": "query", "path": "plan", "sub": "log-tester",
    }  # fmt: skip
    assert plan["duration_ms"] >= 0 and plan["process"].startswith("worker ")
    error = wait_until(lambda: access_lines(server, "r-error"), "the access line is written")[0]
    assert (error["path"], error["error_code"]) == ("executor", "BAD_USER_INPUT")
    refused = wait_until(lambda: access_lines(server, made), "the 401's line is written")[0]
    assert refused["status"] == 401 and "sub" not in refused
    rest = wait_until(lambda: access_lines(server, "r-rest"), "the access line is written")[0]
    assert (rest["route"], rest["status"]) == ("/kpis/{slug}", 200)
    output = server.output()
    named = wait_until(lambda: access_lines(server, "r-name"), "the 400's line is written")[0]
    assert named["status"] == 400 and "operation_name" not in named
    for secret in (token, refused_token, METRICS_TOKEN, in_query):
        assert secret not in output
    supervisor = [line for line in lines(server) if line.get("process") == "supervisor"]
    assert any("workers" in line["message"] for line in supervisor)


def scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, _, body = call(server, "/metrics", token=METRICS_TOKEN)
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def graphql_requests(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "mim_http_requests_total" and ("route", "/graphql") in labels
    )


def test_every_worker_reports_one_consistent_set(server: Server) -> None:
    before = graphql_requests(scrape(server))
    token = make_token("exec")
    for _ in range(12):
        assert call(server, "/graphql", token=token, query=DASHBOARD)[0] == 200
    # Several scrapes on new connections land on both workers; each reports all twelve.
    seen = {graphql_requests(scrape(server)) - before for _ in range(8)}
    assert seen == {12}
    status, _, _ = call(server, "/metrics", token=make_token("exec"))
    assert status == 404


async def test_a_request_timeout_is_logged_with_its_request_id(settings: Settings) -> None:
    caught: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record)

    keep = Keep()
    keep.addFilter(logs.RequestFields())  # the filter the server's own handler carries
    logger = logging.getLogger("mim.http")
    logger.addHandler(keep)
    try:
        app = create_app(replace(settings, request_timeout_seconds=1e-9))
        async with TestClient(TestServer(app)) as client:
            response = await client.post(
                "/graphql",
                json={"query": READING},
                headers={"Authorization": f"Bearer {make_token('admin', sub='slow')}",
                         "X-Request-ID": "r-timeout"},
            )  # fmt: skip
            assert response.status == 503
    finally:
        logger.removeHandler(keep)
    warned = [r for r in caught if "time limit" in r.getMessage()]
    assert warned and warned[0].request_id == "r-timeout"  # type: ignore[attr-defined]
    assert warned[0].sub == "slow"  # type: ignore[attr-defined]


def test_text_stays_the_format_on_a_terminal() -> None:
    class Terminal:
        def isatty(self) -> bool:
            return True

    class Pipe:
        def isatty(self) -> bool:
            return False

    assert logs.default_format(Terminal()) == "text"
    assert logs.default_format(Pipe()) == "json"
    assert Settings.from_env({**_keys(), "MIM_LOG_FORMAT": "TEXT"}).log_format == "text"
    with pytest.raises(ValueError, match="MIM_LOG_FORMAT"):
        Settings.from_env({**_keys(), "MIM_LOG_FORMAT": "xml"})


def _keys() -> dict[str, str]:
    return dict(ENV)


def test_a_json_line_keeps_the_traceback_apart() -> None:
    handler = logs.DroppingQueueHandler(queue.Queue())
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.getLogger("mim.test").makeRecord(
            "mim.test", logging.ERROR, __file__, 1, "failed %s", ("here",),
            sys.exc_info(),
        )  # fmt: skip
    prepared = handler.prepare(record)
    line = json.loads(logs.formatter("json").format(prepared))
    assert line["message"] == "failed here"
    assert "RuntimeError: boom" in line["traceback"]
    assert "Traceback" not in line["message"]
