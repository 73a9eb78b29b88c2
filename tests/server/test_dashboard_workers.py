"""Dashboards are exact and fresh across worker processes: `mim serve --workers 2`, real HTTP.

One server runs for the module against the test database. Each test loads the same incidents and
observations through the API, reads every dashboard, makes one kind of write through the API
(observations ingested, an incident's severity changed, its resolution moved, an expression
changed (waiting for its recompute) or removed, a survey recorded, an internal KPI's data
ingested, a KPI made internal, its targets changed) and reads them all again. Every request goes
out on a new connection, and the kernel spreads them over both workers (SO_REUSEPORT). Which
worker holds each connection is read from /proc (the worker whose descriptors hold the accepted
socket; the log format is not relied on), and every batch takes more connections until both
workers hold some, so each answer is known to come from a given worker.

Every answer is checked against numbers computed here from what was written; the raw rows, read
through `incidents { kpis }`, are checked against the same model. Count and mean exactly, and p50,
p90, target and meetsTarget too (the groups hold far fewer than 128 values). Every connection
must get the same answer and the same ETag; before the write the tag revalidates (304) on both
workers, after it every connection answers 200 with another tag and the new body (and the new tag
revalidates on both workers); asOf moves on wherever the numbers moved; and an exec or
stakeholder token never gets an internal KPI.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import EXEC_ONLY, PERSONAS, make_token
from tests.server import test_workers
from tests.server.test_workers import Server, server_env, serving, wait_until

pytestmark = test_workers.pytestmark

FRESH = 16  # new connections per read of the changed KPI, and per revalidation (304)
DASHBOARD_FRESH = 8  # new connections per persona's full dashboard (the costly answer)
EXTRA = 64  # at most this many more, until both workers hold some
# Ceilings for slow machines: a connection is accepted in microseconds, an answer takes
# milliseconds, and so does this data's recompute.
ACCEPT_SECONDS = 10.0
ANSWER_SECONDS = 30.0
RECOMPUTE_SECONDS = 30.0
SLUGS = ("mttr", "mtta", "cadence-adherence", "stakeholder-satisfaction")

# The windows: one cutting a day at each end (raw edges, day groups and a whole week), and whole
# weeks over every severity (week groups only).
CUT_FROM, CUT_TO = "2026-03-02T06:00:00Z", "2026-03-20T18:00:00Z"
WHOLE_FROM, WHOLE_TO = "2026-03-02T00:00:00Z", "2026-03-23T00:00:00Z"
TARGET = "target { severity persona comparison threshold } meetsTarget asOf"
POINT = f"start count mean p50 p90 {TARGET}"
FIELDS = f"""
    window: summary(from: "{CUT_FROM}", to: "{CUT_TO}", severity: P1) {{ count value {TARGET} }}
    overall: summary {{ count value {TARGET} }}
    weeks: series(bucket: WEEK, from: "{CUT_FROM}", to: "{CUT_TO}", severity: P1) {{ {POINT} }}
    days: series(bucket: DAY, from: "{CUT_FROM}", to: "{CUT_TO}", severity: P1) {{ {POINT} }}
    wholeWeeks: series(bucket: WEEK, from: "{WHOLE_FROM}", to: "{WHOLE_TO}") {{ {POINT} }}"""
SHORT = FIELDS.split("days:")[0]  # a summary and weekly points
# Read by GET (revalidated) as every persona: every KPI it may see, and two asked for by slug.
DASHBOARD = f"""{{ kpis {{ slug visibility {SHORT} }}
  mttr: kpi(slug: "mttr") {{ slug visibility }} mtta: kpi(slug: "mtta") {{ slug visibility }} }}"""
# Read by POST as an admin: the KPI a write changes.
ONE_KPI = f"query ($slug: String!) {{ kpi(slug: $slug) {{ slug visibility {FIELDS} }} }}"
RAW = """{ incidents(first: 100) { totalCount edges { node { id severity
  kpis { kpi { slug version } timestamp value source definitionVersion } } } } }"""
UPSERT = "mutation ($input: IncidentInput!) { upsertIncident(input: $input) { id severity } }"
RECORD = """mutation ($inputs: [RecordObservationInput!]!) {
  recordObservations(inputs: $inputs) { value } }"""
UPDATE = """mutation ($slug: String!, $input: UpdateKpiDefinitionInput!) {
  updateKpiDefinition(slug: $slug, input: $input) { version expression visibility } }"""
SURVEY = "mutation ($input: SurveyResponseInput!) { recordSurveyResponse(input: $input) { score } }"
RECOMPUTE = "query ($slug: String!) { kpi(slug: $slug) { version recompute { state version } } }"
TARGETS = "{ kpis { slug targets { severity persona comparison threshold } } }"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


EVER = (at("1970-01-01T00:00:00Z"), at("2199-01-01T00:00:00Z"))


# --- what was written, and what the dashboards must say about it -----------------------------


@dataclass(frozen=True)
class IncidentData:
    severity: str
    detected: str
    resolved: str | None = None


@dataclass(frozen=True)
class Obs:
    slug: str
    incident: str
    timestamp: datetime
    value: float
    source: str


@dataclass
class Model:
    """The data as written through the API; the observations the service must hold follow."""

    incidents: dict[str, IncidentData]
    ingested: list[Obs]
    surveys: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    mttr_unit: str | None = "minutes"  # mttr's expression: minutes(...), hours(...) or none
    internal: set[str] = field(default_factory=lambda: {"mtta"})
    # Definition versions a KPI's computed rows lag behind (a change that recomputes nothing).
    lag: dict[str, int] = field(default_factory=dict)
    targets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def copy(self) -> Model:
        return replace(
            self,
            incidents=dict(self.incidents),
            ingested=list(self.ingested),
            surveys={key: list(taken) for key, taken in self.surveys.items()},
            internal=set(self.internal),
            lag=dict(self.lag),
            targets=dict(self.targets),
        )

    def computed(self) -> list[Obs]:
        rows = []
        for key, incident in self.incidents.items():
            if self.mttr_unit is not None and incident.resolved is not None:
                took = at(incident.resolved) - at(incident.detected)
                unit = timedelta(minutes=1) if self.mttr_unit == "minutes" else timedelta(hours=1)
                rows.append(Obs("mttr", key, at(incident.resolved), took / unit, "computed"))
            if surveys := self.surveys.get(key):
                mean = sum(score for score, _ in surveys) / len(surveys)
                latest = max(at(when) for _, when in surveys)
                rows.append(Obs("stakeholder-satisfaction", key, latest, mean, "computed"))
        return rows

    def observations(self) -> list[Obs]:
        return self.ingested + self.computed()

    def visible(self, persona: str) -> list[str]:
        return [s for s in SLUGS if persona not in EXEC_ONLY or s not in self.internal]

    def values(
        self, slug: str, start: datetime, end: datetime, severity: str | None
    ) -> list[float]:
        return [
            o.value
            for o in self.observations()
            if o.slug == slug
            and start <= o.timestamp < end
            and severity in (None, self.incidents[o.incident].severity)
        ]

    def target(self, slug: str, severity: str | None, persona: str) -> dict[str, Any] | None:
        """The severity's own target beats a general one; a persona's own, one for everyone."""
        matching = [
            t
            for t in self.targets[slug]
            if t["severity"] in (severity, None) and t["persona"] in (persona.upper(), None)
        ]
        if not matching:
            return None
        return max(matching, key=lambda t: (t["severity"] is not None, t["persona"] is not None))

    def expected(self, slug: str, persona: str = "admin") -> dict[str, Any]:
        """The numbers every dashboard must show for this KPI, to this persona."""
        cut, whole = (at(CUT_FROM), at(CUT_TO)), (at(WHOLE_FROM), at(WHOLE_TO))
        p1, general = self.target(slug, "P1", persona), self.target(slug, None, persona)
        return {
            "window": summary(self.values(slug, *cut, "P1"), p1),
            "overall": summary(self.values(slug, *EVER, None), general),
            "weeks": self.series(slug, timedelta(days=7), *cut, "P1", p1),
            "days": self.series(slug, timedelta(days=1), *cut, "P1", p1),
            "wholeWeeks": self.series(slug, timedelta(days=7), *whole, None, general),
        }

    def series(
        self,
        slug: str,
        step: timedelta,
        start: datetime,
        end: datetime,
        severity: str | None,
        target: dict[str, Any] | None,
    ) -> list[dict[str, Any]]:
        # Both windows start on a Monday (2026-03-02): its midnight starts a day and a week.
        first = start.replace(hour=0, minute=0, second=0)
        points = []
        while first < end:
            values = self.values(slug, max(first, start), min(first + step, end), severity)
            points.append({"start": first, **point(values, target)})
            first += step
        return points


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def meets(target: dict[str, Any] | None, value: float | None) -> bool | None:
    if target is None or value is None:
        return None
    if target["comparison"] == "AT_MOST":
        return value <= target["threshold"]
    return value >= target["threshold"]


def summary(values: list[float], target: dict[str, Any] | None) -> dict[str, Any]:
    value = mean(values)
    return {
        "count": len(values),
        "value": value,
        "target": target,
        "meetsTarget": meets(target, value),
    }


def point(values: list[float], target: dict[str, Any] | None) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "count": len(values),
        "mean": mean(values),
        "p50": percentile(ordered, 0.5),
        "p90": percentile(ordered, 0.9),
        "target": target,
        "meetsTarget": meets(target, mean(values)),
    }


def percentile(ordered: list[float], q: float) -> float | None:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    if not ordered:
        return None
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def shown(kpi: dict[str, Any]) -> dict[str, Any]:
    """The numbers an answer shows for one KPI, in the shape of Model.expected: all but asOf."""
    keys = ("start", "count", "mean", "p50", "p90", "target", "meetsTarget")
    totals = ("count", "value", "target", "meetsTarget")
    return {
        "window": {k: kpi["window"][k] for k in totals},
        "overall": {k: kpi["overall"][k] for k in totals},
        **{
            name: [{k: at(p[k]) if k == "start" else p[k] for k in keys} for p in kpi[name]]
            for name in ("weeks", "days", "wholeWeeks")
            if name in kpi
        },
    }


def short(expected: dict[str, Any]) -> dict[str, Any]:
    """Model.expected for the fields of a dashboard (SHORT)."""
    return {name: expected[name] for name in ("window", "overall", "weeks")}


# Minutes to resolve (mttr, computed at resolvedAt): 90, 75, 120, 45, 180, 150, 60 for the P1s,
# 30 and 240 for the P2s; D10 and D11 are not resolved.
INCIDENTS = {
    "INC-D01": IncidentData("P1", "2026-03-02T04:00:00Z", "2026-03-02T05:30:00Z"),  # before from
    "INC-D02": IncidentData("P1", "2026-03-02T07:00:00Z", "2026-03-02T08:15:00Z"),  # cut day
    "INC-D03": IncidentData("P1", "2026-03-04T10:00:00Z", "2026-03-04T12:00:00Z"),
    "INC-D04": IncidentData("P1", "2026-03-10T09:00:00Z", "2026-03-10T09:45:00Z"),
    "INC-D05": IncidentData("P1", "2026-03-11T22:00:00Z", "2026-03-12T01:00:00Z"),
    "INC-D06": IncidentData("P1", "2026-03-20T15:00:00Z", "2026-03-20T17:30:00Z"),  # cut day
    "INC-D07": IncidentData("P1", "2026-03-20T18:00:00Z", "2026-03-20T19:00:00Z"),  # after to
    "INC-D08": IncidentData("P2", "2026-03-04T08:00:00Z", "2026-03-04T08:30:00Z"),
    "INC-D09": IncidentData("P2", "2026-03-16T12:00:00Z", "2026-03-16T16:00:00Z"),
    "INC-D10": IncidentData("P1", "2026-03-05T00:00:00Z"),
    "INC-D11": IncidentData("P1", "2026-03-17T00:00:00Z"),
}
# Values of few binary digits: every sum is exact, so every mean is exactly one float.
INGESTED = [
    Obs("mttr", "INC-D10", at("2026-03-05T12:00:00Z"), 100.5, "import"),
    Obs("mttr", "INC-D10", at("2026-03-13T08:00:00Z"), 33.25, "import"),
    Obs("mttr", "INC-D11", at("2026-03-17T09:00:00Z"), 12.75, "import"),
    Obs("mttr", "INC-D02", at(CUT_FROM), 2.5, "manual"),  # `from` is inclusive
    Obs("mttr", "INC-D06", at(CUT_TO), 1.75, "manual"),  # `to` is exclusive
    Obs("mtta", "INC-D10", at("2026-03-05T01:00:00Z"), 7.5, "import"),
    Obs("mtta", "INC-D03", at("2026-03-04T10:10:00Z"), 10.0, "import"),
    Obs("mtta", "INC-D04", at("2026-03-10T09:05:00Z"), 4.25, "import"),
]


def baseline() -> Model:
    return Model(incidents=dict(INCIDENTS), ingested=list(INGESTED))


def incident_input(key: str, incident: IncidentData) -> dict[str, Any]:
    return {
        "id": key,
        "title": f"dashboard {key}",
        "severity": incident.severity,
        "detectedAt": incident.detected,
        "resolvedAt": incident.resolved,
    }


def observation_input(o: Obs) -> dict[str, Any]:
    return {
        "kpiSlug": o.slug,
        "incidentId": o.incident,
        "timestamp": iso(o.timestamp),
        "value": o.value,
        "source": o.source,
    }


# --- the writes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    persona: str
    query: str
    variables: dict[str, Any]
    apply: Callable[[Model], None]  # what it does to the data
    slug: str  # the KPI whose numbers (or visibility, or targets) it changes
    recompute: bool = False  # it queues a recompute of `slug`: follow it until it is DONE
    moves_numbers: bool = True  # it changes counts or means (not only who sees what)


def ingested(rows: list[Obs]) -> Write:
    inputs = [observation_input(o) for o in rows]
    return Write(
        "ingest", RECORD, {"inputs": inputs}, lambda m: m.ingested.extend(rows), rows[0].slug
    )


def moved(key: str, **changes: Any) -> Write:
    changed = replace(INCIDENTS[key], **changes)

    def apply(model: Model) -> None:
        model.incidents[key] = changed

    return Write("ingest", UPSERT, {"input": incident_input(key, changed)}, apply, "mttr")


def defined(slug: str, changes: dict[str, Any], apply: Callable[[Model], None]) -> Write:
    recompute = changes.get("expression") is not None
    moves = "expression" in changes
    return Write("admin", UPDATE, {"slug": slug, "input": changes}, apply, slug, recompute, moves)


def surveyed(model: Model) -> None:
    model.surveys.setdefault("INC-D03", []).append((4, "2026-03-04T13:00:00Z"))


def to_hours(model: Model) -> None:
    model.mttr_unit = "hours"


def no_expression(model: Model) -> None:
    model.mttr_unit = None


def made_internal(model: Model) -> None:
    model.internal.add("mttr")
    model.lag["mttr"] = 1  # a new version, but nothing recomputed


# P1 means are about 80 (74.5, 86.1 and 81.4 a week): the exec's own target is missed where
# everyone else's is met, and the general one now applies where no target did.
NEW_TARGETS: list[dict[str, Any]] = [
    {"severity": "P1", "persona": None, "comparison": "AT_MOST", "threshold": 82.0},
    {"severity": "P1", "persona": "EXEC", "comparison": "AT_MOST", "threshold": 60.0},
    {"severity": None, "persona": None, "comparison": "AT_LEAST", "threshold": 80.0},
]


def retargeted(model: Model) -> None:
    model.targets["mttr"] = NEW_TARGETS
    model.lag["mttr"] = 1


WRITES = {
    "observations ingested": ingested(
        [
            Obs("mttr", "INC-D11", at("2026-03-18T10:00:00Z"), 61.5, "import"),  # week 3
            Obs("mttr", "INC-D01", at("2026-03-02T23:59:00Z"), 5.25, "import"),  # cut first day
            Obs("mttr", "INC-D07", at("2026-03-20T17:59:00Z"), 0.5, "import"),  # cut last day
            Obs("mttr", "INC-D09", at("2026-03-16T20:00:00Z"), 8.0, "import"),  # P2: overall
        ]
    ),
    # Ingested rows in two weeks leave P1; so does a computed row (its incident is recomputed).
    "severity of ingested rows": moved("INC-D10", severity="P2"),
    "severity of a computed row": moved("INC-D05", severity="P3"),
    # The live recompute moves the computed row to another week, with another value.
    "resolution moved": moved("INC-D05", resolved="2026-03-16T22:00:00Z"),
    "expression changed": defined(
        "mttr", {"expression": "hours(resolved_at - detected_at)"}, to_hours
    ),
    "expression removed": defined("mttr", {"expression": None}, no_expression),
    "survey recorded": Write(
        "ingest",
        SURVEY,
        {"input": {"incidentId": "INC-D03", "score": 4, "submittedAt": "2026-03-04T13:00:00Z"}},
        surveyed,
        "stakeholder-satisfaction",
    ),
    "internal KPI ingested": ingested(
        [Obs("mtta", "INC-D11", at("2026-03-18T11:00:00Z"), 3.5, "import")]
    ),
    "KPI made internal": defined("mttr", {"visibility": "INTERNAL"}, made_internal),
    "targets changed": defined("mttr", {"targets": NEW_TARGETS}, retargeted),
}


# --- HTTP on new connections, each known to be held by one worker -----------------------------


@dataclass
class Reply:
    worker: int  # the pid of the worker that held the connection
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Connection:
    worker: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


def dechunk(data: bytes) -> bytes:
    body = b""
    while True:
        size, _, data = data.partition(b"\r\n")
        length = int(size.split(b";")[0], 16)
        if length == 0:
            return body
        body, data = body + data[:length], data[length + 2 :]


class Client:
    """Speaks HTTP/1.1 to the server, one request per new connection (`Connection: close`)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.workers = frozenset(server.workers())
        assert len(self.workers) == 2, server.output()
        self.tokens = {p: make_token(p, sub=f"{p}-dashboard", ttl=3600) for p in PERSONAS}

    async def connect(self, count: int) -> list[Connection]:
        """Open `count` connections and learn which worker accepted each."""
        opened = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", self.server.port) for _ in range(count))
        )
        ports = [writer.get_extra_info("sockname")[1] for _, writer in opened]
        owners = await self.owners(ports)
        return [
            Connection(owners[port], reader, writer)
            for port, (reader, writer) in zip(ports, opened, strict=True)
        ]

    async def owners(self, ports: list[int]) -> dict[int, int]:
        """Return the pid of the worker holding the accepted end of each client port."""
        deadline = asyncio.get_running_loop().time() + ACCEPT_SECONDS
        while True:
            inodes = accepted(self.server.port, set(ports))
            held = sockets(self.workers)
            if all(inodes.get(port) in held for port in ports):
                return {port: held[inodes[port]] for port in ports}
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"connections not accepted by a worker: {ports} {inodes}")
            await asyncio.sleep(0.001)

    async def fresh(self, count: int = FRESH) -> list[Connection]:
        """`count` new connections, and more until both workers hold at least one."""
        connections = await self.connect(count)
        while {c.worker for c in connections} != self.workers:
            assert len(connections) < count + EXTRA, "every connection went to one worker"
            connections += await self.connect(1)
        return connections

    async def send(
        self,
        connection: Connection,
        method: str,
        persona: str,
        *,
        query: str,
        variables: dict[str, Any] | None = None,
        tag: str | None = None,
    ) -> Reply:
        headers = {
            "Host": f"127.0.0.1:{self.server.port}",
            "Authorization": f"Bearer {self.tokens[persona]}",
            "Connection": "close",
        }
        if tag is not None:
            headers["If-None-Match"] = tag
        body = b""
        target = "/graphql"
        if method == "GET":
            target += "?" + urlencode({"query": query})
        else:
            body = json.dumps({"query": query, "variables": variables or {}}).encode()
            headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(body))
        head = f"{method} {target} HTTP/1.1\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        try:
            connection.writer.write(head.encode() + b"\r\n" + body)
            # To the end: the server closes the connection after its answer.
            raw = await asyncio.wait_for(connection.reader.read(), ANSWER_SECONDS)
        finally:
            connection.writer.close()
            await connection.writer.wait_closed()
        top, _, payload = raw.partition(b"\r\n\r\n")
        status_line, *lines = top.decode("latin-1").split("\r\n")
        fields = dict(line.split(":", 1) for line in lines)
        received = {name.strip().lower(): value.strip() for name, value in fields.items()}
        if received.get("transfer-encoding", "").lower() == "chunked":
            payload = dechunk(payload)
        return Reply(connection.worker, int(status_line.split()[1]), received, payload)

    async def post(
        self, query: str, variables: dict[str, Any] | None = None, persona: str = "admin"
    ) -> dict[str, Any]:
        """POST on one new connection; return `data`, asserting a 200 without errors."""
        (connection,) = await self.connect(1)
        reply = await self.send(connection, "POST", persona, query=query, variables=variables)
        assert reply.status == 200, reply
        body: dict[str, Any] = reply.json()
        assert "errors" not in body, body
        return body["data"]

    async def on_fresh_connections(
        self, ask: Callable[[Connection], Awaitable[Reply]], count: int = FRESH
    ) -> list[Reply]:
        """Ask on `count` new connections (more if one worker held them all), all at once."""
        return await every(*(ask(c) for c in await self.fresh(count)))


