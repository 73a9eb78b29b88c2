"""Overload is shed, not queued (server/shed.py): beyond MIM_MAX_INFLIGHT requests in flight, a
worker answers at once with 503 UNAVAILABLE and Retry-After, and health checks still answer.

Requests are held in flight deterministically by a route the test adds, which waits on an event
the test sets; the load test with figures is tests/security/test_overload.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
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
from tests.conftest import ENV, ServiceServer, make_token

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


# Served as `mim serve` serves (refusing early where it can), and by aiohttp's own runner (where
# the middleware refuses everything): both refuse alike.
@pytest.fixture(params=[ServiceServer, TestServer], ids=["served", "middleware"])
async def held(
    settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[TestClient, Held]]:
    holder = Held()
    app = create_app(replace(settings, max_inflight=LIMIT))
    app.router.add_get("/held", holder.handle)
    async with TestClient(request.param(app)) as client:
        yield client, holder
        holder.release.set()
        await settled(app[shed.GATE])


async def settled(gate: shed.Gate) -> None:
    """Wait for every request to leave, and check that none is still counted in flight."""
    for _ in range(200):
        if gate.inflight == 0:
            break
        await asyncio.sleep(0.01)
    assert gate.inflight == 0


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
    async with TestClient(ServiceServer(app)) as client:
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
    assert Settings.from_env(unset).shed_lag_seconds == 0.005
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
    async with TestClient(ServiceServer(app)) as client:
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


# Early refusal (server/shed.py, Refusing): a worker served as `mim serve` serves it answers a
# request it must refuse as the request's bytes arrive, with the middleware's answer.


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[TestClient, Held, list[str]]]:
    """A worker served as `mim serve` serves it, with a bound of LIMIT; the third item lists the
    answers that went through aiohttp's response preparation (an early refusal does not)."""
    holder = Held()
    prepared: list[str] = []

    async def note(request: web.Request, response: web.StreamResponse) -> None:
        prepared.append(f"{request.method} {request.path} {response.status}")

    app = create_app(replace(settings, max_inflight=LIMIT))
    app.router.add_get("/held", holder.handle)
    app.on_response_prepare.append(note)
    async with TestClient(ServiceServer(app)) as client:
        yield client, holder, prepared
        holder.release.set()
        await settled(app[shed.GATE])


def request_bytes(
    method: str, target: str, body: bytes = b"", *, version: str = "1.1", headers: str = ""
) -> bytes:
    head = f"{method} {target} HTTP/{version}\r\nHost: mim\r\n{headers}"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def kpis_bytes() -> bytes:
    return request_bytes("GET", "/kpis", headers=f"Authorization: Bearer {make_token('exec')}\r\n")


