"""Overload is shed, not queued (server/shed.py): beyond MIM_MAX_INFLIGHT requests in flight, a
worker answers at once with 503 UNAVAILABLE and Retry-After, and health checks still answer.

Requests are held in flight deterministically by a route the test adds, which waits on an event
the test sets; the load test with figures is tests/security/test_overload.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from registry.tables import Incident
from server import shed
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
    unset = {k: v for k, v in ENV.items() if k not in ("MIM_MAX_INFLIGHT", "MIM_SHED_LAG")}
    assert Settings.from_env(unset).max_inflight == 16
    assert Settings.from_env(unset).shed_lag_seconds == 0.01
    assert Settings.from_env({**ENV, "MIM_MAX_INFLIGHT": "500"}).max_inflight == 500
    assert Settings.from_env({**ENV, "MIM_SHED_LAG": "25"}).shed_lag_seconds == 0.025


def test_while_refusing_on_a_lagging_loop_the_bound_halves_and_climbs_back_by_one() -> None:
    gate = shed.Gate(16, lag_limit=0.01)
    gate.lagged(0.05)
    assert gate.admit == 16, "a busy worker that refuses nothing keeps its whole bound"
    gate.refused()
    gate.lagged(0.004)
    assert gate.admit == 16, "within the lag limit, the bound stays whole"
    for expected in (8, 4, 2, 1, 1):
        gate.refused()
        gate.lagged(0.05)
        assert gate.admit == expected
    gate.lagged(0.05)
    assert gate.admit == 1, "a lagging loop that refuses nothing more holds the bound"
    for expected in range(2, 17):
        gate.lagged(0.001)
        assert gate.admit == expected
    gate.lagged(0.001)
    assert gate.admit == 16, "never above MIM_MAX_INFLIGHT"


async def test_a_worker_refusing_on_a_lagging_loop_refuses_below_its_bound(
    settings: Settings,
) -> None:
    """While something holds the loop (as a flood of refusals does) and the worker refuses, the
    bound in force falls to one: with one request in flight, of a bound of four, the next is
    refused; once the loop is prompt again, the bound climbs back and the request is served."""
    holder = Held()
    stalling = True

    async def stall() -> None:
        while stalling:
            time.sleep(0.03)  # the loop does nothing else meanwhile
            await asyncio.sleep(0)

    app = create_app(replace(settings, max_inflight=4, shed_lag_seconds=0.01))
    app.router.add_get("/held", holder.handle)
    gate = app[shed.GATE]
    async with TestClient(TestServer(app)) as client:
        full = await fill(client, holder, count=4)
        staller = asyncio.create_task(stall())
        for _ in range(100):
            await assert_shed(await client.get("/kpis", headers=auth("exec")))
            if gate.admit == 1:
                break
        assert gate.admit == 1, "refusing on a loop held 30 ms at a time must lower the bound"
        holder.release.set()
        assert [(await t).status for t in full] == [200] * 4
        holder.release = asyncio.Event()
        one = await fill(client, holder, count=1)
        await assert_shed(await client.get("/kpis", headers=auth("exec")))
        assert gate.inflight == 1 < gate.limit
        stalling = False
        await staller
        for _ in range(400):
            if gate.admit == gate.limit:
                break
            await asyncio.sleep(0.005)
        assert gate.admit == gate.limit, "the bound did not climb back"
        assert (await client.get("/kpis", headers=auth("exec"))).status == 200
        holder.release.set()
        assert [(await t).status for t in one] == [200]


async def test_with_the_lag_limit_off_the_bound_stays_fixed(held) -> None:
    client, holder = held
    gate = client.app[shed.GATE]
    tasks = await fill(client, holder)
    for _ in range(3):
        await assert_shed(await client.get("/kpis", headers=auth("exec")))
        time.sleep(0.05)
        await asyncio.sleep(0.01)
    assert gate.lag_limit == 0
    assert gate.admit == gate.limit == LIMIT
    holder.release.set()
    await asyncio.gather(*tasks)


@pytest.mark.parametrize("raw", ["0", "-1", "100001", "many", "2.5"])
def test_a_bound_outside_its_range_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="MIM_MAX_INFLIGHT"):
        Settings.from_env({**ENV, "MIM_MAX_INFLIGHT": raw})


@pytest.mark.parametrize("raw", ["-1", "60001", "soon", "0.5"])
def test_a_lag_limit_outside_its_range_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="MIM_SHED_LAG"):
        Settings.from_env({**ENV, "MIM_SHED_LAG": raw})
