"""The pages under /ui/ over HTTP: sign-in, the session cookie, CSRF, redirects, what each persona
sees, 404 for a KPI the viewer may not see, and nothing loaded from anywhere else."""

from __future__ import annotations

import re
import ssl
import tempfile
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from registry.tables import PageSession
from server.app import create_app
from tests.conftest import EXEC_ONLY, PERSONAS, SEES_INTERNAL, gql, make_token

CANARY = "zz-page-canary"
CANARY_NAME = "Canary Gauge Of Secrets"
CANARY_WORDS = (CANARY, CANARY_NAME, "canary-description-text", "canary-owner-team")
PAGES = ["/ui/kpis", "/ui/kpis/mttr", "/ui/incidents", "/ui/incidents/INC-PAGE-1"]
NOW = datetime.now(UTC)


class Parsed(HTMLParser):
    """The parts of a page a test reads: links, sources, forms and their fields."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.forms: list[dict[str, Any]] = []
        self.inputs: list[dict[str, str | None]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("href", "src", "action", "xlink:href", "poster", "srcset"):
            if found.get(name):
                self.urls.append(str(found[name]))
        if tag == "form":
            self.forms.append({"action": found.get("action"), "method": found.get("method")})
        if tag in ("input", "textarea"):
            self.inputs.append(found)


def field(text: str, name: str) -> str:
    values = [i.get("value") for i in Parsed(text).inputs if i.get("name") == name]
    assert values and values[0], f"no {name} field"
    return str(values[0])


async def sign_in(client: TestClient, persona: str, **token: Any) -> aiohttp.ClientResponse:
    """Fill in the sign-in form as a browser does; return the answer to the POST."""
    form = await client.get("/ui/login")
    assert form.status == 200
    return await client.post(
        "/ui/login",
        data={
            "token": make_token(persona, sub=f"{persona}-person", **token),
            "csrf": field(await form.text(), "csrf"),
            "next": "/ui/kpis",
        },
        allow_redirects=False,
    )


@pytest.fixture(autouse=True)
async def no_sessions() -> None:
    """Sessions are not domain data (conftest's clean_db keeps them); each test starts without."""
    await PageSession.delete(force=True)


async def session_count() -> int:
    return int(await PageSession.count())


@pytest.fixture
async def pages(client: TestClient) -> TestClient:
    """An internal canary KPI with observations, and two incidents with timelines."""
    body = await gql(
        client,
        """mutation($input: CreateKpiDefinitionInput!) { createKpiDefinition(input: $input)
        { slug } }""",
        {
            "input": {
                "slug": CANARY,
                "name": CANARY_NAME,
                "description": "canary-description-text",
                "formula": "ingested",
                "units": "count",
                "dataSources": ["canary.source"],
                "visibility": "INTERNAL",
                "owner": "canary-owner-team",
                "reviewCadence": "P30D",
                "targets": [{"comparison": "AT_MOST", "threshold": 3, "severity": "P1"}],
            }
        },
    )
    assert "errors" not in body, body
    detected = NOW - timedelta(days=3)
    for key, severity in (("INC-PAGE-1", "P1"), ("INC-PAGE-2", "P2")):
        body = await gql(
            client,
            "mutation($input: IncidentInput!) { upsertIncident(input: $input) { id } }",
            {
                "input": {
                    "id": key,
                    "title": f"checkout outage {key}",
                    "severity": severity,
                    "detectedAt": detected.isoformat(),
                    "resolvedAt": (detected + timedelta(minutes=90)).isoformat(),
                }
            },
            persona="ingest",
        )
        assert "errors" not in body, body
    body = await gql(
        client,
        """mutation($inputs: [RecordObservationInput!]!) { recordObservations(inputs: $inputs)
        { value } }""",
        {
            "inputs": [
                {
                    "kpiSlug": slug,
                    "incidentId": "INC-PAGE-1",
                    "timestamp": (detected + timedelta(minutes=5)).isoformat(),
                    "value": value,
                    "source": "manual",
                    "confidence": 1.0,
                }
                for slug, value in ((CANARY, 7.0), ("mtta", 4.0))
            ]
        },
        persona="ingest",
    )
    assert "errors" not in body, body
    body = await gql(
        client,
        """mutation($input: TimelineEventInput!) { recordTimelineEvent(input: $input) { kind } }""",
        {
            "input": {
                "incidentId": "INC-PAGE-1",
                "kind": "phase",
                "phase": "gather",
                "occurredAt": (detected + timedelta(minutes=4)).isoformat(),
                "note": "bridge opened",
            }
        },
        persona="ingest",
    )
    assert "errors" not in body, body
    return client


# --- without a session ---------------------------------------------------------------------


@pytest.mark.parametrize("path", [*PAGES, "/ui", "/ui/", "/ui/kpis/nope?severity=P2"])
async def test_every_page_without_a_session_redirects_to_sign_in(client, path):
    response = await client.get(path, allow_redirects=False)
    assert response.status == 303
    location = response.headers["Location"]
    assert location.startswith("/ui/login")
    if path not in ("/ui", "/ui/"):
        target = parse_qs(urlsplit(location).query)["next"]
        assert target == [path]  # back to the page asked for, once signed in


async def test_a_bearer_token_opens_no_page(client):
    """Pages take a session, never an Authorization header (a link cannot carry one anyway)."""
    headers = {"Authorization": f"Bearer {make_token('admin')}"}
    response = await client.get("/ui/kpis", headers=headers, allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"].startswith("/ui/login")


async def test_sign_in_form_has_a_token_field_and_a_csrf_token(client):
    response = await client.get("/ui/login")
    text = await response.text()
    assert response.status == 200
    assert response.content_type == "text/html"
    parsed = Parsed(text)
    assert [f["action"] for f in parsed.forms] == ["/ui/login"]
    assert [i for i in parsed.inputs if i.get("name") == "token"], "no field named token"
    csrf = field(text, "csrf")
    cookie = response.cookies["mim_login_csrf"]
    assert cookie.value == csrf
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert cookie["path"] == "/ui/login"


# --- sign-in -------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", PERSONAS)
async def test_a_valid_token_starts_a_session_with_a_safe_cookie(client, persona):
    response = await sign_in(client, persona, ttl=900)
    assert response.status == 303
    assert response.headers["Location"] == "/ui/kpis"
    cookie = response.cookies["mim_session"]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/ui"
    assert not cookie["secure"]  # served over plain HTTP here; see the HTTPS test
    assert 0 < int(cookie["max-age"]) <= 900
    assert "." not in cookie.value and len(cookie.value) >= 40  # random, not a JWT
    stored = await PageSession.select()
    assert len(stored) == 1
    assert stored[0]["id_hash"] != cookie.value
    assert stored[0]["subject"] == f"{persona}-person"
    page = await client.get("/ui/kpis")
    assert page.status == 200
    assert f"{persona}-person" in await page.text()


async def test_the_session_ends_no_later_than_the_token(client):
    before = datetime.now(UTC)
    response = await sign_in(client, "exec", ttl=120)
    assert int(response.cookies["mim_session"]["max-age"]) <= 120
    (row,) = await PageSession.select()
    expires_at = row["expires_at"]
    expires_at = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
    assert expires_at <= before + timedelta(seconds=122)


async def test_the_token_is_kept_nowhere(client, caplog):
    token = make_token("admin", sub="keeper")
    form = await client.get("/ui/login")
    response = await client.post(
        "/ui/login",
        data={"token": token, "csrf": field(await form.text(), "csrf"), "next": "/ui/kpis"},
        allow_redirects=False,
    )
    assert response.status == 303
    seen = [str(v) for v in response.cookies.values()]
    seen += [str(row) for row in await PageSession.select()]
    page = await client.get("/ui/kpis")
    seen.append(await page.text())
    seen += [r.getMessage() for r in caplog.records]
    signature = token.rsplit(".", 1)[1]
    assert not [s for s in seen if token in s or signature in s]


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-token",
        make_token("admin", secret="another-secret-that-is-long-enough-for-hs256-xyz"),
        make_token("admin", ttl=-120),
        make_token("nobody"),
        make_token("admin", ttl=10 * 86400),  # longer than MIM_JWT_MAX_TTL
    ],
    ids=["empty", "garbage", "wrong-key", "expired", "no-persona", "too-long-lived"],
)
async def test_a_bad_token_reshows_the_form_and_starts_nothing(client, token):
    form = await client.get("/ui/login")
    response = await client.post(
        "/ui/login",
        data={"token": token, "csrf": field(await form.text(), "csrf"), "next": "/ui/kpis"},
        allow_redirects=False,
    )
    assert response.status == 400
    text = await response.text()
    assert "not accepted" in text
    assert [i for i in Parsed(text).inputs if i.get("name") == "token"]
    assert "mim_session" not in response.cookies
    assert await session_count() == 0
    assert (await client.get("/ui/kpis", allow_redirects=False)).status == 303