async def answer(reader: asyncio.StreamReader, *, head_only: bool = False) -> tuple[bytes, bytes]:
    """Read one HTTP answer: its head (without Date, which changes by the second) and body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]
    length = next(
        int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:")
    )
    body = b"" if head_only else await asyncio.wait_for(reader.readexactly(length), 5)
    return b"\r\n".join(lines), body


async def connect(client: TestClient) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(client.server.host, client.server.port)


async def test_an_early_refusal_is_the_middlewares_refusal_byte_for_byte(served) -> None:
    client, holder, prepared = served
    tasks = await fill(client, holder)
    reader, writer = await connect(client)
    writer.write(kpis_bytes())
    early = await answer(reader)
    assert prepared == [], "refused as it arrived: no Request, no response prepared"
    # A request queued behind another on its connection is refused by the middleware.
    other_reader, other_writer = await connect(client)
    other_writer.write(request_bytes("GET", "/healthz") + kpis_bytes())
    health, late = await answer(other_reader), await answer(other_reader)
    assert health[0].startswith(b"HTTP/1.1 200")
    assert prepared == ["GET /healthz 200", "GET /kpis 503"]
    assert early == late
    assert early[0].startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert json.loads(early[1])["errors"][0]["extensions"]["code"] == "UNAVAILABLE"
    scrape = await client.get("/metrics", headers=auth("admin"))
    assert 'mim_requests_refused_total{limit="inflight"} 2.0' in await scrape.text()
    for w in (writer, other_writer):
        w.close()
    holder.release.set()
    assert [(await t).status for t in tasks] == [200] * LIMIT


async def test_an_early_refused_mutation_writes_nothing_and_its_connection_serves_on(
    served,
) -> None:
    client, holder, prepared = served
    tasks = await fill(client, holder)
    body = json.dumps({"query": UPSERT, "variables": {"input": INCIDENT}}).encode()
    mutation = request_bytes(
        "POST", "/graphql", body, headers=f"Authorization: Bearer {make_token('ingest')}\r\n"
    )
    reader, writer = await connect(client)
    writer.write(mutation)
    refused = await answer(reader)
    assert refused[0].startswith(b"HTTP/1.1 503") and prepared == []
    assert await Incident.count() == 0
    holder.release.set()
    assert [(await t).status for t in tasks] == [200] * LIMIT
    writer.write(mutation)  # the same connection, now that there is room
    served_head, served_body = await answer(reader)
    assert served_head.startswith(b"HTTP/1.1 200")
    assert json.loads(served_body)["data"]["upsertIncident"]["id"] == "INC-SHED"
    assert await Incident.count() == 1
    writer.close()


async def test_pipelined_answers_keep_their_order(served) -> None:
    client, holder, _ = served
    tasks = await fill(client, holder)
    reader, writer = await connect(client)
    writer.write(
        kpis_bytes()
        + request_bytes("GET", "/healthz")
        + kpis_bytes()
        + request_bytes("GET", "/readyz")
    )
    statuses = [(await answer(reader))[0][9:12] for _ in range(4)]
    assert statuses == [b"503", b"200", b"503", b"200"]
    writer.close()
    holder.release.set()
    await asyncio.gather(*tasks)


async def test_requests_an_early_answer_would_not_fit_are_refused_by_the_middleware(
    served,
) -> None:
    client, holder, prepared = served
    tasks = await fill(client, holder)
    token = f"Authorization: Bearer {make_token('exec')}\r\n"
    reader, writer = await connect(client)
    # HEAD: the answer has no body.
    writer.write(request_bytes("HEAD", "/kpis", headers=token))
    head, _ = await answer(reader, head_only=True)
    assert head.startswith(b"HTTP/1.1 503")
    # A body that arrives in two parts: refused once whole, and the connection stays in step.
    body = json.dumps({"query": "{ kpis { slug } }"}).encode()
    split = request_bytes("POST", "/graphql", body, headers=token)
    writer.write(split[:-10])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(split[-10:])
    assert (await answer(reader))[0].startswith(b"HTTP/1.1 503")
    writer.write(request_bytes("GET", "/healthz"))
    assert (await answer(reader))[0].startswith(b"HTTP/1.1 200")
    # An expectation: aiohttp answers it before any middleware.
    writer.write(request_bytes("GET", "/kpis", headers=token + "Expect: x-unknown\r\n"))
    assert (await answer(reader))[0][9:12] == b"417"
    # HTTP/1.0: the answer closes the connection.
    old_reader, old_writer = await connect(client)
    old_writer.write(request_bytes("GET", "/kpis", version="1.0", headers=token))
    old_head, _ = await answer(old_reader)
    assert old_head.startswith(b"HTTP/1.1 503") or old_head.startswith(b"HTTP/1.0 503")
    assert await asyncio.wait_for(old_reader.read(), 5) == b""
    assert prepared == [
        "HEAD /kpis 503",
        "POST /graphql 503",
        "GET /healthz 200",
        "GET /kpis 417",
        "GET /kpis 503",
    ]
    for w in (writer, old_writer):
        w.close()
    holder.release.set()
    assert [(await t).status for t in tasks] == [200] * LIMIT


async def test_requests_arriving_in_one_loop_turn_cannot_all_find_room(served) -> None:
    """A request is counted in flight as it arrives, not when its handler starts a turn or two
    later: of LIMIT + 2 requests read in one loop turn, LIMIT are admitted and two are refused
    as they arrive."""
    client, holder, prepared = served
    request = request_bytes("GET", "/held", headers=f"Authorization: Bearer {make_token()}\r\n")
    sockets = [socket.create_connection((client.server.host, client.server.port)) for _ in range(4)]
    await asyncio.sleep(0.1)  # the worker accepts them; nothing arrives yet
    for sock in sockets:
        sock.sendall(request)  # the loop does not run meanwhile: it reads all four in one turn
    while holder.entered < LIMIT:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert holder.entered == LIMIT
    assert prepared == [], "the two refusals were written as they arrived"
    holder.release.set()
    answers = []
    for sock in sockets:
        sock.settimeout(5)
        answers.append(await asyncio.to_thread(sock.recv, 12))
        sock.close()
    assert sorted(a[9:12] for a in answers) == [b"200", b"200", b"503", b"503"]


async def test_pipelined_requests_take_one_place_at_a_time(served) -> None:
    client, holder, _ = served
    gate = client.app[shed.GATE]
    reader, writer = await connect(client)
    held = request_bytes("GET", "/held", headers=f"Authorization: Bearer {make_token()}\r\n")
    writer.write(held * 3)
    while holder.entered < 1:
        await asyncio.sleep(0.01)
    assert gate.inflight == 1, "the requests queued behind the first hold no place"
    other = await fill(client, holder, count=LIMIT - 1)
    await assert_shed(await client.get("/kpis", headers=auth("exec")))
    holder.release.set()
    assert [(await answer(reader))[0][9:12] for _ in range(3)] == [b"200"] * 3
    assert [(await t).status for t in other] == [200] * (LIMIT - 1)
    writer.close()


@pytest.mark.parametrize("tail", ["kpis", "healthz"])
async def test_more_than_32_pipelined_requests_are_all_answered(served, tail: str) -> None:
    """aiohttp's parser holds back what follows 32 unanswered requests; refused ones make room."""
    client, holder, _ = served
    tasks = await fill(client, holder)
    reader, writer = await connect(client)
    rest = kpis_bytes() if tail == "kpis" else request_bytes("GET", "/healthz")
    writer.write(kpis_bytes() + rest * 39)
    statuses = [(await answer(reader))[0][9:12] for _ in range(40)]
    assert statuses == [b"503"] + ([b"503"] if tail == "kpis" else [b"200"]) * 39
    writer.close()
    holder.release.set()
    await asyncio.gather(*tasks)


