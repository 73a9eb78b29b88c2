"""Keys from a JWKS URL: verified by kid, cached, refetched sparingly, rotated, never on the loop.

A real JWKS endpoint runs on loopback in the tests' event loop and counts the fetches it serves;
the service fetches from it over real HTTP, in a worker thread.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms
from jwt.warnings import InsecureKeyLengthWarning

from server.app import VERIFIER, create_app
from server.auth import JwksKeys
from server.config import ConfigError, Settings
from tests.conftest import ENV
from tests.server.test_auth import (
    VIEWER_QUERY,
    alg_none,
    assert_unauthenticated,
    b64url,
    b64url_json,
    bearer,
    call,
    claims,
    hmac_signed,
    pem_public,
)

JWKS_PATH = "/.well-known/jwks.json"

pytestmark = pytest.mark.security


@dataclass(frozen=True)
class SigningKey:
    """A private key the tests sign with, and the JWK an identity provider publishes for it."""

    kid: str
    alg: str
    private: Any

    @property
    def jwk(self) -> dict[str, Any]:
        public_key = self.private.public_key()
        if isinstance(public_key, rsa.RSAPublicKey):
            public = RSAAlgorithm.to_jwk(public_key, as_dict=True)
        else:
            public = ECAlgorithm.to_jwk(public_key, as_dict=True)
        return {**public, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def token(self, *, headers: dict[str, Any] | None = None, **extra: Any) -> str:
        """Return a token for valid claims overridden by `extra`, naming this key by its kid."""
        header = {"kid": self.kid, **(headers or {})}
        return jwt.encode(claims(**extra), self.private, algorithm=self.alg, headers=header)


class IdentityProvider:
    """A JWKS endpoint on loopback: publishes what the test says, counts the fetches it serves."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.delay = 0.0
        self.reply: tuple[int, str] | None = None  # a raw (status, body) instead of the key set
        self.fetched = asyncio.Event()
        self.port = 0
        self._server: TestServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{JWKS_PATH}"

    def publish(self, *keys: SigningKey) -> None:
        self.keys = [key.jwk for key in keys]

    async def start(self) -> None:
        """Serve on an ephemeral port the first time, on the same port after a stop."""
        app = web.Application()
        app.router.add_get(JWKS_PATH, self._jwks)
        self._server = TestServer(app, host="127.0.0.1", port=self.port)
        await self._server.start_server()
        self.port = self._server.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        self.fetched.set()
        await asyncio.sleep(self.delay)
        if self.reply is not None:
            status, text = self.reply
            return web.Response(status=status, text=text, content_type="application/json")
        return web.json_response({"keys": self.keys})


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey("rsa-2026-01", "RS256", rsa.generate_private_key(65537, 2048))


@pytest.fixture(scope="module")
def next_rsa_key() -> SigningKey:
    return SigningKey("rsa-2026-02", "RS256", rsa.generate_private_key(65537, 2048))


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey("ec-2026-01", "ES256", ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
async def provider(rsa_key: SigningKey, ec_key: SigningKey) -> AsyncIterator[IdentityProvider]:
    idp = IdentityProvider()
    idp.publish(rsa_key, ec_key)
    await idp.start()
    yield idp
    await idp.stop()


def jwks_settings(url: str) -> Settings:
    env = {k: v for k, v in ENV.items() if k != "MIM_JWT_SECRET"}
    return Settings.from_env({**env, "MIM_JWT_JWKS_URL": url})


@pytest.fixture
async def client(provider: IdentityProvider) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(jwks_settings(provider.url)))) as test_client:
        yield test_client


def jwks_of(client: TestClient) -> JwksKeys:
    """Return the app's JWKS key source, whose cool-down tests shorten instead of waiting 30 s."""
    jwks = client.app[VERIFIER].jwks
    assert jwks is not None
    return jwks


async def end_cooldown(client: TestClient, seconds: float = 0.2) -> None:
    """Shorten the cool-down to `seconds` and let that much time pass."""
    jwks_of(client).cooldown = seconds
    await asyncio.sleep(seconds + 0.05)


async def status_of(client: TestClient, token: str) -> int:
    response = await client.post("/graphql", json={"query": VIEWER_QUERY}, headers=bearer(token))
    await response.read()
    return response.status


async def viewer_of(client: TestClient, token: str) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": VIEWER_QUERY}, headers=bearer(token))
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    viewer: dict[str, Any] = body["data"]["viewer"]
    return viewer


