"""Bearer tokens: every forged, stale or malformed token gets one and the same 401, on every path.

Real HTTP through aiohttp's TestClient, real signed tokens (HS256, RS256, ES256), no mocks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from server.app import create_app
from server.auth import MAX_TOKEN_BYTES, VERIFIED_TOKENS, TokenVerifier
from server.config import ConfigError, Settings
from tests.conftest import COUNTS, ENV, TEST_SECRET, make_token

pytestmark = pytest.mark.security


VIEWER_QUERY = "{ viewer { subject personas } }"
OTHER_SECRET = "another-secret-that-is-also-long-enough-0123456789"
ISSUER = "https://idp.example.com/"
AUDIENCE = "mim-api"


# --- token crafting ----------------------------------------------------------------------------


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def claims(**extra: Any) -> dict[str, Any]:
    """Return valid claims for an admin token, overridden by `extra` (None drops a claim)."""
    now = int(time.time())
    found: dict[str, Any] = {"sub": "tester", "persona": "admin", "iat": now, "exp": now + 600}
    found.update(extra)
    return {k: v for k, v in found.items() if v is not None}


def hmac_signed(
    payload: dict[str, Any],
    key: bytes = TEST_SECRET.encode(),
    alg: str = "HS256",
    header: dict[str, Any] | None = None,
) -> str:
    """Sign by hand, so that PyJWT's own checks on what it signs cannot interfere.

    `header` adds fields to the JOSE header or, with None, drops them.
    """
    fields = {"alg": alg, "typ": "JWT", **(header or {})}
    head = b64url_json({k: v for k, v in fields.items() if v is not None})
    signing_input = f"{head}.{b64url_json(payload)}"
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def raw_signed(header: str, payload: str) -> str:
    """Sign JSON texts as written (so they may repeat a key), with the right secret."""
    signing_input = f"{b64url(header.encode())}.{b64url(payload.encode())}"
    signature = hmac.new(TEST_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def repeated_key(field: str, first: Any, last: Any) -> str:
    """A correctly signed token whose payload names `field` twice; PyJWT would take the last."""
    payload = json.dumps(claims())[:-1] + f", {json.dumps(field)}: {json.dumps(first)}, "
    payload += f"{json.dumps(field)}: {json.dumps(last)}}}"
    return raw_signed('{"alg":"HS256","typ":"JWT"}', payload)


def alg_none(payload: dict[str, Any], alg: str = "none") -> str:
    return f"{b64url_json({'alg': alg, 'typ': 'JWT'})}.{b64url_json(payload)}."


def with_header(**fields: Any) -> dict[str, str]:
    """A valid admin token, signed with the right secret, whose header also carries `fields`.

    The signature is good, so the header alone must sink it.
    """
    return bearer(hmac_signed(claims(), header=fields))


def over_the_size_limit() -> str:
    """Return the shortest correctly signed token longer than the service's limit."""
    for pad in range(5500, 7000):
        token = hmac_signed(claims(pad="x" * pad))
        if len(token) > MAX_TOKEN_BYTES:
            return token
    raise AssertionError("no pad length crosses the limit")


def tampered() -> str:
    """An exec token whose payload now says admin, with the exec token's signature kept."""
    head, _, signature = make_token("exec").split(".")
    return f"{head}.{b64url_json(claims(persona='admin'))}.{signature}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Each attack returns the request headers; built at call time so that clocks are current.