@pytest.mark.parametrize("csrf", [None, "", "x" * 43])
async def test_sign_in_without_its_csrf_token_is_refused(client, csrf):
    await client.get("/ui/login")  # the browser has the cookie; the form's field is missing/wrong
    data = {"token": make_token("admin"), "next": "/ui/kpis"}
    if csrf is not None:
        data["csrf"] = csrf
    response = await client.post("/ui/login", data=data, allow_redirects=False)
    assert response.status == 400
    assert "mim_session" not in response.cookies
    assert await session_count() == 0


async def test_sign_in_from_another_site_is_refused(client):
    """A cross-site form post carries no SameSite=Strict cookie: the CSRF check fails."""
    form = await client.get("/ui/login")
    csrf = field(await form.text(), "csrf")
    client.session.cookie_jar.clear()
    response = await client.post(
        "/ui/login",
        data={"token": make_token("admin"), "csrf": csrf, "next": "/ui/kpis"},
        allow_redirects=False,
    )
    assert response.status == 400
    assert await session_count() == 0


@pytest.mark.parametrize(
    ("next_", "expected"),
    [
        ("/ui/kpis/mttr", "/ui/kpis/mttr"),
        ("/ui/incidents?severity=P1", "/ui/incidents?severity=P1"),
        ("https://evil.example/", "/ui/kpis"),
        ("//evil.example/ui/", "/ui/kpis"),
        ("/\\evil.example", "/ui/kpis"),
        ("/graphql", "/ui/kpis"),
        ("/ui/login", "/ui/kpis"),
    ],
)
async def test_after_sign_in_the_browser_goes_only_to_our_pages(client, next_, expected):
    form = await client.get("/ui/login")
    response = await client.post(
        "/ui/login",
        data={
            "token": make_token("exec"),
            "csrf": field(await form.text(), "csrf"),
            "next": next_,
        },
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"] == expected


async def test_the_cookie_is_secure_over_https(settings):
    """Served over TLS, the session cookie says Secure."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    with tempfile.TemporaryDirectory() as folder:
        cert_file, key_file = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
    server = TestServer(create_app(settings))
    await server.start_server(ssl=context)
    try:
        connector = aiohttp.TCPConnector(ssl=False)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as http:
            base = str(server.make_url(""))
            assert base.startswith("https://")
            form = await http.get(f"{base}/ui/login")
            assert form.cookies["mim_login_csrf"]["secure"]
            response = await http.post(
                f"{base}/ui/login",
                data={"token": make_token("exec"), "csrf": field(await form.text(), "csrf")},
                allow_redirects=False,
            )
            assert response.status == 303
            assert response.cookies["mim_session"]["secure"]
    finally:
        await server.close()


# --- the session ---------------------------------------------------------------------------


async def test_every_worker_knows_a_session(client, settings):
    """Sessions live in the database: another app on the same database accepts the cookie."""
    response = await sign_in(client, "exec")
    cookie = response.cookies["mim_session"].value
    async with TestClient(TestServer(create_app(settings))) as other:
        page = await other.get("/ui/kpis", cookies={"mim_session": cookie})
        assert page.status == 200
        assert "exec-person" in await page.text()


async def test_an_expired_session_sends_the_browser_to_sign_in(client):
    await sign_in(client, "admin")
    await PageSession.update(
        {PageSession.expires_at: datetime.now(UTC) - timedelta(seconds=1)}, force=True
    )
    response = await client.get("/ui/kpis", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"].startswith("/ui/login")


async def test_a_made_up_session_id_opens_nothing(client):
    await sign_in(client, "admin")
    client.session.cookie_jar.clear()
    for value in ("x" * 43, "", "a" * 500):
        response = await client.get(
            "/ui/kpis", cookies={"mim_session": value}, allow_redirects=False
        )
        assert response.status == 303


async def test_sign_out_ends_the_session_for_good(client):
    await sign_in(client, "admin")
    page = await client.get("/ui/kpis")
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/ui/kpis"))["mim_session"]
    csrf = field(await page.text(), "csrf")
    response = await client.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/ui/login"
    assert response.cookies["mim_session"].value == ""
    assert await session_count() == 0
    again = await client.get(
        "/ui/kpis", cookies={"mim_session": cookie.value}, allow_redirects=False
    )
    assert again.status == 303


@pytest.mark.parametrize("csrf", [None, "", "wrong-token-value-of-a-good-length-xxxxxxxx"])
async def test_sign_out_without_the_session_csrf_token_is_refused(client, csrf):
    await sign_in(client, "admin")
    data = {} if csrf is None else {"csrf": csrf}
    response = await client.post("/ui/logout", data=data, allow_redirects=False)
    assert response.status == 400
    assert await session_count() == 1
    assert (await client.get("/ui/kpis")).status == 200


async def test_every_form_carries_a_csrf_token(pages):
    await sign_in(pages, "admin")
    for path in PAGES:
        text = await (await pages.get(path)).text()
        forms = text.count("<form")
        assert forms >= 1, path  # the sign-out form at least
        assert text.count('name="csrf"') == forms, path


# --- what each persona sees ----------------------------------------------------------------


@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_an_exec_page_never_shows_an_internal_kpi(pages, persona):
    await sign_in(pages, persona)
    for path in [*PAGES, "/ui/incidents/INC-PAGE-2", "/ui/kpis/mttr?severity=all"]:
        response = await pages.get(path)
        assert response.status == 200, path
        text = await response.text()
        leaked = [w for w in (*CANARY_WORDS, "mtta", "Mean Time to Acknowledge") if w in text]
        assert not leaked, (path, leaked)
        assert not [h for h in response.headers.values() if CANARY in h]


@pytest.mark.parametrize("persona", SEES_INTERNAL)
async def test_an_internal_persona_sees_internal_kpis(pages, persona):
    await sign_in(pages, persona)
    text = await (await pages.get("/ui/kpis")).text()
    assert CANARY_NAME in text and "canary-description-text" in text
    assert 'href="/ui/kpis/zz-page-canary"' in text
    incident = await (await pages.get("/ui/incidents/INC-PAGE-1")).text()
    assert CANARY_NAME in incident and "7 count" in incident


@pytest.mark.parametrize("persona", EXEC_ONLY)
async def test_an_internal_kpi_page_answers_as_an_unknown_one(pages, persona):
    await sign_in(pages, persona)
    hidden = await pages.get(f"/ui/kpis/{CANARY}")
    unknown = await pages.get("/ui/kpis/zz-page-nothing")
    assert hidden.status == unknown.status == 404
    assert await hidden.text() == await unknown.text()
    assert CANARY not in await hidden.text()


async def test_revision_history_is_for_internal_personas(pages):
    await sign_in(pages, "responder")
    assert "Revision history" in await (await pages.get("/ui/kpis/mttr")).text()
    pages.session.cookie_jar.clear()
    await sign_in(pages, "exec")
    assert "Revision history" not in await (await pages.get("/ui/kpis/mttr")).text()


async def test_the_kpi_page_shows_summary_chart_and_its_table(pages):
    await sign_in(pages, "admin")
    text = await (await pages.get(f"/ui/kpis/{CANARY}?severity=P1")).text()
    assert '<svg class="chart"' in text and 'role="img"' in text
    assert "<title" in text  # the chart's accessible name
    assert "target ≤ 3 count" in text  # the target line's label, with its units
    rows = re.findall(r"<tr><th scope=\"row\"><time", text)
    assert len(rows) == 13  # one table row per week: the chart's text equivalent
    assert "7 count" in text and "misses target" in text
    for choice in ("P2", "all"):
        other = await pages.get(f"/ui/kpis/{CANARY}?severity={choice}")
        assert other.status == 200


@pytest.mark.parametrize("severity", ["P9", "", "p1"])
async def test_an_unknown_severity_choice_is_not_found(pages, severity):
    await sign_in(pages, "admin")
    assert (await pages.get(f"/ui/kpis/mttr?severity={severity}")).status == 404


async def test_the_incident_scorecard_shows_values_timeline_and_units(pages):
    await sign_in(pages, "responder")
    text = await (await pages.get("/ui/incidents/INC-PAGE-1")).text()
    assert "checkout outage INC-PAGE-1" in text
    assert "90 min" in text  # MTTR computed for the incident, with its units
    assert "bridge opened" in text
    assert "UTC+00:00" in text
    missing = await pages.get("/ui/incidents/INC-NOPE")
    assert missing.status == 404


async def test_the_incident_list_pages_and_filters(pages):
    for n in range(30):
        body = await gql(
            pages,
            "mutation($input: IncidentInput!) { upsertIncident(input: $input) { id } }",
            {
                "input": {
                    "id": f"INC-LIST-{n:02}",
                    "title": "t",
                    "severity": "P3",
                    "detectedAt": (NOW - timedelta(hours=n)).isoformat(),
                }
            },
            persona="ingest",
        )
        assert "errors" not in body
    await sign_in(pages, "exec")
    first = await (await pages.get("/ui/incidents?severity=P3")).text()
    keys = re.findall(r'href="/ui/incidents/(INC-[^"]+)"', first)
    assert keys == [f"INC-LIST-{n:02}" for n in range(25)]
    (older,) = [u for u in Parsed(first).urls if "after=" in u]
    second = await (await pages.get("/ui/incidents" + older.replace("&amp;", "&"))).text()
    keys = re.findall(r'href="/ui/incidents/(INC-[^"]+)"', second)
    assert keys == [f"INC-LIST-{n:02}" for n in range(25, 30)]
    assert "after=" not in second
    p1 = await (await pages.get("/ui/incidents?severity=P1")).text()
    assert re.findall(r'href="/ui/incidents/(INC-[^"]+)"', p1) == ["INC-PAGE-1"]


@pytest.mark.parametrize("query", ["severity=P7", "after=not-a-cursor", "after=" + "A" * 40])
async def test_a_bad_incident_list_query_is_a_clear_400(pages, query):
    await sign_in(pages, "admin")
    response = await pages.get(f"/ui/incidents?{query}")
    assert response.status == 400
    assert response.content_type == "text/html"
    assert "Traceback" not in await response.text()


async def test_a_token_without_a_persona_cannot_sign_in_but_is_told_why(client):
    response = await sign_in(client, "nobody")
    assert response.status == 400
    assert await session_count() == 0


# --- what every page carries ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [*PAGES, "/ui/login", "/ui/kpis/nope", "/ui/incidents/INC-NOPE", "/ui/nowhere"]
)
async def test_pages_allow_only_their_own_origin(pages, path):
    await sign_in(pages, "admin")
    response = await pages.get(path, allow_redirects=False)
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "http" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" in response.headers["Cache-Control"]
    text = await response.text()
    for url in Parsed(text).urls:
        assert url.startswith(("/ui/", "/static/mim/", "?", "#")), (path, url)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and " style=" not in text


async def test_an_unknown_page_is_an_html_404(pages):
    await sign_in(pages, "admin")
    response = await pages.get("/ui/nowhere")
    assert response.status == 404
    assert response.content_type == "text/html"


async def test_the_stylesheet_and_icon_are_the_services_own(client):
    text = await (await client.get("/ui/login")).text()
    links = [u for u in Parsed(text).urls if u.startswith("/static/")]
    assert len(links) == 2  # the icon and the stylesheet, served without a session
    for link in links:
        response = await client.get(link)
        assert response.status == 200
        assert response.content_type in ("text/css", "image/svg+xml")
        assert "http" not in (await response.text()).replace("http://www.w3.org/2000/svg", "")


async def test_metrics_never_name_an_internal_kpi_an_exec_asked_for(pages):
    await sign_in(pages, "exec")
    assert (await pages.get(f"/ui/kpis/{CANARY}")).status == 404
    scrape = await pages.get("/metrics", headers={"Authorization": f"Bearer {make_token()}"})
    text = await scrape.text()
    assert 'route="/ui/kpis/{slug}"' in text
    assert CANARY not in text


async def test_the_kept_catalogue_is_never_another_personas(pages):
    """The worker keeps rendered catalogues: one kept for a responder is not an exec's."""
    await sign_in(pages, "responder")
    assert CANARY_NAME in await (await pages.get("/ui/kpis")).text()
    pages.session.cookie_jar.clear()
    await sign_in(pages, "exec")
    text = await (await pages.get("/ui/kpis")).text()
    assert "Mean Time to Resolve" in text
    assert not [w for w in (*CANARY_WORDS, "mtta") if w in text]


async def test_the_kept_catalogue_follows_every_write(pages):
    """A change committed anywhere moves the data generation: the next catalogue shows it."""
    await sign_in(pages, "exec")
    assert "Mean Time to Resolve" in await (await pages.get("/ui/kpis")).text()
    body = await gql(
        pages,
        'mutation { updateKpiDefinition(slug: "mttr", input: {name: "Time To Resolve, Renamed"}) '
        "{ version } }",
    )
    assert "errors" not in body, body
    text = await (await pages.get("/ui/kpis")).text()
    assert "Time To Resolve, Renamed" in text and "Mean Time to Resolve" not in text


@pytest.mark.parametrize(
    "next_", ["/ui/../graphql", "/ui/%2e%2e/graphql", "/ui/kpis/../../metrics", "/ui/%2E%2E/x"]
)
async def test_dot_segments_never_lead_out_of_the_pages(client, next_):
    await sign_in(client, "exec")
    response = await client.get("/ui/login", params={"next": next_}, allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/ui/kpis"


async def test_a_wrong_method_is_an_html_405_with_allow(pages):
    await sign_in(pages, "admin")
    response = await pages.delete("/ui/kpis")
    assert response.status == 405
    assert response.content_type == "text/html"
    assert "GET" in response.headers["Allow"]


async def test_a_repeated_incident_filter_is_a_400(pages):
    await sign_in(pages, "admin")
    response = await pages.get("/ui/incidents?severity=P3&severity=P2")
    assert response.status == 400