def hand_signed(key: SigningKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """Sign by hand, so that PyJWT's encoder cannot rewrite the header."""
    signing_input = f"{b64url_json(header)}.{b64url_json(payload)}"
    signature = get_default_algorithms()[key.alg].sign(signing_input.encode(), key.private)
    return f"{signing_input}.{b64url(signature)}"


def stranger_token(signer: SigningKey) -> str:
    """A token signed by `signer`'s private key but naming a kid nobody published."""
    return SigningKey(f"kid-{secrets.token_hex(8)}", signer.alg, signer.private).token()


# --- verification by kid -------------------------------------------------------------------------


async def test_rs256_token_is_verified_with_the_published_key_its_kid_names(
    client: TestClient, rsa_key: SigningKey
) -> None:
    viewer = await viewer_of(client, rsa_key.token(persona="responder"))
    assert viewer == {"subject": "tester", "personas": ["RESPONDER"]}


async def test_es256_token_is_verified_with_the_published_key_its_kid_names(
    client: TestClient, ec_key: SigningKey
) -> None:
    viewer = await viewer_of(client, ec_key.token(persona="stakeholder"))
    assert viewer == {"subject": "tester", "personas": ["STAKEHOLDER"]}


async def test_jwks_token_is_accepted_on_the_rest_path(
    client: TestClient, rsa_key: SigningKey
) -> None:
    response = await call(client, "rest-kpis", bearer(rsa_key.token()))
    assert response.status == 200, await response.text()


async def test_key_set_is_fetched_once_and_then_served_from_the_cache(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    for key in (rsa_key, ec_key, rsa_key, ec_key, rsa_key):
        assert await status_of(client, key.token()) == 200
    assert provider.fetches == 1


async def test_valid_persona_less_jwks_token_is_forbidden_not_unauthenticated(
    client: TestClient, rsa_key: SigningKey
) -> None:
    response = await client.post(
        "/graphql",
        json={"query": VIEWER_QUERY},
        headers=bearer(rsa_key.token(persona="auditor")),
    )
    body = await response.json()
    assert response.status == 200
    assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]


# --- tokens the JWKS set does not vouch for ------------------------------------------------------


def tampered(key: SigningKey) -> str:
    """An exec token whose payload now says admin, with the exec token's signature kept."""
    head, _, signature = key.token(persona="exec").split(".")
    return f"{head}.{b64url_json(claims(persona='admin'))}.{signature}"


def forged(rsa_key: SigningKey, ec_key: SigningKey, attacker: SigningKey) -> dict[str, str]:
    """Tokens that name a published kid, or a key of their own, and must all be refused."""
    weak = SigningKey(rsa_key.kid, "RS256", attacker.private)
    return {
        "signed-by-an-unpublished-key": weak.token(),
        "tampered-payload": tampered(rsa_key),
        "rs256-naming-the-ec-key": SigningKey(ec_key.kid, "RS256", rsa_key.private).token(),
        "es256-naming-the-rsa-key": SigningKey(rsa_key.kid, "ES256", ec_key.private).token(),
        "hs256-signed-with-the-rsa-public-pem": hmac_signed(
            claims(), key=pem_public(rsa_key.private)
        ),
        "alg-none": alg_none(claims()),
        "expired": rsa_key.token(exp=1_000_000),
        "missing-exp": rsa_key.token(exp=None),
        "missing-sub": rsa_key.token(sub=None),
    }


async def test_forged_tokens_are_refused_with_the_one_401_body(
    client: TestClient, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    attacker = SigningKey("attacker", "RS256", rsa.generate_private_key(65537, 2048))
    for name, token in forged(rsa_key, ec_key, attacker).items():
        for path in ("post-graphql", "rest-kpis"):
            response = await call(client, path, bearer(token))
            await assert_unauthenticated(client, response, f"{name} on {path}")


async def test_published_rsa_key_below_2048_bits_verifies_nothing(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey
) -> None:
    short = SigningKey("rsa-short", "RS256", rsa.generate_private_key(65537, 1024))
    provider.publish(rsa_key, short)
    with pytest.warns(InsecureKeyLengthWarning):
        token = short.token()
    response = await call(client, "post-graphql", bearer(token))
    await assert_unauthenticated(client, response)


async def test_token_carrying_its_own_key_location_never_makes_the_service_fetch_it(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey
) -> None:
    # The attacker runs a JWKS endpoint of their own, publishing their key under our kid.
    attacker = SigningKey(rsa_key.kid, "RS256", rsa.generate_private_key(65537, 2048))
    evil = IdentityProvider()
    evil.publish(attacker)
    await evil.start()
    try:
        headers_list = [
            {"jku": evil.url},
            {"x5u": evil.url},
            {"jwk": attacker.jwk},
            {"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]},
        ]
        for headers in headers_list:
            for signer in (attacker, rsa_key):
                token = signer.token(headers=headers)
                response = await call(client, "post-graphql", bearer(token))
                await assert_unauthenticated(client, response, str(sorted(headers)))
    finally:
        await evil.stop()
    assert evil.fetches == 0
    assert provider.fetches == 0, "refused from the header alone, before any key lookup"


@pytest.mark.parametrize(
    "kid",
    ["../../../etc/passwd", "/dev/null", "keys\\..\\secret", "a/b", "..", "k" * 129, "", "k\x00"],
)
async def test_kid_that_is_not_a_plain_identifier_is_refused_without_a_fetch(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey, kid: str
) -> None:
    token = SigningKey(kid, "RS256", rsa_key.private).token()
    await assert_unauthenticated(client, await call(client, "post-graphql", bearer(token)))
    assert provider.fetches == 0


async def test_token_without_a_kid_is_refused_without_a_fetch(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey
) -> None:
    token = jwt.encode(claims(), rsa_key.private, algorithm="RS256")
    await assert_unauthenticated(client, await call(client, "post-graphql", bearer(token)))
    assert provider.fetches == 0


async def test_crit_header_is_refused_even_when_the_signature_is_good(
    client: TestClient, rsa_key: SigningKey
) -> None:
    # PyJWT itself accepts `"crit": ["b64"]` with `"b64": true`; the service accepts no `crit`.
    for extra in ({"crit": ["b64"], "b64": True}, {"crit": ["exp"], "exp": 1}, {"crit": []}):
        header = {"alg": "RS256", "typ": "JWT", "kid": rsa_key.kid, **extra}
        token = hand_signed(rsa_key, header, claims())
        await assert_unauthenticated(client, await call(client, "post-graphql", bearer(token)))


async def test_hand_signed_token_with_a_plain_header_is_accepted(
    client: TestClient, rsa_key: SigningKey
) -> None:
    # The control for the hand-crafted headers: the crafting itself yields valid tokens.
    header = {"alg": "RS256", "typ": "JWT", "kid": rsa_key.kid}
    assert await status_of(client, hand_signed(rsa_key, header, claims())) == 200


# --- unknown kids and the refetch cool-down -------------------------------------------------------


async def test_unknown_kid_is_refused_with_the_one_401_body(
    client: TestClient, rsa_key: SigningKey
) -> None:
    for path in ("post-graphql", "rest-kpis"):
        response = await call(client, path, bearer(stranger_token(rsa_key)))
        await assert_unauthenticated(client, response, path)


async def test_flood_of_unknown_kids_on_a_cold_cache_fetches_the_key_set_once(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey
) -> None:
    statuses = await asyncio.gather(
        *(status_of(client, stranger_token(rsa_key)) for _ in range(50))
    )
    assert set(statuses) == {401}
    assert provider.fetches == 1


async def test_flood_of_unknown_kids_during_the_cooldown_fetches_nothing(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey
) -> None:
    assert await status_of(client, rsa_key.token()) == 200
    assert provider.fetches == 1
    statuses = await asyncio.gather(
        *(status_of(client, stranger_token(rsa_key)) for _ in range(50))
    )
    assert set(statuses) == {401}
    assert provider.fetches == 1
    assert await status_of(client, rsa_key.token()) == 200, "known keys keep working"


async def test_flood_of_unknown_kids_after_the_cooldown_refetches_once(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey
) -> None:
    assert await status_of(client, rsa_key.token()) == 200
    await end_cooldown(client, seconds=1.0)
    statuses = await asyncio.gather(
        *(status_of(client, stranger_token(rsa_key)) for _ in range(50))
    )
    assert set(statuses) == {401}
    assert provider.fetches == 2


# --- key rotation --------------------------------------------------------------------------------


async def test_rotated_key_is_picked_up_after_the_cooldown_and_the_dropped_one_refused(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey, next_rsa_key: SigningKey
) -> None:
    assert await status_of(client, rsa_key.token()) == 200
    provider.publish(next_rsa_key)

    # Within the cool-down of the first fetch, the new kid is not fetched for.
    assert await status_of(client, next_rsa_key.token()) == 401
    assert provider.fetches == 1

    await end_cooldown(client)
    viewer = await viewer_of(client, next_rsa_key.token(persona="ingest"))
    assert viewer["personas"] == ["INGEST"]
    assert provider.fetches == 2
    assert await status_of(client, rsa_key.token()) == 401, "the dropped key no longer verifies"


async def test_new_kid_is_fetched_on_first_sight_when_no_fetch_was_recent(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey, next_rsa_key: SigningKey
) -> None:
    jwks_of(client).cooldown = 0.2
    assert await status_of(client, rsa_key.token()) == 200
    await asyncio.sleep(0.3)
    provider.publish(rsa_key, next_rsa_key)
    assert await status_of(client, next_rsa_key.token()) == 200
    assert await status_of(client, rsa_key.token()) == 200, "keys still published keep working"
    assert provider.fetches == 2


# --- an identity provider that is down or broken -------------------------------------------------


async def test_jwks_server_down_gives_401_and_recovers_when_it_is_back(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey
) -> None:
    await provider.stop()
    for path in ("post-graphql", "rest-kpis"):
        response = await call(client, path, bearer(rsa_key.token()))
        await assert_unauthenticated(client, response, path)

    await provider.start()
    # The failed fetch started the cool-down too: no retry storm against a struggling provider.
    assert await status_of(client, rsa_key.token()) == 401
    assert provider.fetches == 0

    await end_cooldown(client)
    assert await status_of(client, rsa_key.token()) == 200
    assert provider.fetches == 1


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param((500, '{"error": "oops"}'), id="server-error"),
        pytest.param((404, "not found"), id="not-found"),
        pytest.param((200, "this is not json"), id="not-json"),
        pytest.param((200, "[1, 2, 3]"), id="not-an-object"),
        pytest.param((200, '{"keys": []}'), id="no-keys"),
        pytest.param((200, '{"keys": [{"kty": "nonsense", "kid": "x"}]}'), id="unusable-keys"),
    ],
)
async def test_broken_jwks_reply_gives_401_and_recovers(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey, reply: tuple[int, str]
) -> None:
    jwks_of(client).cooldown = 0.0
    provider.reply = reply
    for path in ("post-graphql", "rest-kpis"):
        response = await call(client, path, bearer(rsa_key.token()))
        await assert_unauthenticated(client, response, path)
    provider.reply = None
    assert await status_of(client, rsa_key.token()) == 200


def test_jwks_url_that_is_not_http_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigError):
        create_app(jwks_settings("file:///etc/passwd"))