ATTACKS: dict[str, Callable[[], dict[str, str]]] = {
    "no-authorization-header": lambda: {},
    "bearer-without-token": lambda: {"Authorization": "Bearer"},
    "bearer-with-blank-token": lambda: {"Authorization": "Bearer    "},
    "basic-scheme": lambda: {"Authorization": "Basic dGVzdGVyOmh1bnRlcjI="},
    "basic-scheme-with-valid-jwt": lambda: {"Authorization": f"Basic {make_token()}"},
    "token-without-scheme": lambda: {"Authorization": make_token()},
    "garbage-token": lambda: bearer("not-a-jwt-at-all"),
    "garbage-three-segments": lambda: bearer("aaaa.bbbb.cccc"),
    "wrong-secret": lambda: bearer(make_token(secret=OTHER_SECRET)),
    "alg-none": lambda: bearer(alg_none(claims())),
    "alg-none-with-signature": lambda: bearer(alg_none(claims()) + b64url(b"sig")),
    "alg-hs512-not-allowed": lambda: bearer(hmac_signed(claims(), alg="HS512")),
    "expired-beyond-leeway": lambda: bearer(make_token(ttl=-120)),
    # Lifetimes beyond MIM_JWT_MAX_TTL (a day by default): a standing key if stolen.
    "exp-a-year-ahead": lambda: bearer(make_token(ttl=365 * DAY)),
    "exp-a-day-and-a-minute-ahead-without-iat": lambda: bearer(
        hmac_signed(claims(iat=None, exp=int(time.time()) + DAY + 90))
    ),
    "issued-two-hours-ago-for-25-hours": lambda: bearer(
        hmac_signed(claims(iat=int(time.time()) - 2 * 3600, exp=int(time.time()) + 23 * 3600))
    ),
    "not-before-in-future-beyond-leeway": lambda: bearer(make_token(nbf=int(time.time()) + 300)),
    "missing-sub": lambda: bearer(make_token(sub=None)),
    "empty-sub": lambda: bearer(make_token(sub="")),
    "non-string-sub": lambda: bearer(hmac_signed(claims(sub=12345))),
    "missing-exp": lambda: bearer(hmac_signed(claims(exp=None))),
    "non-numeric-exp": lambda: bearer(hmac_signed(claims(exp="tomorrow"))),
    "tampered-payload": lambda: bearer(tampered()),
    "signature-stripped": lambda: bearer(make_token().rsplit(".", 1)[0] + "."),
    # alg: none in any spelling, missing, or not a string.
    "alg-none-uppercase": lambda: bearer(alg_none(claims(), alg="NONE")),
    "alg-none-capitalised": lambda: bearer(alg_none(claims(), alg="None")),
    "alg-missing": lambda: with_header(alg=None),
    "alg-not-a-string": lambda: with_header(alg=["HS256"]),
    # NumericDate claims that PyJWT would coerce with int(): a JSON number or nothing.
    "numeric-string-exp": lambda: bearer(hmac_signed(claims(exp=str(int(time.time()) + 600)))),
    "boolean-exp": lambda: bearer(hmac_signed(claims(exp=True))),
    "nan-exp": lambda: bearer(hmac_signed(claims(exp=float("nan")))),
    "infinite-exp": lambda: bearer(hmac_signed(claims(exp=float("inf")))),
    "null-exp": lambda: bearer(hmac_signed({**claims(), "exp": None})),
    "numeric-string-nbf": lambda: bearer(hmac_signed(claims(nbf="0"))),
    "numeric-string-iat": lambda: bearer(hmac_signed(claims(iat="0"))),
    "blank-sub": lambda: bearer(make_token(sub="   ")),
    "list-sub": lambda: bearer(hmac_signed(claims(sub=["tester"]))),
    # Numbers too large to be dates, and subjects the audit trail cannot store: refused, not 500.
    "huge-integer-exp": lambda: bearer(hmac_signed(claims(exp=10**400))),
    "huge-integer-iat": lambda: bearer(hmac_signed(claims(iat=10**400))),
    "huge-integer-nbf": lambda: bearer(hmac_signed(claims(nbf=10**400))),
    "exp-after-year-9999": lambda: bearer(hmac_signed(claims(exp=253_402_300_800))),
    "negative-iat": lambda: bearer(hmac_signed(claims(iat=-1))),
    "lone-surrogate-sub": lambda: bearer(hmac_signed(claims(sub="tester\ud800"))),
    "control-character-sub": lambda: bearer(hmac_signed(claims(sub="tester\nadmin"))),
    "over-long-sub": lambda: bearer(hmac_signed(claims(sub="s" * 201))),
    # A key named twice: readers disagree on which one counts, so the token counts for nothing.
    "duplicate-alg-in-header": lambda: bearer(
        raw_signed('{"alg":"none","alg":"HS256","typ":"JWT"}', json.dumps(claims()))
    ),
    "duplicate-persona-in-payload": lambda: bearer(repeated_key("persona", "exec", "admin")),
    "duplicate-sub-in-payload": lambda: bearer(repeated_key("sub", "someone", "tester")),
    # crit: the service implements no extension, not even the b64 one PyJWT accepts.
    "crit-b64-that-pyjwt-accepts": lambda: with_header(crit=["b64"], b64=True),
    "crit-unknown-extension": lambda: with_header(crit=["exp"], exp=1),
    "crit-empty": lambda: with_header(crit=[]),
    "crit-not-a-list": lambda: with_header(crit="exp"),
    # Keys come from configuration only, never from the token.
    "jku-pointing-elsewhere": lambda: with_header(jku="https://evil.example.com/jwks.json"),
    "x5u-pointing-elsewhere": lambda: with_header(x5u="https://evil.example.com/cert.pem"),
    "x5c-embedded-chain": lambda: with_header(x5c=["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"]),
    "jwk-embedded-key": lambda: with_header(jwk={"kty": "oct", "k": b64url(TEST_SECRET.encode())}),
    # A kid names a configured key; it is never a path, URL or query.
    "kid-path-traversal": lambda: with_header(kid="../../../../etc/passwd"),
    "kid-absolute-path": lambda: with_header(kid="/dev/null"),
    "kid-windows-path": lambda: with_header(kid="..\\..\\keys\\hs256"),
    "kid-dot-dot": lambda: with_header(kid=".."),
    "kid-url": lambda: with_header(kid="https://evil.example.com/key"),
    "kid-sql": lambda: with_header(kid="x' UNION SELECT 'secret"),
    "kid-too-long": lambda: with_header(kid="k" * 129),
    "kid-empty": lambda: with_header(kid=""),
    "kid-not-a-string": lambda: with_header(kid=42),
    # Malformed or oversized compact forms.
    "two-tokens": lambda: bearer(f"{make_token()} {make_token()}"),
    "non-ascii-token": lambda: bearer("\u2603.\u2603.\u2603"),
    "oversized-just-over-the-limit": lambda: bearer(over_the_size_limit()),
}


