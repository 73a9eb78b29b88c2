"""What a browser app needs: CORS for listed origins, gzip above 1 KiB, and precise 401s and 405s.

The real app over aiohttp's TestServer, real tokens; the client's automatic Accept-Encoding is
replaced or left out wherever compression matters.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.compression import MIN_BYTES, accepts_gzip
from server.config import ConfigError, Settings
from tests.conftest import ENV, gql, make_token

ORIGIN = "https://dash.example.com"
FOREIGN = "https://evil.example.net"
# Each route opened to browsers, a path on it, and the methods its preflight allows.
ROUTES = [
    ("/graphql", "GET, POST"),
    ("/kpis", "GET"),
    ("/kpis/mttr", "GET"),
    ("/incidents/INC-1/kpis", "GET"),
]
ALLOW_HEADERS = "Authorization, Content-Type, If-None-Match, X-Request-ID"
SMALL = "{ viewer { subject } }"
# Covered by the compiled plans; well over 1 KiB for an admin.
LARGE = """{ kpis { slug name description formula expression units owner dataSources reviewCadence
  version createdAt updatedAt targets { severity persona comparison threshold } } }"""
UPDATE = """mutation { updateKpiDefinition(slug: "mttr", input: {owner: "Someone else"}) {
  version } }"""


def auth(persona: str = "admin", **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(persona)}", **extra}


def vary(response: ClientResponse) -> set[str]:
    """Return every name the answer's Vary headers list."""
    return {name.strip() for h in response.headers.getall("Vary", []) for name in h.split(",")}


def cors_headers(response: ClientResponse) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


@pytest.fixture
async def browsers() -> AsyncIterator[TestClient]:
    """The app with CORS open to ORIGIN and a local dev server."""
    opened = Settings.from_env({**ENV, "MIM_CORS_ORIGINS": f"{ORIGIN}, http://localhost:5173"})
    async with TestClient(TestServer(create_app(opened))) as test_client:
        yield test_client


def preflight_headers(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, if-none-match",
    }


async def actual_request(client: TestClient, route: str, origin: str | None) -> ClientResponse:
    """Send the request a browser app would send on this route, with a valid token."""
    headers = auth() if origin is None else auth(Origin=origin)
    if route == "POST /graphql":
        return await client.post("/graphql", json={"query": SMALL}, headers=headers)
    if route == "GET /graphql":
        return await client.get("/graphql", params={"query": SMALL}, headers=headers)
    return await client.get(route, headers=headers)


ACTUAL = ["POST /graphql", "GET /graphql", "/kpis", "/kpis/mttr", "/incidents/INC-1/kpis"]


# --- CORS: preflights ----------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "methods"), ROUTES)
async def test_a_listed_origins_preflight_is_answered_without_a_token(
    browsers: TestClient, path: str, methods: str
) -> None:
    response = await browsers.options(path, headers=preflight_headers(ORIGIN, methods[:3]))
    assert response.status == 204, await response.text()
    assert await response.read() == b""
    assert cors_headers(response) == {
        "Access-Control-Allow-Origin": ORIGIN,
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Max-Age": "600",
    }
    assert "Origin" in vary(response)
    assert "WWW-Authenticate" not in response.headers


async def test_every_listed_origin_gets_its_own_origin_back(browsers: TestClient) -> None:
    local = "http://localhost:5173"
    response = await browsers.options("/kpis", headers=preflight_headers(local, "GET"))
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == local


@pytest.mark.parametrize(
    "authorization", ["Bearer not-a-token", f"Bearer {make_token(secret='x' * 40)}", "Basic eDp5"]
)
async def test_a_preflight_never_reaches_authentication(
    browsers: TestClient, authorization: str
) -> None:
    # Whatever it carries, a preflight is answered before any token is looked at.
    headers = {**preflight_headers(ORIGIN), "Authorization": authorization}
    response = await browsers.options("/graphql", headers=headers)
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