# --- the event loop ------------------------------------------------------------------------------


async def test_slow_jwks_fetch_does_not_hold_up_other_requests(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey
) -> None:
    provider.delay = 0.5
    finished: list[str] = []

    async def graphql() -> None:
        assert await status_of(client, rsa_key.token()) == 200
        finished.append("graphql")

    pending = asyncio.create_task(graphql())
    await asyncio.wait_for(provider.fetched.wait(), timeout=10)
    health = await client.get("/healthz")
    assert health.status == 200
    finished.append("healthz")
    await pending
    assert finished == ["healthz", "graphql"]


async def test_slow_refetch_for_a_new_kid_does_not_hold_up_known_keys(
    client: TestClient, provider: IdentityProvider, rsa_key: SigningKey, next_rsa_key: SigningKey
) -> None:
    assert await status_of(client, rsa_key.token()) == 200
    jwks_of(client).cooldown = 0.0
    provider.publish(rsa_key, next_rsa_key)
    provider.delay = 0.5
    provider.fetched.clear()
    finished: list[str] = []

    async def verify(key: SigningKey) -> None:
        assert await status_of(client, key.token()) == 200
        finished.append(key.kid)

    pending = asyncio.create_task(verify(next_rsa_key))
    await asyncio.wait_for(provider.fetched.wait(), timeout=10)
    await verify(rsa_key)
    await pending
    assert finished == [rsa_key.kid, next_rsa_key.kid]


async def test_many_requests_for_a_new_kid_share_one_fetch(
    client: TestClient, provider: IdentityProvider, next_rsa_key: SigningKey
) -> None:
    provider.publish(next_rsa_key)
    provider.delay = 0.2
    statuses = await asyncio.gather(*(status_of(client, next_rsa_key.token()) for _ in range(20)))
    assert set(statuses) == {200}
    assert provider.fetches == 1