# Tokens over 8 KiB are refused by the service; one that size also no longer fits aiohttp's
# default 8190-byte header limit, so the request never reaches the service's middleware.
def oversized() -> dict[str, str]:
    return bearer(make_token(pad="x" * 9000))


PATHS: dict[str, tuple[str, str]] = {
    "post-graphql": ("POST", "/graphql"),
    "get-graphql": ("GET", "/graphql"),
    "rest-kpis": ("GET", "/kpis"),
    "rest-kpi": ("GET", "/kpis/mttr"),
    "rest-incident-kpis": ("GET", "/incidents/INC-1/kpis"),
}


async def call(client: TestClient, path: str, headers: dict[str, str]) -> ClientResponse:
    method, url = PATHS[path]
    if method == "POST":
        return await client.post(url, json={"query": VIEWER_QUERY}, headers=headers)
    params = {"query": VIEWER_QUERY} if url == "/graphql" else None
    return await client.get(url, params=params, headers=headers)


async def reference_401(client: TestClient) -> str:
    """Return the body of the plainest failure: a request with no Authorization header."""
    response = await client.post("/graphql", json={"query": VIEWER_QUERY})
    assert response.status == 401
    return await response.text()


async def assert_unauthenticated(
    client: TestClient, response: ClientResponse, path: str = "post-graphql"
) -> None:
    text = await response.text()
    assert response.status == 401, f"{path}: {text}"
    assert response.content_type == "application/json", path
    body = json.loads(text)
    assert set(body) == {"errors"}, f"{path}: a refused request carries no data"
    [error] = body["errors"]
    assert set(error) == {"message", "extensions"}, path
    assert isinstance(error["message"], str) and error["message"], path
    assert error["extensions"] == {"code": "UNAUTHENTICATED"}, path
    assert text == await reference_401(client), f"{path}: every failure must give the same body"
    COUNTS["tokens tried and rejected"] += 1


async def graphql_viewer(client: TestClient, token: str) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": VIEWER_QUERY}, headers=bearer(token))
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


# --- the attack set ------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS)
async def test_bad_token_is_refused_with_the_one_unauthenticated_body_on_every_path(
    client: TestClient, attack: str
) -> None:
    for path in PATHS:
        response = await call(client, path, ATTACKS[attack]())
        await assert_unauthenticated(client, response, path)


async def test_oversized_token_is_refused_with_the_one_unauthenticated_body_on_every_path(
    client: TestClient,
) -> None:
    for path in PATHS:
        response = await call(client, path, oversized())
        await assert_unauthenticated(client, response, path)


async def test_oversized_token_never_reaches_the_data(client: TestClient) -> None:
    response = await call(client, "post-graphql", oversized())
    assert response.status in (400, 401, 431)
    assert "tester" not in await response.text()


async def test_valid_token_is_accepted_on_every_path(client: TestClient) -> None:
    token = make_token("admin")
    created = await client.post(
        "/graphql",
        json={
            "query": 'mutation { upsertIncident(input: {id: "INC-1", title: "t", severity: P1, '
            'detectedAt: "2026-01-01T00:00:00Z"}) { id } }'
        },
        headers=bearer(token),
    )
    assert (await created.json())["data"]["upsertIncident"]["id"] == "INC-1"
    for path in PATHS:
        response = await call(client, path, bearer(token))
        assert response.status == 200, f"{path}: {await response.text()}"
        assert "errors" not in await response.json(), path


async def test_lowercase_bearer_scheme_is_accepted(client: TestClient) -> None:
    response = await client.post(
        "/graphql",
        json={"query": VIEWER_QUERY},
        headers={"Authorization": f"bearer {make_token()}"},
    )
    assert response.status == 200
    assert (await response.json())["data"]["viewer"]["subject"] == "tester"


async def test_token_expired_within_the_leeway_is_still_accepted(client: TestClient) -> None:
    body = await graphql_viewer(client, make_token("responder", ttl=-10))
    assert body["data"]["viewer"] == {"subject": "tester", "personas": ["RESPONDER"]}


async def test_token_not_yet_valid_within_the_leeway_is_accepted(client: TestClient) -> None:
    body = await graphql_viewer(client, make_token("exec", nbf=int(time.time()) + 10))
    assert body["data"]["viewer"] == {"subject": "tester", "personas": ["EXEC"]}


async def test_hand_signed_token_with_the_right_secret_is_accepted(client: TestClient) -> None:
    # The control for the hand-crafted attacks: the crafting itself yields valid tokens.
    body = await graphql_viewer(client, hmac_signed(claims(persona="stakeholder")))
    assert body["data"]["viewer"]["personas"] == ["STAKEHOLDER"]