@pytest.mark.parametrize(
    "origin",
    [
        FOREIGN,
        "https://dash.example.com.evil.example.net",
        "http://dash.example.com",  # another scheme
        "https://dash.example.com:8443",  # another port
        "null",  # a sandboxed frame or a file
    ],
)
@pytest.mark.parametrize(("path", "methods"), ROUTES)
async def test_a_foreign_origins_preflight_gets_what_any_options_request_gets(
    browsers: TestClient, path: str, methods: str, origin: str
) -> None:
    # As if CORS were off: 401 without a token, 405 with one; no CORS header, no echo.
    anonymous = await browsers.options(path, headers=preflight_headers(origin))
    assert anonymous.status == 401
    assert (await anonymous.json())["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    signed = await browsers.options(path, headers={**preflight_headers(origin), **auth()})
    assert signed.status == 405
    for response in (anonymous, signed):
        assert cors_headers(response) == {}
        assert not any(origin in value for value in response.headers.values())


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/no-such-route"])
async def test_a_preflight_to_a_route_not_opened_to_browsers_is_not_answered(
    browsers: TestClient, path: str
) -> None:
    response = await browsers.options(path, headers={**preflight_headers(ORIGIN), **auth()})
    assert response.status in (404, 405)
    assert cors_headers(response) == {}


async def test_a_preflight_without_a_requested_method_is_no_preflight(
    browsers: TestClient,
) -> None:
    response = await browsers.options("/graphql", headers={"Origin": ORIGIN})
    assert response.status == 401
    assert cors_headers(response) == {}


# --- CORS: actual requests -----------------------------------------------------------------------


@pytest.mark.parametrize("route", ACTUAL)
async def test_a_listed_origin_may_read_every_answer_and_its_tag(
    browsers: TestClient, route: str
) -> None:
    response = await actual_request(browsers, route, ORIGIN)
    assert response.status in (200, 404), await response.text()  # INC-1 does not exist
    assert cors_headers(response) == {
        "Access-Control-Allow-Origin": ORIGIN,
        "Access-Control-Expose-Headers": "ETag, X-Request-ID",
    }
    assert "Origin" in vary(response)


async def test_a_listed_origin_may_read_a_401_and_a_304(browsers: TestClient) -> None:
    refused = await browsers.get("/kpis", headers={"Origin": ORIGIN})
    assert refused.status == 401
    assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN
    first = await browsers.get("/kpis", headers=auth(Origin=ORIGIN))
    again = await browsers.get(
        "/kpis", headers=auth(Origin=ORIGIN, **{"If-None-Match": first.headers["ETag"]})
    )
    assert again.status == 304
    assert again.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in vary(again)


@pytest.mark.parametrize("origin", [FOREIGN, "null", None])
@pytest.mark.parametrize("route", ACTUAL)
async def test_any_other_origin_gets_no_cors_header(
    browsers: TestClient, route: str, origin: str | None
) -> None:
    response = await actual_request(browsers, route, origin)
    assert response.status in (200, 404)
    assert cors_headers(response) == {}
    if origin is not None:
        assert not any(origin in value for value in response.headers.values())
    # The answer still varies by origin: a cache must not hand it to a listed one.
    assert "Origin" in vary(response)


@pytest.mark.parametrize("route", ACTUAL)
async def test_without_cors_origins_there_are_no_cors_headers_at_all(
    client: TestClient, route: str
) -> None:
    response = await actual_request(client, route, ORIGIN)
    assert cors_headers(response) == {}
    assert "Origin" not in vary(response)
    preflight = await client.options("/graphql", headers=preflight_headers(ORIGIN))
    assert preflight.status == 401
    assert cors_headers(preflight) == {}


# --- CORS: configuration -------------------------------------------------------------------------


def test_cors_origins_are_off_by_default() -> None:
    assert Settings.from_env(ENV).cors_origins == ()


def test_cors_origins_are_kept_as_browsers_write_them() -> None:
    raw = "HTTPS://Dash.Example.com:443, http://localhost:5173, ,http://localhost:5173,http://[::1]:80"
    settings = Settings.from_env({**ENV, "MIM_CORS_ORIGINS": raw})
    assert settings.cors_origins == (
        "https://dash.example.com",
        "http://localhost:5173",
        "http://[::1]",
    )


@pytest.mark.parametrize(
    "raw",
    [
        "*",
        f"{ORIGIN}, *",
        f"{ORIGIN}/",
        f"{ORIGIN}/app",
        f"{ORIGIN}?x=1",
        "dash.example.com",
        "null",
        "https://*.example.com",
        "https://user@dash.example.com",
        "https://dash.example.com:0",
        "https://dash.example.com:65536",
        "https://",
    ],
)
def test_cors_origins_that_are_no_origins_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="MIM_CORS_ORIGINS"):
        Settings.from_env({**ENV, "MIM_CORS_ORIGINS": raw})


