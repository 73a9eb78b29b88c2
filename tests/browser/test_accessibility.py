"""The pages checked by axe-core (WCAG 2 A and AA rules: contrast, labels, names, structure) in
the real browser, signed in as an exec and as a responder, on a phone's width and a desktop's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Browsing
from tests.browser.test_pages import data, sign_in  # noqa: F401  (data: a fixture, used below)

AXE = (
    Path(__file__).resolve().parents[1] / "http_audit" / "node_modules" / "axe-core" / "axe.min.js"
)
PAGES = ["/ui/kpis", "/ui/kpis/mttr", "/ui/kpis/mttr?severity=all", "/ui/incidents",
         "/ui/incidents/INC-B-00"]  # fmt: skip


def axe_source() -> str:
    if not AXE.exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed: axe-core (tests/http_audit) is missing")
        pytest.fail(f"{AXE} is missing: run make setup")
    return AXE.read_text()


async def violations(browsing: Browsing) -> list[dict[str, Any]]:
    """Run axe-core on the page (evaluated by the test's driver: the pages' CSP admits no
    script of the test's); return its WCAG 2 A/AA violations."""
    page = browsing.page
    await page.evaluate(axe_source())
    found = await page.evaluate(
        """async () => (await axe.run(document, {runOnly: {type: 'tag',
            values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})).violations.map(
            v => ({id: v.id, impact: v.impact, help: v.help,
                   nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))"""
    )
    return list(found)


@pytest.mark.parametrize("width", [390, 1280])
@pytest.mark.parametrize("persona", ["exec", "responder"])
@pytest.mark.usefixtures("data")
async def test_every_page_passes_axe(browsing: Browsing, persona: str, width: int) -> None:
    await browsing.page.set_viewport_size({"width": width, "height": 900})
    await browsing.page.goto(browsing.url("/ui/login"))
    assert await violations(browsing) == []
    await sign_in(browsing, persona)
    problems = {}
    for path in PAGES:
        await browsing.page.goto(browsing.url(path))
        if found := await violations(browsing):
            problems[path] = found
    assert problems == {}, json.dumps(problems, indent=1)
    # The control: the same check on a page given a field without a label finds it.
    await browsing.page.evaluate(
        "document.querySelector('main').appendChild(document.createElement('input'))"
    )
    assert "label" in {v["id"] for v in await violations(browsing)}