async def test_401_response_asks_for_a_bearer_token(client: TestClient) -> None:
    response = await client.get("/kpis")
    assert response.status == 401
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")


async def test_token_just_under_the_size_limit_is_accepted(client: TestClient) -> None:
    # The control for oversized-just-over-the-limit: one byte less is an ordinary token.
    over = over_the_size_limit()
    for pad in range(5500, 7000):
        token = hmac_signed(claims(pad="x" * pad))
        if len(token) > MAX_TOKEN_BYTES:
            break
        under = token
    assert len(under) <= MAX_TOKEN_BYTES < len(over)
    body = await graphql_viewer(client, under)
    assert body["data"]["viewer"]["subject"] == "tester"


# --- both sides of the leeway --------------------------------------------------------------------

LEEWAY = 60  # not the default, so that the setting is seen to be honoured
MARGIN = 10  # seconds either side of the boundary, so that slow runs cannot flip a case


@pytest.fixture
async def leeway_client() -> AsyncIterator[TestClient]:
    settings = Settings.from_env({**ENV, "MIM_JWT_LEEWAY": str(LEEWAY)})
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


def shifted(claim: str, seconds: int) -> dict[str, Any]:
    """Return valid claims with `claim` set `seconds` from now (exp keeps nothing else late)."""
    now = int(time.time())
    return claims(**{claim: now + seconds})


# --- verified tokens are remembered, never beyond their expiry ---------------------------------


@pytest.fixture
async def no_leeway_client() -> AsyncIterator[TestClient]:
    settings = Settings.from_env({**ENV, "MIM_JWT_LEEWAY": "0"})
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


async def test_remembered_token_is_refused_once_it_expires(no_leeway_client: TestClient) -> None:
    expires = int(time.time()) + 2
    token = hmac_signed(claims(exp=expires))
    body = await graphql_viewer(no_leeway_client, token)
    assert body["data"]["viewer"]["subject"] == "tester"
    while time.time() < expires + 0.05:
        await asyncio.sleep(0.05)
    response = await call(no_leeway_client, "post-graphql", bearer(token))
    await assert_unauthenticated(no_leeway_client, response)


async def test_remembered_token_with_another_signature_is_refused(client: TestClient) -> None:
    token = hmac_signed(claims())
    assert (await graphql_viewer(client, token))["data"]["viewer"]["subject"] == "tester"
    head, payload, _ = token.split(".")
    forged = f"{head}.{payload}.{b64url(b'not the signature')}"
    for path in PATHS:
        response = await call(client, path, bearer(forged))
        await assert_unauthenticated(client, response, path)


def test_verifier_forgets_the_least_recently_used_tokens_beyond_its_bound(
    settings: Settings,
) -> None:
    verifier = TokenVerifier(settings)
    tokens = [make_token("exec", sub=f"user-{n}") for n in range(VERIFIED_TOKENS + 10)]

    async def verify_all() -> None:
        for token in tokens:
            await verifier.viewer(f"Bearer {token}")

    asyncio.run(verify_all())
    assert len(verifier._verified) == VERIFIED_TOKENS
    assert tokens[0] not in verifier._verified and tokens[-1] in verifier._verified


@pytest.mark.parametrize(
    ("claim", "seconds"),
    [
        pytest.param("exp", -(LEEWAY + MARGIN), id="expired-just-beyond-the-leeway"),
        pytest.param("nbf", LEEWAY + MARGIN, id="not-before-just-beyond-the-leeway"),
        pytest.param("iat", LEEWAY + MARGIN, id="issued-in-the-future-beyond-the-leeway"),
    ],
)
async def test_time_claim_just_beyond_the_leeway_is_refused(
    leeway_client: TestClient, claim: str, seconds: int
) -> None:
    token = bearer(hmac_signed(shifted(claim, seconds)))
    for path in ("post-graphql", "rest-kpis"):
        response = await call(leeway_client, path, token)
        await assert_unauthenticated(leeway_client, response, path)


@pytest.mark.parametrize(
    ("claim", "seconds"),
    [
        pytest.param("exp", -(LEEWAY - MARGIN), id="expired-just-within-the-leeway"),
        pytest.param("nbf", LEEWAY - MARGIN, id="not-before-just-within-the-leeway"),
        pytest.param("iat", LEEWAY - MARGIN, id="issued-in-the-future-within-the-leeway"),
    ],
)
async def test_time_claim_just_within_the_leeway_is_accepted(
    leeway_client: TestClient, claim: str, seconds: int
) -> None:
    body = await graphql_viewer(leeway_client, hmac_signed(shifted(claim, seconds)))
    assert body["data"]["viewer"]["subject"] == "tester"


# --- the longest lifetime ------------------------------------------------------------------------

DAY = 86400
MAX_TTL = 3600  # not the default, so that the setting is seen to be honoured