async def test_a_client_that_does_not_read_its_refusals_is_not_buffered_for(served) -> None:
    """Refusals written as they arrive go out only while the client reads: one that sends and
    never reads meets aiohttp's own back-pressure, not a buffer that grows with what it sends."""
    client, holder, _ = served
    tasks = await fill(client, holder)
    sock = socket.create_connection((client.server.host, client.server.port))
    sock.setblocking(False)
    sent, burst = 0, kpis_bytes() * 400
    for _ in range(200):  # up to about 50 MB, until the worker stops reading
        try:
            sent += sock.send(burst)
        except BlockingIOError:
            await asyncio.sleep(0.05)
            try:
                sent += sock.send(burst)
            except BlockingIOError:
                break
        await asyncio.sleep(0)
    buffered = max(
        h.transport.get_write_buffer_size()
        for h in client.server.runner.server.connections
        if h.transport is not None
    )
    assert sent < 40 * 1024 * 1024, "the worker kept reading a client that does not read"
    assert buffered < 4 * 1024 * 1024
    sock.close()
    holder.release.set()
    assert [(await t).status for t in tasks] == [200] * LIMIT


async def test_a_request_whose_connection_is_reset_as_it_arrives_keeps_no_place(served) -> None:
    client, holder, _ = served
    gate = client.app[shed.GATE]
    holder.release.set()
    request = request_bytes("GET", "/held", headers=f"Authorization: Bearer {make_token()}\r\n")
    for _ in range(20):
        sock = socket.create_connection((client.server.host, client.server.port))
        await asyncio.sleep(0.01)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(request)
        sock.close()  # a reset, right behind the request
    await settled(gate)
    # The bound is whole: LIMIT requests are admitted again, and the next refused.
    holder.release = asyncio.Event()
    tasks = await fill(client, holder)
    await assert_shed(await client.get("/kpis", headers=auth("exec")))
    holder.release.set()
    assert [(await t).status for t in tasks] == [200] * LIMIT


async def test_with_cors_on_every_refusal_is_the_middlewares(settings: Settings) -> None:
    holder = Held()
    prepared: list[int] = []

    async def note(request: web.Request, response: web.StreamResponse) -> None:
        prepared.append(response.status)

    app = create_app(replace(settings, max_inflight=LIMIT, cors_origins=("https://ui.example",)))
    app.router.add_get("/held", holder.handle)
    app.on_response_prepare.append(note)
    async with TestClient(ServiceServer(app)) as client:
        tasks = await fill(client, holder)
        await assert_shed(await client.get("/kpis", headers=auth("exec")))
        await assert_shed(
            await client.get("/kpis", headers={**auth("exec"), "Origin": "https://ui.example"})
        )
        assert prepared == [503, 503]
        holder.release.set()
        assert [(await t).status for t in tasks] == [200] * LIMIT
        await settled(app[shed.GATE])


async def test_a_malformed_request_while_full_meets_the_parsers_400(served) -> None:
    client, holder, _ = served
    gate = client.app[shed.GATE]
    tasks = await fill(client, holder)
    reader, writer = await connect(client)
    writer.write(b"GET /kpis HTTP/1.1\r\nHost mim\r\n\r\n")
    assert (await answer(reader))[0][9:12] == b"400"
    assert gate.inflight == LIMIT
    writer.close()
    holder.release.set()
    assert [(await t).status for t in tasks] == [200] * LIMIT
