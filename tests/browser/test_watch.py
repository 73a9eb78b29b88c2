"""The browser fixture's watch: what it must catch for a browser test to mean anything."""

from __future__ import annotations

import pytest

from tests.browser.conftest import Browsing


async def test_the_watch_catches_external_requests_csp_violations_and_errors(
    browsing: Browsing,
) -> None:
    page = browsing.page
    # /healthz has no Content-Security-Policy: the request reaches the route, which blocks it.
    await page.goto(browsing.url("/healthz"))
    with pytest.raises(Exception, match="Failed to fetch"):
        await page.evaluate("fetch('https://example.com/tracker.js')")
    await page.goto(browsing.url("/graphql"))
    # An inline script, refused by the page's Content-Security-Policy.
    await page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.ran = true'; document.body.append(s); }"
    )
    await page.evaluate("fetch('/static/missing.js')")
    await page.evaluate("console.error('boom')")
    await page.wait_for_timeout(200)  # console events arrive after evaluate returns
    problems = "\n".join(browsing.watch.problems)
    assert "external request blocked: https://example.com/tracker.js" in problems
    assert "Content Security Policy" in problems
    assert await page.evaluate("window.ran === undefined")
    assert "HTTP 404" in problems and "/static/missing.js" in problems
    assert "console error: boom" in problems
    browsing.watch.problems.clear()  # seen; the fixture's own check now passes


async def test_an_expected_status_is_not_a_problem(browsing: Browsing) -> None:
    await browsing.page.goto(browsing.url("/graphql"))
    browsing.watch.expect_status(401, "/kpis")
    await browsing.page.evaluate("fetch('/kpis')")
    await browsing.page.wait_for_timeout(200)
    # Neither the answer nor the console error Chromium logs for it.
    assert browsing.watch.problems == []
