"""Overload is shed, not queued (server/shed.py): beyond MIM_MAX_INFLIGHT requests in flight, a
worker answers at once with 503 UNAVAILABLE and Retry-After, and health checks still answer.

Requests are held in flight deterministically by a route the test adds, which waits on an event
the test sets; the load test with figures is tests/security/test_overload.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from registry.tables import Incident
from server.app import create_app
from server.config import ConfigError, Settings
from tests.conftest import ENV, make_token

LIMIT = 2
UPSERT = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id } }"
INCIDENT = {"id": "INC-SHED", "title": "t", "severity": "P1", "detectedAt": "2026-01-01T00:00:00Z"}


def auth(persona: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(persona)}"}


class Held:
    """A route whose requests stay in flight until released (or fail, if told to)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self.fail = False

    async def handle(self, request: web.Request) -> web.Response:
        self.entered += 1
        await self.release.wait()
        if self.fail:
            raise RuntimeError("the held request fails")
        return web.Response(text="done")


@pytest.fixture
async def held(settings: Settings) -> AsyncIterator[tuple[TestClient, Held]]:
    holder = Held()
    app = create_app(replace(settings, max_inflight=LIMIT))
    app.router.add_get("/held", holder.handle)
    async with TestClient(TestServer(app)) as client:
        yield client, holder


async def fill(client: TestClient, holder: Held, count: int = LIMIT) -> list[asyncio.Task[Any]]:
    before = holder.entered
    tasks = [
        asyncio.create_task(client.get("/held", headers=auth("responder"))) for _ in range(count)
    ]
    while holder.entered < before + count:
        await asyncio.sleep(0.01)
    return tasks


async def assert_shed(response: Any) -> None:
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert set(body) == {"errors"}
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAVAILABLE"]


async def test_a_request_beyond_the_bound_is_refused_at_once_and_writes_nothing(held) -> None:
    client, holder = held
    tasks = await fill(client, holder)
    mutation = {"query": UPSERT, "variables": {"input": INCIDENT}}
    await assert_shed(await client.post("/graphql", json=mutation, headers=auth("ingest")))
    await assert_shed(await client.get("/kpis", headers=auth("exec")))
    # Refused before any token is read: a bad token meets the same 503, not a 401.
    await assert_shed(await client.get("/kpis", headers={"Authorization": "Bearer x.y.z"}))
    assert await Incident.count() == 0
    holder.release.set()
    assert [(await t).status for t in tasks] == [200] * LIMIT
    # Room again: the same mutation is served and writes.
    answer = await client.post("/graphql", json=mutation, headers=auth("ingest"))
    assert (await answer.json())["data"]["upsertIncident"]["id"] == "INC-SHED"
    assert await Incident.count() == 1


async def test_health_checks_and_scrapes_answer_while_the_worker_is_full(held) -> None:
    client, holder = held
    tasks = await fill(client, holder)
    for _ in range(3):
        await assert_shed(await client.get("/kpis", headers=auth("exec")))
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    scrape = await client.get("/metrics", headers=auth("admin"))
    assert scrape.status == 200
    refused = {
        sample.labels["limit"]: sample.value
        for family in text_string_to_metric_families(await scrape.text())
        if family.name == "mim_requests_refused"
        for sample in family.samples
        if sample.name == "mim_requests_refused_total"
    }
    assert refused["inflight"] == 3
    holder.release.set()
    await asyncio.gather(*tasks)


async def test_a_request_that_fails_or_times_out_gives_its_place_back(settings) -> None:
    holder = Held()
    app = create_app(replace(settings, max_inflight=LIMIT, request_timeout_seconds=0.3))
    app.router.add_get("/held", holder.handle)
    async with TestClient(TestServer(app)) as client:
        # Timed out: both held requests answer TIMEOUT and leave.
        timed_out = await asyncio.gather(*await fill(client, holder))
        assert [r.status for r in timed_out] == [503, 503]
        assert {(await r.json())["errors"][0]["extensions"]["code"] for r in timed_out} == {
            "TIMEOUT"
        }
        # Failed: both answer INTERNAL and leave.
        holder.fail = True
        holder.release.set()
        failed = await asyncio.gather(*await fill(client, holder))
        assert [r.status for r in failed] == [500, 500]
        # Nothing is left in flight: the bound admits LIMIT requests again.
        holder.fail, holder.release = False, asyncio.Event()
        tasks = await fill(client, holder)
        await assert_shed(await client.get("/kpis", headers=auth("exec")))
        holder.release.set()
        assert [(await t).status for t in tasks] == [200] * LIMIT
        assert (await client.get("/kpis", headers=auth("exec"))).status == 200


def test_the_bound_defaults_to_16_and_is_configurable() -> None:
    unset = {name: value for name, value in ENV.items() if name != "MIM_MAX_INFLIGHT"}
    assert Settings.from_env(unset).max_inflight == 16
    assert Settings.from_env({**ENV, "MIM_MAX_INFLIGHT": "500"}).max_inflight == 500


@pytest.mark.parametrize("raw", ["0", "-1", "100001", "many", "2.5"])
def test_a_bound_outside_its_range_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="MIM_MAX_INFLIGHT"):
        Settings.from_env({**ENV, "MIM_MAX_INFLIGHT": raw})
