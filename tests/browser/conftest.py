"""Browser tests: Debian's chromium driven by Playwright, against the app on a real port.

Playwright downloads no browser: it launches the system's `chromium` (`executable_path`). Every
test's page is watched: a console error or warning, an uncaught exception, a failed request, an
answer of 400 or more that the test did not declare, or any request to another host than the
served one (blocked, never sent) fails the test. Screenshots go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Error,
    Page,
    Request,
    Response,
    Route,
    async_playwright,
)

from server.app import create_app
from server.config import Settings
from tests.conftest import ENV

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
# What Chromium logs for an answer of 400 or more (accepted with it when a test expects it).
_LOAD_FAILED = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")
# How long a browser step may take before the test fails (ms): the machine is small and shared.
TIMEOUT_MS = 15_000


def chromium() -> str:
    """Return the system chromium's path; skip (fail under CI) when it is not installed."""
    found = shutil.which("chromium")
    if found is None:
        reason = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the browser tests")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Return one headless chromium for the whole run."""
    path = chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, headless=True)
        yield launched
        await launched.close()


@pytest.fixture
def browser_settings() -> Settings:
    """The settings the served app runs with; override the fixture to change them."""
    return Settings.from_env(ENV)


@pytest.fixture
async def served(browser_settings: Settings) -> AsyncIterator[TestServer]:
    """Serve the real app on a real TCP port of 127.0.0.1, with the test database."""
    server = TestServer(create_app(browser_settings), host="127.0.0.1")
    async with server:
        yield server


@dataclass
class Watch:
    """What went wrong in a page, recorded as it happens."""

    origin: str
    expected: set[tuple[int, str]] = field(default_factory=set)
    allowed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def expect_status(self, status: int, path: str) -> None:
        """Declare that an answer with this status on this path is part of the test."""
        self.expected.add((status, path))

    def allow_console(self, text: str) -> None:
        """Declare a console message (by a part of its text) that a third party's code logs."""
        self.allowed.append(text)

    def console(self, message: ConsoleMessage) -> None:
        if message.type not in ("error", "warning"):
            return
        if any(text in message.text for text in self.allowed):
            return
        status = _LOAD_FAILED.match(message.text)
        path = urlsplit(message.location.get("url", "")).path
        if status is None or (int(status[1]), path) not in self.expected:
            self.problems.append(f"console {message.type}: {message.text} ({message.location})")

    def page_error(self, error: Error) -> None:
        self.problems.append(f"uncaught: {error}")

    def request_failed(self, request: Request) -> None:
        # Blocked ones are reported by route(); ERR_ABORTED is the browser dropping a load it
        # no longer needs (the page moved on before its icon came), not a failure of the server.
        if not self._outside(request.url) and request.failure != "net::ERR_ABORTED":
            self.problems.append(f"failed request: {request.url} ({request.failure})")

    def response(self, response: Response) -> None:
        if response.status >= 400:
            path = urlsplit(response.url).path
            if (response.status, path) not in self.expected:
                self.problems.append(f"HTTP {response.status}: {response.url}")

    async def route(self, route: Route) -> None:
        """Let requests to the served origin through; block and record every other."""
        url = route.request.url
        if self._outside(url):
            self.problems.append(f"external request blocked: {url}")
            await route.abort("blockedbyclient")
        else:
            await route.continue_()

    def _outside(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            return False
        return f"{parts.scheme}://{parts.netloc}" != self.origin


@dataclass
class Browsing:
    """A page of the served app and what it watches."""

    page: Page
    watch: Watch
    base: str

    def url(self, path: str) -> str:
        return self.base + path

    async def screenshot(self, name: str) -> Path:
        """Save a screenshot as test-artifacts/screenshots/<name>.png; return its path."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_clean(self) -> None:
        """Fail with everything that went wrong since the last check."""
        problems, self.watch.problems = self.watch.problems, []
        assert not problems, "\n".join(problems)


@pytest.fixture
async def browsing(browser: Browser, served: TestServer) -> AsyncIterator[Browsing]:
    """Return a fresh page (its own storage) on the served app, failing the test on any
    console error or warning, uncaught exception, failed or undeclared 4xx/5xx request, or
    request to another host."""
    base = str(served.make_url("")).rstrip("/")
    watch = Watch(origin=base)
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    await context.route("**/*", watch.route)
    page = await context.new_page()
    page.on("console", watch.console)
    page.on("pageerror", watch.page_error)
    page.on("requestfailed", watch.request_failed)
    page.on("response", watch.response)
    browsing = Browsing(page=page, watch=watch, base=base)
    yield browsing
    await context.close()
    browsing.assert_clean()  # what came after the test's end (pytest_runtest_call: before it)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Fail a browser test (not only its teardown) when its page saw anything go wrong."""
    result = yield
    browsing = getattr(item, "funcargs", {}).get("browsing")
    if isinstance(browsing, Browsing):
        browsing.assert_clean()
    return result
