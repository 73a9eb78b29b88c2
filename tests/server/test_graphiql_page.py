"""The GraphiQL page over HTTP: public, under the pages' Content-Security-Policy, loading nothing
from anywhere but the service, and absent when MIM_GRAPHIQL is off.
(tests/browser/test_graphiql.py runs it in a browser.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser

import pytest
from aiohttp.test_utils import TestClient, TestServer

from server import graphiql, static
from server.app import create_app
from server.config import Settings
from tests.conftest import ENV

HTML = {"Accept": "text/html"}
# Any URL with a scheme, but the namespace an SVG file must name.
EXTERNAL = re.compile(r"(?:https?:)?//(?!www\.w3\.org/2000/svg\b)[\w.-]+", re.IGNORECASE)


class Tags(HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


async def page_tags(client: TestClient) -> list[tuple[str, dict[str, str | None]]]:
    response = await client.get("/graphql", headers=HTML)
    assert response.status == 200
    parser = Tags()
    parser.feed(await response.text())
    return parser.tags


async def test_the_page_carries_the_content_security_policy(client: TestClient) -> None:
    response = await client.get("/graphql", headers=HTML)
    assert response.status == 200
    assert response.content_type == "text/html"
    policy = response.headers["Content-Security-Policy"]
    nonce = re.search(r"style-src 'self' 'nonce-([\w-]{24})';", policy)
    assert nonce is not None
    assert policy == graphiql.policy(nonce[1])
    assert "img-src 'self' data:;" in policy and "font-src 'self' data:;" in policy
    assert "script-src 'self';" in policy and "unsafe" not in policy
    for directive in ("frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'"):
        assert directive in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


async def test_the_style_nonce_is_new_for_every_page_and_given_to_our_script(
    client: TestClient,
) -> None:
    nonces = []
    for _ in range(2):
        response = await client.get("/graphql", headers=HTML)
        nonce = re.search(r"'nonce-([\w-]+)'", response.headers["Content-Security-Policy"])
        assert nonce is not None
        nonces.append(nonce[1])
        parser = Tags()
        parser.feed(await response.text())
        ours = [attrs for tag, attrs in parser.tags if attrs.get("data-style-nonce")]
        assert [attrs["data-style-nonce"] for attrs in ours] == [nonce[1]]
        assert (ours[0]["src"] or "").startswith("/static/mim/graphiql.js?v=")
    assert nonces[0] != nonces[1]


async def test_the_page_has_no_inline_script_or_style(client: TestClient) -> None:
    tags = await page_tags(client)
    scripts = [attrs for tag, attrs in tags if tag == "script"]
    assert scripts and all(attrs.get("src") for attrs in scripts)
    assert "style" not in [tag for tag, _ in tags]
    assert not [
        attrs for _, attrs in tags if "style" in attrs or any(a.startswith("on") for a in attrs)
    ]


async def test_every_file_the_page_links_is_served_from_static(client: TestClient) -> None:
    tags = await page_tags(client)
    links = [
        attrs.get("src") or attrs.get("href") for tag, attrs in tags if tag in ("script", "link")
    ]
    assert len(links) == 7
    for link in links:
        assert link is not None and link.startswith(static.PREFIX)
        response = await client.get(link)
        assert response.status == 200, link
        assert response.headers["Cache-Control"] == static.IMMUTABLE


@pytest.mark.parametrize("name", ["mim/graphiql.js", "mim/graphiql.css", "mim/favicon.svg"])
async def test_our_files_name_no_other_host(name: str) -> None:
    text = (static.ROOT / name).read_text()
    assert EXTERNAL.findall(text) == []


async def test_the_page_names_no_other_host(client: TestClient) -> None:
    response = await client.get("/graphql", headers=HTML)
    assert EXTERNAL.findall(await response.text()) == []


@pytest.fixture
async def without_graphiql() -> AsyncIterator[TestClient]:
    settings = Settings.from_env({**ENV, "MIM_GRAPHIQL": "0"})
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


async def test_no_page_when_graphiql_is_off(without_graphiql: TestClient) -> None:
    response = await without_graphiql.get("/graphql", headers=HTML)
    assert response.status in (401, 404)
    text = await response.text()
    assert "graphiql" not in text.lower() and "Content-Security-Policy" not in response.headers