async def every(*asks: Awaitable[Any]) -> list[Any]:
    """Await them all at once; raise the first failure once none is left running."""
    results = await asyncio.gather(*asks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def accepted(port: int, clients: set[int]) -> dict[int, str]:
    """Return the socket inode of the server's end of each connection from a client port, once
    a worker has accepted it (until then its inode is 0)."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        columns = line.split()
        local, remote, inode = columns[1], columns[2], columns[9]
        if inode != "0" and int(local.split(":")[1], 16) == port:
            client = int(remote.split(":")[1], 16)
            if client in clients:
                found[client] = inode
    return found


def sockets(pids: frozenset[int]) -> dict[str, int]:
    """Return, for every socket the processes hold, its inode and the pid holding it."""
    held = {}
    for pid in pids:
        with os.scandir(f"/proc/{pid}/fd") as descriptors:
            for descriptor in descriptors:
                try:
                    link = os.readlink(descriptor.path)
                except OSError:  # closed since the listing
                    continue
                if link.startswith("socket:["):
                    held[link[len("socket:[") : -1]] = pid
    return held


@pytest.fixture(scope="module")
def server(seeded: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `mim serve --workers 2` for the module, on the test database (`seeded`: migrated)."""
    with serving(tmp_path_factory.mktemp("dashboards"), server_env(), workers=2) as running:
        wait_until(lambda: len(running.workers()) == 2, "both workers run")
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> Client:
    return Client(server)


# --- the checks -----------------------------------------------------------------------------


async def load(client: Client, model: Model) -> None:
    """Write the model's incidents and observations through the API; read the targets."""
    for kpi in (await client.post(TARGETS))["kpis"]:
        model.targets[kpi["slug"]] = kpi["targets"]
    keys = list(model.incidents)
    params = ", ".join(f"$i{n}: IncidentInput!" for n in range(len(keys)))
    upserts = " ".join(f"i{n}: upsertIncident(input: $i{n}) {{ id }}" for n in range(len(keys)))
    variables = {f"i{n}": incident_input(k, model.incidents[k]) for n, k in enumerate(keys)}
    await client.post(f"mutation ({params}) {{ {upserts} }}", variables, persona="ingest")
    inputs = [observation_input(o) for o in model.ingested]
    await client.post(RECORD, {"inputs": inputs}, persona="ingest")


async def check_raw(client: Client, model: Model) -> None:
    """The raw rows, read through the API, are the model's, so the numbers below are checked
    against what the service holds. An exec gets the same rows but those of internal KPIs."""
    for persona in ("admin", "exec"):
        data = await client.post(RAW, persona=persona)
        nodes = [edge["node"] for edge in data["incidents"]["edges"]]
        severities = {key: incident.severity for key, incident in model.incidents.items()}
        assert {n["id"]: n["severity"] for n in nodes} == severities
        rows = [(n["id"], o) for n in nodes for o in n["kpis"]]
        held = [
            (o["kpi"]["slug"], key, at(o["timestamp"]), o["value"], o["source"]) for key, o in rows
        ]
        visible = model.visible(persona)
        expected = [
            (o.slug, o.incident, o.timestamp, o.value, o.source)
            for o in model.observations()
            if o.slug in visible
        ]
        assert sorted(held) == sorted(expected), persona
        for _, o in rows:
            # A computed row carries the version that computed it (none for an ingested one).
            slug, version = o["kpi"]["slug"], o["kpi"]["version"]
            computed_by = version - model.lag.get(slug, 0) if o["source"] == "computed" else None
            assert o["definitionVersion"] == computed_by, o


async def check_kpi(client: Client, model: Model, slug: str) -> dict[str, Any]:
    """The KPI's numbers, POSTed as an admin on new connections: exact on both workers."""
    replies = await client.on_fresh_connections(
        lambda c: client.send(c, "POST", "admin", query=ONE_KPI, variables={"slug": slug})
    )
    expected = model.expected(slug)
    for reply in replies:
        assert reply.status == 200, reply
        body = reply.json()
        assert "errors" not in body, (reply.worker, body)
        assert shown(body["data"]["kpi"]) == expected, f"{slug} from worker pid {reply.worker}"
    assert len({r.body for r in replies}) == 1, [(r.worker, r.body) for r in replies]
    kpi: dict[str, Any] = replies[0].json()["data"]["kpi"]
    return kpi


async def check_dashboard(
    client: Client, model: Model, persona: str, stale: str | None = None
) -> tuple[str, bytes]:
    """A persona's dashboard by GET on new connections: the model's numbers, only the KPIs it
    may see, one body and one ETag on both workers. With `stale` (a tag from before a write) as
    If-None-Match, every answer must still be a 200 with another tag. Returns tag and body."""
    replies = await client.on_fresh_connections(
        lambda c: client.send(c, "GET", persona, query=DASHBOARD, tag=stale), DASHBOARD_FRESH
    )
    visible = model.visible(persona)
    expected = {slug: short(model.expected(slug, persona)) for slug in visible}
    for reply in replies:
        where = (persona, f"worker pid {reply.worker}")
        assert reply.status == 200, (*where, reply.status, reply.body)
        assert reply.headers["cache-control"] == "private, no-cache", where
        assert reply.headers["etag"] != stale, where
        body = reply.json()
        assert "errors" not in body, (*where, body)
        data = body["data"]
        assert sorted(k["slug"] for k in data["kpis"]) == sorted(visible), where
        for slug in ("mttr", "mtta"):
            shows = {"slug": slug, "visibility": "INTERNAL" if slug in model.internal else "EXEC"}
            assert data[slug] == (shows if slug in visible else None), (*where, slug)
        for kpi in data["kpis"]:
            assert shown(kpi) == expected[kpi["slug"]], (*where, kpi["slug"])
        if persona in EXEC_ONLY:
            for slug in model.internal:
                assert f'"slug":"{slug}"'.encode() not in reply.body, (*where, slug)
    assert len({r.body for r in replies}) == 1, [(r.worker, r.body) for r in replies]
    tags = {r.headers["etag"] for r in replies}
    assert len(tags) == 1, (persona, [(r.worker, r.headers["etag"]) for r in replies])
    return tags.pop(), replies[0].body


async def check_not_modified(client: Client, persona: str, tag: str) -> None:
    """If-None-Match with the current tag: an empty 304 on new connections, on both workers."""
    replies = await client.on_fresh_connections(
        lambda c: client.send(c, "GET", persona, query=DASHBOARD, tag=tag)
    )
    for reply in replies:
        assert (reply.status, reply.body) == (304, b""), (persona, reply)
        assert reply.headers["etag"] == tag, (persona, reply)


async def check_everything(
    client: Client, model: Model, slug: str, stale: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    """Every check, for every persona at once; returns the KPI's answer, and each persona's
    dashboard tag and body."""
    await check_raw(client, model)
    kpi = await check_kpi(client, model, slug)
    tags = stale or dict.fromkeys(PERSONAS)
    dashboards = [check_dashboard(client, model, p, tags[p]) for p in PERSONAS]
    answers = dict(zip(PERSONAS, await every(*dashboards), strict=True))
    await every(*(check_not_modified(client, p, answers[p][0]) for p in PERSONAS))
    return kpi, answers


def check_as_of(
    model: Model, changed: Model, slug: str, before: dict[str, Any], after: dict[str, Any]
) -> int:
    """Where the KPI's count or mean moved, asOf (when its observations last changed) moved on
    too; returns how many summaries and points moved."""
    was, now = model.expected(slug), changed.expected(slug)
    moved = 0
    for name in was:
        old, new, first, second = (listed(x[name]) for x in (was, now, before, after))
        for n, (old_point, new_point) in enumerate(zip(old, new, strict=True)):
            if numbers(old_point) != numbers(new_point):
                moved += 1
                assert at(second[n]["asOf"]) > at(first[n]["asOf"]), (name, first[n], second[n])
    return moved


def listed(answer: Any) -> list[dict[str, Any]]:
    return answer if isinstance(answer, list) else [answer]


def numbers(answer: dict[str, Any]) -> tuple[int, float | None]:
    return answer["count"], answer["value"] if "value" in answer else answer["mean"]


async def wait_for_recompute(client: Client, slug: str) -> None:
    """Follow `recompute` until the KPI's latest job, for its current version, is DONE."""
    deadline = asyncio.get_running_loop().time() + RECOMPUTE_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        kpi = (await client.post(RECOMPUTE, {"slug": slug}))["kpi"]
        job = kpi["recompute"]
        assert job is not None and job["state"] != "FAILED", job
        if job["state"] == "DONE":
            assert job["version"] == kpi["version"], job
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"the recompute of {slug} did not finish in {RECOMPUTE_SECONDS} s")


@pytest.mark.parametrize("write", list(WRITES))
async def test_both_workers_answer_exact_fresh_dashboards_after_a_write(
    client: Client, write: str
) -> None:
    change = WRITES[write]
    model = baseline()
    await load(client, model)
    kpi_before, before = await check_everything(client, model, change.slug)

    changed = model.copy()
    change.apply(changed)
    # The write moves the KPI's numbers or who may see it: else this test would prove nothing.
    assert (changed.expected(change.slug), changed.internal) != (
        model.expected(change.slug),
        model.internal,
    )
    await client.post(change.query, change.variables, persona=change.persona)
    if change.recompute:
        await wait_for_recompute(client, change.slug)

    stale = {persona: tag for persona, (tag, _) in before.items()}
    kpi_after, after = await check_everything(client, changed, change.slug, stale)
    moved = check_as_of(model, changed, change.slug, kpi_before, kpi_after)
    assert (moved > 0) == change.moves_numbers, moved
    for persona in PERSONAS:
        sees = change.slug in model.visible(persona) or change.slug in changed.visible(persona)
        # Whoever may see the KPI gets another body; whoever may not, the very same bytes.
        assert (after[persona][1] != before[persona][1]) == sees, persona


async def test_a_value_taken_out_of_a_group_leaves_no_trace_in_its_mean(client: Client) -> None:
    outlier, kept = (
        ("INC-D20", "2026-03-03T01:00:00Z", 1e12),
        ("INC-D21", "2026-03-03T02:00:00Z", 0.1),
    )
    incidents = {key: IncidentData("P1", "2026-03-02T00:00:00Z") for key, _, _ in (outlier, kept)}
    for key, incident in incidents.items():
        await client.post(UPSERT, {"input": incident_input(key, incident)}, persona="ingest")
    rows = [Obs("mttr", key, at(when), value, "import") for key, when, value in (outlier, kept)]
    await client.post(RECORD, {"inputs": [observation_input(o) for o in rows]}, persona="ingest")
    moved_away = replace(incidents[outlier[0]], severity="P2")
    await client.post(UPSERT, {"input": incident_input(outlier[0], moved_away)}, persona="ingest")

    query = f"""{{ kpi(slug: "mttr") {{ summary(severity: P1) {{ count value }}
      series(bucket: WEEK, from: "{WHOLE_FROM}", to: "2026-03-09T00:00:00Z", severity: P1) {{
        count mean p50 }} }} }}"""
    replies = await client.on_fresh_connections(
        lambda c: client.send(c, "POST", "admin", query=query)
    )
    for reply in replies:
        assert reply.json()["data"]["kpi"] == {
            "summary": {"count": 1, "value": 0.1},
            "series": [{"count": 1, "mean": 0.1, "p50": 0.1}],
        }, f"worker pid {reply.worker}"