@pytest.fixture
async def max_ttl_client() -> AsyncIterator[TestClient]:
    settings = Settings.from_env({**ENV, "MIM_JWT_MAX_TTL": str(MAX_TTL)})
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


def lifetime(*, issued: int | None, expires: int) -> str:
    """Return a token issued `issued` seconds from now (None: no iat), expiring in `expires`."""
    now = int(time.time())
    return hmac_signed(claims(iat=None if issued is None else now + issued, exp=now + expires))


@pytest.mark.parametrize(
    ("issued", "expires"),
    [
        pytest.param(None, MAX_TTL + 30 + MARGIN, id="exp-beyond-max-ttl-and-leeway-no-iat"),
        pytest.param(0, MAX_TTL + MARGIN, id="issued-now-for-longer-than-max-ttl"),
        pytest.param(-1800, 1800 + MARGIN, id="issued-earlier-for-longer-than-max-ttl"),
        pytest.param(-30 * DAY, 60, id="issued-a-month-ago-expiring-in-a-minute"),
    ],
)
async def test_token_living_longer_than_the_max_ttl_is_refused(
    max_ttl_client: TestClient, issued: int | None, expires: int
) -> None:
    token = bearer(lifetime(issued=issued, expires=expires))
    reference = await reference_401(max_ttl_client)
    for path in PATHS:
        response = await call(max_ttl_client, path, token)
        await assert_unauthenticated(max_ttl_client, response, path)
        assert await response.text() == reference, f"{path}: the same 401 as every bad token"


@pytest.mark.parametrize(
    ("issued", "expires"),
    [
        pytest.param(None, MAX_TTL - MARGIN, id="exp-within-max-ttl-no-iat"),
        pytest.param(0, MAX_TTL - MARGIN, id="issued-now-within-max-ttl"),
        pytest.param(-1800, 1800 - MARGIN, id="issued-earlier-within-max-ttl"),
    ],
)
async def test_token_living_within_the_max_ttl_is_accepted(
    max_ttl_client: TestClient, issued: int | None, expires: int
) -> None:
    body = await graphql_viewer(max_ttl_client, lifetime(issued=issued, expires=expires))
    assert body["data"]["viewer"]["subject"] == "tester"


async def test_default_max_ttl_is_a_day(client: TestClient) -> None:
    within = lifetime(issued=0, expires=DAY - MARGIN)
    assert (await graphql_viewer(client, within))["data"]["viewer"]["subject"] == "tester"
    beyond = bearer(lifetime(issued=0, expires=DAY + MARGIN))
    await assert_unauthenticated(client, await call(client, "post-graphql", beyond))


@pytest.mark.parametrize("raw", ["59", "31708801", "a day", "-1", "1.5"])
def test_max_ttl_outside_its_range_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="MIM_JWT_MAX_TTL"):
        Settings.from_env({**ENV, "MIM_JWT_MAX_TTL": raw})


# --- issuer and audience -------------------------------------------------------------------------


@pytest.fixture
async def iss_aud_client() -> AsyncIterator[TestClient]:
    settings = Settings.from_env({**ENV, "MIM_JWT_ISSUER": ISSUER, "MIM_JWT_AUDIENCE": AUDIENCE})
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"iss": "https://evil.example.com/", "aud": AUDIENCE}, id="wrong-issuer"),
        pytest.param({"aud": AUDIENCE}, id="missing-issuer"),
        pytest.param({"iss": ISSUER, "aud": "someone-else"}, id="wrong-audience"),
        pytest.param({"iss": ISSUER}, id="missing-audience"),
        pytest.param({"iss": ISSUER, "aud": ["someone-else", "x"]}, id="audience-list-without-us"),
        pytest.param({"iss": ISSUER, "aud": AUDIENCE + "-evil"}, id="audience-with-suffix"),
        pytest.param({"iss": ISSUER, "aud": AUDIENCE[:-1]}, id="audience-prefix"),
        pytest.param({"iss": ISSUER + "evil", "aud": AUDIENCE}, id="issuer-with-suffix"),
    ],
)
async def test_issuer_and_audience_are_enforced_when_configured(
    iss_aud_client: TestClient, extra: dict[str, Any]
) -> None:
    for path in ("post-graphql", "rest-kpis"):
        response = await call(iss_aud_client, path, bearer(make_token("admin", **extra)))
        await assert_unauthenticated(iss_aud_client, response, path)


@pytest.mark.parametrize(
    "aud", [pytest.param(AUDIENCE, id="string"), pytest.param(["other", AUDIENCE], id="list")]
)
async def test_right_issuer_and_audience_are_accepted(iss_aud_client: TestClient, aud: Any) -> None:
    body = await graphql_viewer(iss_aud_client, make_token("ingest", iss=ISSUER, aud=aud))
    assert body["data"]["viewer"] == {"subject": "tester", "personas": ["INGEST"]}


async def test_audience_is_not_checked_when_not_configured(client: TestClient) -> None:
    body = await graphql_viewer(client, make_token("admin", iss="anyone", aud="anything"))
    assert body["data"]["viewer"]["personas"] == ["ADMIN"]