# --- compression ---------------------------------------------------------------------------------


@pytest.fixture
async def executor(settings: Settings) -> AsyncIterator[TestClient]:
    """The app with the compiled plans off: every query runs on the standard executor."""
    async with TestClient(TestServer(create_app(replace(settings, fast_path=False)))) as c:
        yield c


async def fetch(
    client: TestClient, how: str, encoding: str | None, query: str = LARGE, **headers: str
) -> ClientResponse:
    """Send a request with this Accept-Encoding (None: none at all); keep the body as sent."""
    sent = auth(**headers)
    if encoding is not None:
        sent["Accept-Encoding"] = encoding
    options: dict[str, Any] = {"headers": sent, "auto_decompress": False}
    if encoding is None:
        options["skip_auto_headers"] = ["Accept-Encoding"]
    if how == "POST":
        return await client.post("/graphql", json={"query": query}, **options)
    if how == "GET":
        return await client.get("/graphql", params={"query": query}, **options)
    return await client.get(how, **options)


@pytest.mark.parametrize("how", ["POST", "GET", "/kpis"])
@pytest.mark.parametrize("path", ["plans", "executor"])
async def test_a_large_answer_is_gzipped_for_a_client_that_accepts_it(
    client: TestClient, executor: TestClient, how: str, path: str
) -> None:
    app = client if path == "plans" else executor
    plain = await fetch(app, how, "identity")
    identity = await plain.read()
    assert plain.status == 200 and len(identity) > MIN_BYTES
    assert "Content-Encoding" not in plain.headers
    packed = await fetch(app, how, "gzip")
    raw = await packed.read()
    assert packed.status == 200
    assert packed.headers["Content-Encoding"] == "gzip"
    assert int(packed.headers["Content-Length"]) == len(raw) < len(identity)
    assert gzip.decompress(raw) == identity
    assert "Accept-Encoding" in vary(packed) and "Accept-Encoding" in vary(plain)


@pytest.mark.parametrize("how", ["POST", "GET", "/kpis/mttr"])
async def test_a_small_answer_is_not_compressed(client: TestClient, how: str) -> None:
    response = await fetch(client, how, "gzip", SMALL)
    assert response.status == 200
    assert len(await response.read()) <= MIN_BYTES
    assert "Content-Encoding" not in response.headers
    assert "Accept-Encoding" in vary(response)


