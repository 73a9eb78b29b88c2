"""The pages in a real browser: each persona signs in through the form, opens the catalogue, a
KPI's chart and an incident's scorecard, and signs out; nothing fails to load, nothing comes from
another host, and an exec never sees an internal KPI. Screenshots: test-artifacts/screenshots/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.browser.conftest import Browsing
from tests.conftest import make_token

CANARY = "zz-browser-canary"
CANARY_NAME = "Browser Canary Internal"
NOW = datetime.now(UTC)


async def graphql(base: str, query: str, variables: dict[str, Any], persona: str) -> None:
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{base}/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {make_token(persona)}"},
        )
        body = await response.json()
    assert response.status == 200 and "errors" not in body, body


@pytest.fixture
async def data(served: TestServer) -> None:
    """Thirteen weeks of resolved P1 and P2 incidents (MTTR computed for each), an internal
    canary KPI and its observations."""
    base = str(served.make_url("")).rstrip("/")
    await graphql(
        base,
        "mutation($input: CreateKpiDefinitionInput!) { createKpiDefinition(input: $input) "
        "{ slug } }",
        {
            "input": {
                "slug": CANARY,
                "name": CANARY_NAME,
                "description": "browser canary",
                "formula": "ingested",
                "units": "count",
                "dataSources": ["canary"],
                "visibility": "INTERNAL",
                "owner": "canary team",
                "reviewCadence": "P7D",
            }
        },
        "admin",
    )
    inputs = []
    for n in range(26):
        detected = NOW - timedelta(days=3 + n * 3.5)
        key = f"INC-B-{n:02}"
        await graphql(
            base,
            "mutation($input: IncidentInput!) { upsertIncident(input: $input) { id } }",
            {
                "input": {
                    "id": key,
                    "title": f"payments degraded ({n})",
                    "severity": "P1" if n % 2 == 0 else "P2",
                    "detectedAt": detected.isoformat(),
                    "resolvedAt": (detected + timedelta(minutes=60 + (n * 37) % 120)).isoformat(),
                }
            },
            "ingest",
        )
        inputs.append(
            {
                "kpiSlug": CANARY,
                "incidentId": key,
                "timestamp": (detected + timedelta(minutes=1)).isoformat(),
                "value": float(n % 5),
                "source": "manual",
                "confidence": 1.0,
            }
        )
    await graphql(
        base,
        "mutation($inputs: [RecordObservationInput!]!) { recordObservations(inputs: $inputs) "
        "{ value } }",
        {"inputs": inputs},
        "ingest",
    )


async def sign_in(browsing: Browsing, persona: str) -> None:
    """Sign in through the form as a person does: open a page, paste the token, submit."""
    page = browsing.page
    await page.goto(browsing.url("/ui/kpis"))
    assert page.url.startswith(browsing.url("/ui/login"))
    await page.get_by_label("Token").fill(make_token(persona, sub=f"{persona}@example.org"))
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(browsing.url("/ui/kpis"))
    assert await page.get_by_text(f"{persona}@example.org").count() == 1


@pytest.mark.parametrize("persona", ["exec", "stakeholder", "responder", "admin"])
async def test_each_persona_walks_the_pages(browsing: Browsing, data: None, persona: str) -> None:
    page = browsing.page
    await sign_in(browsing, persona)
    sees_internal = persona in ("responder", "admin")
    assert await page.get_by_role("heading", name="Mean Time to Resolve").count() == 1
    assert await page.locator("article.card").count() == (5 if sees_internal else 3)
    html = await page.content()
    assert (CANARY in html) is sees_internal and (CANARY_NAME in html) is sees_internal
    assert ("mtta" in html) is sees_internal
    await browsing.screenshot(f"catalogue-{persona}")

    await page.get_by_role("link", name="Mean Time to Resolve").click()
    await page.wait_for_url(browsing.url("/ui/kpis/mttr"))
    chart = page.get_by_role("img", name="Mean Time to Resolve, P1: weekly mean", exact=False)
    assert await chart.count() == 1
    assert await page.locator("svg.chart circle.dot").count() >= 5  # weeks with P1 incidents
    assert await page.locator("svg.chart line.target").count() == 1
    assert (await page.get_by_role("heading", name="Revision history").count() == 1) is (
        sees_internal
    )
    await page.get_by_role("link", name="P2", exact=True).click()
    await page.wait_for_url(browsing.url("/ui/kpis/mttr?severity=P2"))
    await browsing.screenshot(f"mttr-{persona}")
    assert CANARY not in await page.content() or sees_internal

    await page.get_by_role("link", name="Incidents", exact=True).click()
    await page.wait_for_url(browsing.url("/ui/incidents"))
    await page.get_by_role("link", name="INC-B-00").click()
    await page.wait_for_url(browsing.url("/ui/incidents/INC-B-00"))
    assert await page.get_by_role("heading", name="payments degraded (0)").count() == 1
    assert (CANARY_NAME in await page.content()) is sees_internal
    await browsing.screenshot(f"incident-{persona}")

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(browsing.url("/ui/login"))
    await page.goto(browsing.url("/ui/kpis"))
    assert page.url.startswith(browsing.url("/ui/login"))


async def test_an_exec_asking_for_an_internal_kpi_sees_not_found(
    browsing: Browsing, data: None
) -> None:
    await sign_in(browsing, "exec")
    browsing.watch.expect_status(404, f"/ui/kpis/{CANARY}")
    response = await browsing.page.goto(browsing.url(f"/ui/kpis/{CANARY}"))
    assert response is not None and response.status == 404
    assert await browsing.page.get_by_role("heading", name="Not found").count() == 1
    assert CANARY not in await browsing.page.content()


async def test_a_bad_token_is_refused_in_the_form(browsing: Browsing) -> None:
    page = browsing.page
    browsing.watch.expect_status(400, "/ui/login")
    await page.goto(browsing.url("/ui/login"))
    await page.get_by_label("Token").fill("not.a.token")
    await page.get_by_role("button", name="Sign in").click()
    assert await page.get_by_role("alert").count() == 1
    assert "not accepted" in await page.get_by_role("alert").inner_text()
    cookies = await page.context.cookies()
    assert "mim_session" not in {c["name"] for c in cookies}


@pytest.mark.parametrize(("name", "width", "height"), [("phone", 390, 844), ("wall", 2560, 1440)])
async def test_the_catalogue_fits_a_phone_and_a_wall_screen(
    browsing: Browsing, data: None, name: str, width: int, height: int
) -> None:
    page = browsing.page
    await page.set_viewport_size({"width": width, "height": height})
    await sign_in(browsing, "exec")
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{overflow}px wider than a {name} screen"
    await browsing.screenshot(f"catalogue-exec-{name}")
    await page.goto(browsing.url("/ui/kpis/mttr"))
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the KPI page is {overflow}px wider than a {name} screen"
    await browsing.screenshot(f"mttr-exec-{name}")


async def test_the_session_cookie_cannot_be_read_by_a_script(
    browsing: Browsing, data: None
) -> None:
    await sign_in(browsing, "admin")
    assert "mim_session" not in await browsing.page.evaluate("document.cookie")
    (cookie,) = [c for c in await browsing.page.context.cookies() if c["name"] == "mim_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