EXACT_ISSUER = "https://id.example.com"


@pytest.fixture
async def issuer_client() -> AsyncIterator[TestClient]:
    settings = Settings.from_env({**ENV, "MIM_JWT_ISSUER": EXACT_ISSUER})
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "iss",
    [
        pytest.param("https://id.example.com.evil", id="configured-issuer-as-prefix"),
        pytest.param("https://id.example", id="prefix-of-the-configured-issuer"),
        pytest.param("https://id.example.com/", id="trailing-slash"),
        pytest.param("https://id.example.com ", id="trailing-space"),
        pytest.param("HTTPS://ID.EXAMPLE.COM", id="other-case"),
        pytest.param("https://evil.example/https://id.example.com", id="configured-as-suffix"),
        pytest.param("id.example.com", id="substring"),
        pytest.param("", id="empty"),
        pytest.param([EXACT_ISSUER], id="list-holding-the-issuer"),
        pytest.param({"iss": EXACT_ISSUER}, id="object"),
    ],
)
async def test_issuer_must_match_exactly(issuer_client: TestClient, iss: Any) -> None:
    token = bearer(hmac_signed(claims(iss=iss)))
    for path in ("post-graphql", "rest-kpis"):
        response = await call(issuer_client, path, token)
        await assert_unauthenticated(issuer_client, response, path)


async def test_exact_issuer_is_accepted(issuer_client: TestClient) -> None:
    body = await graphql_viewer(issuer_client, make_token("exec", iss=EXACT_ISSUER))
    assert body["data"]["viewer"]["personas"] == ["EXEC"]


# --- public keys: RS256 and ES256 ---------------------------------------------------------------