@pytest.mark.parametrize("encoding", [None, "identity", "gzip;q=0", "br", "deflate", "gzip;q=0, *"])
async def test_a_large_answer_stays_plain_for_a_client_that_does_not_take_gzip(
    client: TestClient, encoding: str | None
) -> None:
    response = await fetch(client, "POST", encoding)
    assert response.status == 200
    assert "Content-Encoding" not in response.headers
    assert len(await response.read()) == int(response.headers["Content-Length"]) > MIN_BYTES


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("GZIP", True),
        ("deflate, gzip;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip;q=0, *", False),
        ("*;q=0", False),
        ("gzip;q=nonsense", False),
        ("br, deflate", False),
        ("", False),
        (None, False),
    ],
)
def test_accept_encoding_is_read_with_its_qualities(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected


@pytest.mark.parametrize("how", ["GET", "/kpis"])
async def test_revalidation_works_for_both_encodings(client: TestClient, how: str) -> None:
    packed = await fetch(client, how, "gzip")
    plain = await fetch(client, how, "identity")
    assert packed.headers["Content-Encoding"] == "gzip"
    weak, strong = packed.headers["ETag"], plain.headers["ETag"]
    # The same answer in two encodings: the compressed one's tag is the weak form of the other.
    assert strong.startswith('"') and weak == f"W/{strong}"
    for encoding, held in [("gzip", weak), ("identity", strong), ("gzip", strong)]:
        same = await fetch(client, how, encoding, **{"If-None-Match": held})
        assert same.status == 304, (encoding, held)
        assert await same.read() == b""
        assert same.headers["ETag"] == held  # the form the caller holds
        assert "Accept-Encoding" in vary(same)
    assert "errors" not in await gql(client, UPDATE)
    for encoding, held in [("gzip", weak), ("identity", strong)]:
        moved = await fetch(client, how, encoding, **{"If-None-Match": held})
        assert moved.status == 200
        assert moved.headers["ETag"].removeprefix("W/") != strong


async def test_a_head_request_announces_the_compressed_length(client: TestClient) -> None:
    get = await fetch(client, "/kpis", "gzip")
    head = await client.head(
        "/kpis", headers=auth(**{"Accept-Encoding": "gzip"}), auto_decompress=False
    )
    assert head.status == 200 and head.headers["Content-Encoding"] == "gzip"
    assert head.headers["Content-Length"] == get.headers["Content-Length"]


# --- 401 and 405 ---------------------------------------------------------------------------------

BARE = 'Bearer realm="mim"'
INVALID = 'Bearer realm="mim", error="invalid_token"'


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, BARE),
        ("", BARE),
        ("Bearer", BARE),
        ("Bearer   ", BARE),
        ("Basic dXNlcjpwYXNz", BARE),  # another scheme: no token was sent
        ("Bearer garbage", INVALID),
        ("bearer a.b.c", INVALID),
        (f"Bearer {make_token(secret='another-secret-that-is-long-enough-0123456789')}", INVALID),
        (f"Bearer {make_token(ttl=-3600)}", INVALID),
        (f"Bearer {make_token(sub=None)}", INVALID),
        ("Bearer " + "x" * 20000, INVALID),
    ],
)
@pytest.mark.parametrize("path", ["/graphql", "/kpis"])
async def test_a_401_says_invalid_token_only_when_a_token_was_sent(
    client: TestClient, path: str, authorization: str | None, challenge: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await client.post(path, json={"query": SMALL}, headers=headers)
    anonymous = await client.post(path, json={"query": SMALL})
    assert response.status == anonymous.status == 401
    assert response.headers["WWW-Authenticate"] == challenge
    # Whatever was wrong, the one same body.
    assert await response.read() == await anonymous.read()


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/graphql", "GET,POST"),
        ("DELETE", "/graphql", "GET,POST"),
        ("POST", "/kpis", "GET,HEAD"),
        ("PATCH", "/kpis/mttr", "GET,HEAD"),
        ("OPTIONS", "/incidents/INC-1/kpis", "GET,HEAD"),
    ],
)
async def test_a_405_names_the_methods_the_route_has(
    client: TestClient, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path, headers=auth())
    assert response.status == 405
    assert response.headers["Allow"] == allowed
    assert response.content_type == "application/json"
    body = await response.json()
    assert [e["extensions"]["code"] for e in body["errors"]] == ["METHOD_NOT_ALLOWED"]