def pem_public(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_key_env(path: Path) -> dict[str, str]:
    env = {k: v for k, v in ENV.items() if k != "MIM_JWT_SECRET"}
    return {**env, "MIM_JWT_PUBLIC_KEY": str(path)}


@pytest.fixture
async def rsa_client(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> AsyncIterator[TestClient]:
    path = tmp_path / "rsa.pem"
    path.write_bytes(pem_public(rsa_key))
    settings = Settings.from_env(public_key_env(path))
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


@pytest.fixture
async def ec_client(
    ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> AsyncIterator[TestClient]:
    path = tmp_path / "ec.pem"
    path.write_bytes(pem_public(ec_key))
    settings = Settings.from_env(public_key_env(path))
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


async def test_rs256_token_signed_by_the_configured_key_is_accepted(
    rsa_client: TestClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(persona="responder"), rsa_key, algorithm="RS256")
    body = await graphql_viewer(rsa_client, token)
    assert body["data"]["viewer"] == {"subject": "tester", "personas": ["RESPONDER"]}


async def test_rs256_token_signed_by_another_key_is_refused(rsa_client: TestClient) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), other, algorithm="RS256")
    await assert_unauthenticated(rsa_client, await call(rsa_client, "post-graphql", bearer(token)))


async def test_hs256_token_signed_with_the_public_key_pem_is_refused(
    rsa_client: TestClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    # The algorithm-confusion attack: the public key is public, so anyone can HMAC with it.
    token = hmac_signed(claims(), key=pem_public(rsa_key))
    for path in PATHS:
        response = await call(rsa_client, path, bearer(token))
        await assert_unauthenticated(rsa_client, response, path)


async def test_hs256_token_signed_with_the_app_secret_is_refused_by_a_public_key_app(
    rsa_client: TestClient,
) -> None:
    response = await call(rsa_client, "post-graphql", bearer(make_token()))
    await assert_unauthenticated(rsa_client, response)


async def test_alg_none_token_is_refused_by_a_public_key_app(rsa_client: TestClient) -> None:
    response = await call(rsa_client, "rest-kpis", bearer(alg_none(claims())))
    await assert_unauthenticated(rsa_client, response)


async def test_es256_token_signed_by_the_configured_key_is_accepted(
    ec_client: TestClient, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = jwt.encode(claims(persona="stakeholder"), ec_key, algorithm="ES256")
    body = await graphql_viewer(ec_client, token)
    assert body["data"]["viewer"] == {"subject": "tester", "personas": ["STAKEHOLDER"]}


async def test_es256_token_signed_by_another_key_is_refused(ec_client: TestClient) -> None:
    token = jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    await assert_unauthenticated(ec_client, await call(ec_client, "post-graphql", bearer(token)))


async def test_es256_token_is_refused_with_401_by_an_rsa_key_app(rsa_client: TestClient) -> None:
    token = jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    await assert_unauthenticated(rsa_client, await call(rsa_client, "post-graphql", bearer(token)))


async def test_rs256_token_is_refused_with_401_by_an_ec_key_app(
    ec_client: TestClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    await assert_unauthenticated(ec_client, await call(ec_client, "post-graphql", bearer(token)))


def public_key_encodings(private_key: Any) -> dict[str, bytes]:
    """The public key as an attacker may HMAC with it: every form it could be stored in."""
    public = private_key.public_key()
    enc, fmt = serialization.Encoding, serialization.PublicFormat
    return {
        "spki-pem": pem_public(private_key),
        "spki-pem-stripped": pem_public(private_key).strip(),
        "pkcs1-pem": public.public_bytes(enc.PEM, fmt.PKCS1),
        "spki-der": public.public_bytes(enc.DER, fmt.SubjectPublicKeyInfo),
        "openssh": public.public_bytes(enc.OpenSSH, fmt.OpenSSH),
    }


@pytest.fixture
async def rs256_only_client(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> AsyncIterator[TestClient]:
    path = tmp_path / "rsa.pem"
    path.write_bytes(pem_public(rsa_key))
    settings = Settings.from_env({**public_key_env(path), "MIM_JWT_ALGORITHMS": "RS256"})
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


@pytest.mark.parametrize("alg", ["HS256", "HS512"])
async def test_hmac_token_keyed_with_any_form_of_the_rs256_public_key_is_refused(
    rs256_only_client: TestClient, rsa_key: rsa.RSAPrivateKey, alg: str
) -> None:
    for form, key in public_key_encodings(rsa_key).items():
        token = bearer(hmac_signed(claims(), key=key, alg=alg))
        for path in ("post-graphql", "rest-kpis"):
            response = await call(rs256_only_client, path, token)
            await assert_unauthenticated(rs256_only_client, response, f"{form} on {path}")


def rsa_signed(private_key: rsa.RSAPrivateKey, header: dict[str, Any]) -> str:
    """Sign RS256 by hand, so that PyJWT's encoder cannot rewrite the header."""
    signing_input = (
        f"{b64url_json({'alg': 'RS256', 'typ': 'JWT', **header})}.{b64url_json(claims())}"
    )
    signature = private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param({"crit": ["b64"], "b64": True}, id="crit-b64"),
        pytest.param({"crit": ["exp"], "exp": 1}, id="crit-unknown"),
        pytest.param({"jku": "https://evil.example.com/jwks.json"}, id="jku"),
        pytest.param({"x5u": "https://evil.example.com/cert.pem"}, id="x5u"),
        pytest.param({"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"]}, id="x5c"),
        pytest.param({"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}, id="jwk"),
        pytest.param({"kid": "../../../etc/passwd"}, id="kid-path"),
        pytest.param({"kid": "k" * 129}, id="kid-too-long"),
    ],
)
async def test_rs256_token_with_a_refused_header_is_refused_despite_a_good_signature(
    rsa_client: TestClient, rsa_key: rsa.RSAPrivateKey, header: dict[str, Any]
) -> None:
    token = bearer(rsa_signed(rsa_key, header))
    for path in ("post-graphql", "rest-kpis"):
        response = await call(rsa_client, path, token)
        await assert_unauthenticated(rsa_client, response, path)


async def test_hand_signed_rs256_token_with_a_plain_kid_is_accepted(
    rsa_client: TestClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    # The control for the hand-signed headers above.
    body = await graphql_viewer(rsa_client, rsa_signed(rsa_key, {"kid": "rsa-2026_01.key"}))
    assert body["data"]["viewer"]["personas"] == ["ADMIN"]


# --- the persona claim path ----------------------------------------------------------------------


@pytest.fixture
async def namespaced_client() -> AsyncIterator[TestClient]:
    settings = Settings.from_env(
        {**ENV, "MIM_JWT_PERSONA_CLAIM": "https://example.com/claims.persona"}
    )
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


async def test_persona_is_read_from_a_nested_namespaced_claim(
    namespaced_client: TestClient,
) -> None:
    token = make_token(None, **{"https://example.com/claims": {"persona": "responder"}})
    body = await graphql_viewer(namespaced_client, token)
    assert body["data"]["viewer"] == {"subject": "tester", "personas": ["RESPONDER"]}


async def test_persona_is_read_from_a_flat_namespaced_claim(namespaced_client: TestClient) -> None:
    token = make_token(None, **{"https://example.com/claims.persona": ["responder", "exec"]})
    body = await graphql_viewer(namespaced_client, token)
    assert body["data"]["viewer"]["personas"] == ["EXEC", "RESPONDER"]


async def test_plain_persona_claim_is_ignored_when_another_claim_is_configured(
    namespaced_client: TestClient,
) -> None:
    body = await graphql_viewer(namespaced_client, make_token("admin"))
    assert body["data"] == {"viewer": None}
    assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]


@pytest.mark.parametrize(
    "persona",
    [
        pytest.param("EXEC", id="upper-case"),
        pytest.param("Admin", id="capitalised"),
        pytest.param("sta\u212aeholder", id="kelvin-sign-that-folds-to-k"),
        pytest.param(" exec", id="leading-space"),
    ],
)
async def test_persona_names_match_exactly_or_name_nothing(
    client: TestClient, persona: str
) -> None:
    body = await graphql_viewer(client, make_token(persona))
    assert body["data"] == {"viewer": None}
    assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]
    kpis = await client.get("/kpis", headers=bearer(make_token(persona)))
    assert kpis.status == 403, await kpis.text()


# --- configurations the service refuses ----------------------------------------------------------


def test_secret_shorter_than_32_bytes_is_refused() -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({**ENV, "MIM_JWT_SECRET": "x" * 31})


def test_secret_of_32_bytes_is_accepted() -> None:
    assert Settings.from_env({**ENV, "MIM_JWT_SECRET": "x" * 32}).jwt_secret == "x" * 32


@pytest.mark.parametrize("algorithms", ["none", "HS256,none", "None", "NONE", "", " , "])
def test_algorithm_list_naming_none_or_nothing_is_refused(algorithms: str) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({**ENV, "MIM_JWT_ALGORITHMS": algorithms})


def test_secret_with_an_asymmetric_algorithm_is_refused() -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({**ENV, "MIM_JWT_ALGORITHMS": "RS256"})


def test_secret_and_public_key_together_are_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(pem_public(rsa_key))
    with pytest.raises(ConfigError):
        Settings.from_env({**ENV, "MIM_JWT_PUBLIC_KEY": str(path)})


@pytest.mark.parametrize("algorithms", ["HS256", "RS256,HS256", "ES256,HS512"])
def test_public_key_with_an_hmac_algorithm_is_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, algorithms: str
) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(pem_public(rsa_key))
    with pytest.raises(ConfigError):
        Settings.from_env({**public_key_env(path), "MIM_JWT_ALGORITHMS": algorithms})


def test_public_key_alone_defaults_to_asymmetric_algorithms(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(pem_public(rsa_key))
    settings = Settings.from_env(public_key_env(path))
    assert settings.jwt_secret is None
    assert set(settings.jwt_algorithms) == {"RS256", "ES256"}


# Settings.from_env refuses most bad set-ups; the verifier refuses the rest, and any Settings
# built by other means, when the app is created.


def test_verifier_refuses_a_secret_shorter_than_32_bytes() -> None:
    with pytest.raises(ConfigError):
        TokenVerifier(Settings(jwt_secret="x" * 31))
    with pytest.raises(ConfigError):
        create_app(Settings(jwt_secret="x" * 31))


@pytest.mark.parametrize(("alg", "needed"), [("HS384", 48), ("HS512", 64)])
def test_secret_shorter_than_the_hash_is_refused_at_start_up(alg: str, needed: int) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({**ENV, "MIM_JWT_SECRET": "x" * 32, "MIM_JWT_ALGORITHMS": alg})
    with pytest.raises(ConfigError):
        create_app(Settings(jwt_secret="x" * 32, jwt_algorithms=(alg,)))
    long_enough = Settings(jwt_secret="x" * needed, jwt_algorithms=(alg,))
    assert TokenVerifier(long_enough) is not None


def test_verifier_refuses_no_key_or_two_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigError):
        TokenVerifier(Settings())
    both = Settings(
        jwt_public_key=pem_public(rsa_key).decode(),
        jwt_jwks_url="https://id.example.com/jwks.json",
        jwt_algorithms=("RS256",),
    )
    with pytest.raises(ConfigError):
        TokenVerifier(both)


def test_verifier_refuses_an_hmac_algorithm_beside_a_public_key(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    pem = pem_public(rsa_key).decode()
    with pytest.raises(ConfigError):
        TokenVerifier(Settings(jwt_public_key=pem, jwt_algorithms=("RS256", "HS256")))


@pytest.mark.parametrize("content", ["private-key", "garbage", "short-rsa"])
def test_public_key_file_that_holds_no_usable_public_key_is_refused_at_start_up(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, content: str
) -> None:
    if content == "private-key":
        data = rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    elif content == "garbage":
        data = b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"
    else:
        data = pem_public(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    path = tmp_path / "key.pem"
    path.write_bytes(data)
    with pytest.raises(ConfigError):
        create_app(Settings.from_env(public_key_env(path)))


def test_public_key_with_no_fitting_algorithm_is_refused_at_start_up(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(pem_public(ec_key))
    with pytest.raises(ConfigError):
        create_app(Settings.from_env({**public_key_env(path), "MIM_JWT_ALGORITHMS": "RS256"}))


# --- what needs no token -------------------------------------------------------------------------


async def test_healthz_needs_no_token(client: TestClient) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_graphiql_page_is_served_without_a_token(client: TestClient) -> None:
    response = await client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "graphiql" in (await response.text()).lower()


async def test_graphql_get_without_query_or_token_is_a_client_error(client: TestClient) -> None:
    response = await client.get("/graphql", headers={"Accept": "application/json"})
    assert response.status in (400, 401)


async def test_graphql_get_without_query_never_returns_data(client: TestClient) -> None:
    response = await client.get("/graphql", headers={"Accept": "application/json"})
    text = await response.text()
    assert response.status != 200
    assert '"data"' not in text
