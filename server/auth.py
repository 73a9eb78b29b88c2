"""Bearer token -> Viewer, verified with PyJWT against the configured keys.

Keys come from configuration only: an HMAC secret, a PEM public key, or a JWKS URL. Every way a
token can fail raises the one `Unauthenticated`, so that the caller learns nothing from the reply.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from registry.errors import Unauthenticated
from registry.model import Persona, Viewer
from server.config import HMAC_ALGORITHMS, MIN_HMAC_SECRET_BYTES, ConfigError, Settings

log = logging.getLogger("mim.auth")

# Longer tokens are refused before any parsing: no identity provider issues them.
MAX_TOKEN_BYTES = 8192
# The JWS compact form is base64url segments and dots (some issuers keep the `=` padding).
_COMPACT_TOKEN = re.compile(r"[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]*")
# A `kid` only names one of the configured keys: a short plain identifier, never a path or URL.
_PLAIN_KID = re.compile(r"[A-Za-z0-9_.:=+-]{1,128}")
# Headers that would let a token pick its own key, or demand an extension the service does not
# implement (`crit`); keys come from configuration only.
REFUSED_HEADERS = frozenset({"crit", "jku", "x5u", "x5c", "jwk"})
# NumericDate claims; PyJWT takes anything int() accepts, a numeric string included.
_TIME_CLAIMS = ("exp", "nbf", "iat")
# The last second of the year 9999: later times cannot be dates in Python or the database.
_LATEST_SECONDS = 253_402_300_799
# The audit trail stores a subject in 200 characters (kpi_revision.changed_by).
MAX_SUBJECT_CHARS = 200

# An unknown `kid` refetches the JWKS at most this often, so a flood of made-up kids cannot hammer
# the identity provider; every fetch, failed or not, starts the cool-down.
JWKS_COOLDOWN_SECONDS = 30.0
# A fetched key set is trusted this long; a key the provider drops stops working after it.
JWKS_LIFESPAN_SECONDS = 300.0
JWKS_TIMEOUT_SECONDS = 5.0
# How long a verified token's viewer is reused before its signature is checked again, and how
# many such tokens are remembered (least recently used first out).
VERIFIED_TOKEN_SECONDS = 60.0
VERIFIED_TOKENS = 4096

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_MIN_RSA_BITS = 2048


class JwksKeys:
    """Signing keys from a JWKS URL: PyJWKClient's cached set, refetched at most once per cool-down.

    PyJWKClient fetches with blocking urllib, so every fetch runs in a worker thread; lookups in
    the cached set are memory-only and run on the event loop.
    """

    def __init__(self, url: str, *, cooldown: float, lifespan: float, timeout: float) -> None:
        self.cooldown = cooldown
        try:
            self._client = jwt.PyJWKClient(
                url, cache_jwk_set=True, lifespan=lifespan, timeout=timeout
            )
        except jwt.PyJWKClientError as error:
            raise ConfigError(f"MIM_JWT_JWKS_URL: {error}") from None
        self._lock = asyncio.Lock()
        self._last_fetch: float | None = None
        # Counts fetches: what was verified with an older key set is verified again.
        self.generation = 0

    async def signing_key(self, kid: str) -> jwt.PyJWK:
        """Return the signing key `kid` names, refetching the set if the cool-down allows."""
        key = _find_key(self._cached(), kid)
        if key is None:
            key = _find_key(await self._refetched(), kid)
        if key is None:
            raise Unauthenticated("invalid token")
        return key

    def _cached(self) -> jwt.PyJWKSet | None:
        cache = self._client.jwk_set_cache
        return cache.get() if cache is not None else None

    async def _refetched(self) -> jwt.PyJWKSet | None:
        """Return a freshly fetched key set, or the cached one while the cool-down lasts."""
        async with self._lock:
            # Callers queued behind a fetch find the cool-down running and share its result.
            now = time.monotonic()
            if self._last_fetch is not None and now - self._last_fetch < self.cooldown:
                return self._cached()
            self._last_fetch = now
            self.generation += 1
            return await asyncio.to_thread(self._fetch)

    def _fetch(self) -> jwt.PyJWKSet | None:
        try:
            return self._client.get_jwk_set(refresh=True)
        except (jwt.PyJWTError, OSError, ValueError) as error:
            # Down, slow, or not a key set: the cached keys stay until their lifespan ends.
            log.warning("fetching the JWKS from %s failed: %s", self._client.uri, error)
            return None


def _find_key(jwk_set: jwt.PyJWKSet | None, kid: str) -> jwt.PyJWK | None:
    if jwk_set is None:
        return None
    for key in jwk_set.keys:
        if key.key_id == kid and key.public_key_use in ("sig", None):
            return key
    return None


class TokenVerifier:
    """Verifies bearer tokens; one per app, built from Settings."""

    def __init__(
        self,
        settings: Settings,
        *,
        jwks_cooldown: float = JWKS_COOLDOWN_SECONDS,
        jwks_lifespan: float = JWKS_LIFESPAN_SECONDS,
        jwks_timeout: float = JWKS_TIMEOUT_SECONDS,
    ) -> None:
        self._settings = settings
        self.jwks: JwksKeys | None = None
        self._key: Any = None
        # Tokens verified lately -> (viewer, until when the answer stands, key set generation).
        self._verified: OrderedDict[str, tuple[Viewer, float, int]] = OrderedDict()
        sources = [settings.jwt_secret, settings.jwt_public_key, settings.jwt_jwks_url]
        if sum(1 for source in sources if source) != 1:
            raise ConfigError("configure exactly one of a secret, a public key or a JWKS URL")
        if settings.jwt_jwks_url:
            self.jwks = JwksKeys(
                settings.jwt_jwks_url,
                cooldown=jwks_cooldown,
                lifespan=jwks_lifespan,
                timeout=jwks_timeout,
            )
            self._algorithms = asymmetric_algorithms(settings.jwt_algorithms)
        elif settings.jwt_public_key:
            self._key = public_key(settings.jwt_public_key)
            self._algorithms = algorithms_for_key(self._key, settings.jwt_algorithms)
        else:
            self._key = settings.jwt_secret
            self._algorithms = hmac_algorithms(settings.jwt_secret or "", settings.jwt_algorithms)

    async def viewer(self, authorization: str | None) -> Viewer:
        """Return the Viewer an `Authorization` header proves, or raise Unauthenticated."""
        token = bearer_token(authorization)
        now = time.time()
        known = self._verified.get(token)
        if known is not None:
            if now < known[1] and known[2] == self._key_generation():
                self._verified.move_to_end(token)
                return known[0]
            del self._verified[token]
        viewer, expires = await self._prove(token)
        self._remember(token, viewer, expires + self._settings.jwt_leeway_seconds, now)
        return viewer

    async def sign_in(self, authorization: str | None) -> tuple[Viewer, float]:
        """Return the Viewer a header proves and its token's `exp` (seconds since the epoch),
        checked afresh (a page sign-in starts a session that must end with the token)."""
        return await self._prove(bearer_token(authorization))

    async def _prove(self, token: str) -> tuple[Viewer, float]:
        check_unique_keys(token)
        header = unverified_header(token)
        check_header(header, self._algorithms)
        key = await self._signing_key(header)
        claims = self._decode(token, key)
        personas = parse_personas(claim_at(claims, self._settings.jwt_persona_claim))
        return Viewer(subject=claims["sub"], personas=personas), float(claims["exp"])

    def _key_generation(self) -> int:
        return self.jwks.generation if self.jwks is not None else 0

    def _remember(self, token: str, viewer: Viewer, expires: float, now: float) -> None:
        # A dashboard sends the same token with every request; verifying the signature once a
        # minute is enough. The answer never outlives the token's own expiry (with the leeway
        # the decoder allows) nor a refetch of the key set, and refusals are never remembered.
        until = min(expires, now + VERIFIED_TOKEN_SECONDS)
        self._verified[token] = (viewer, until, self._key_generation())
        if len(self._verified) > VERIFIED_TOKENS:
            self._verified.popitem(last=False)

    async def _signing_key(self, header: Mapping[str, Any]) -> Any:
        if self.jwks is None:
            return self._key
        kid = header.get("kid")
        if kid is None:
            raise Unauthenticated("invalid token")
        return await self.jwks.signing_key(kid)

    def _decode(self, token: str, key: Any) -> dict[str, Any]:
        s = self._settings
        required = ["exp", "sub"]
        required += ["iss"] if s.jwt_issuer is not None else []
        required += ["aud"] if s.jwt_audience is not None else []
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self._algorithms),
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=s.jwt_leeway_seconds,
                options={
                    "require": required,
                    "verify_aud": s.jwt_audience is not None,
                    "verify_iss": s.jwt_issuer is not None,
                    "enforce_minimum_key_length": True,
                },
            )
            check_claims(claims, issuer=s.jwt_issuer)
            check_lifetime(
                claims, max_ttl=s.jwt_max_ttl_seconds, leeway=s.jwt_leeway_seconds, now=time.time()
            )
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
            raise Unauthenticated("invalid token") from None
        return claims


def bearer_token(authorization: str | None) -> str:
    """Return the token of a `Bearer` Authorization header."""
    if not authorization:
        raise Unauthenticated("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("missing bearer token")
    if len(token) > MAX_TOKEN_BYTES or not _COMPACT_TOKEN.fullmatch(token):
        raise Unauthenticated("invalid token")
    return token


def unverified_header(token: str) -> dict[str, Any]:
    """Return the token's JOSE header, not yet trusted."""
    try:
        return jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise Unauthenticated("invalid token") from None


def check_header(header: Mapping[str, Any], algorithms: Iterable[str]) -> None:
    """Refuse, before any key is looked up, a header the service will not act on."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none" or alg not in algorithms:
        raise Unauthenticated("invalid token")
    if REFUSED_HEADERS & header.keys():
        raise Unauthenticated("invalid token")
    kid = header.get("kid")
    if kid is not None and not is_plain_kid(kid):
        raise Unauthenticated("invalid token")


def is_plain_kid(kid: object) -> bool:
    """Return whether `kid` is a short identifier, not a path, URL or query."""
    return isinstance(kid, str) and bool(_PLAIN_KID.fullmatch(kid)) and ".." not in kid


def check_unique_keys(token: str) -> None:
    """Refuse a token whose header or payload names a key twice: readers would disagree on it."""
    header, payload, _ = token.split(".")
    for segment in (header, payload):
        try:
            json.loads(_base64url(segment), object_pairs_hook=_unique_object)
        except (ValueError, TypeError, RecursionError):
            raise Unauthenticated("invalid token") from None


def _base64url(segment: str) -> bytes:
    segment = segment.rstrip("=")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key appears twice")
    return found


def check_claims(claims: Mapping[str, Any], *, issuer: str | None) -> None:
    """Refuse what PyJWT lets through: odd times, a subject we cannot store, a near-miss issuer."""
    if not all(is_numeric_date(claims[name]) for name in _TIME_CLAIMS if name in claims):
        raise Unauthenticated("invalid token")
    if not is_subject(claims.get("sub")):
        raise Unauthenticated("invalid token")
    # PyJWT matches a str issuer exactly but a container by `in`; compare exactly whatever it got.
    if issuer is not None and claims.get("iss") != issuer:
        raise Unauthenticated("invalid token")


def check_lifetime(claims: Mapping[str, Any], *, max_ttl: int, leeway: int, now: float) -> None:
    """Refuse a token that lives longer than `max_ttl`: one whose `exp` lies further ahead (the
    issuer's clock may run `leeway` ahead of ours), or that was issued for longer (`exp - iat`).

    A stolen long-lived token is a standing key; the identity provider is asked for short ones.
    """
    expires = claims["exp"]
    if expires - now > max_ttl + leeway:
        raise Unauthenticated("invalid token")
    issued = claims.get("iat")
    if issued is not None and expires - issued > max_ttl:
        raise Unauthenticated("invalid token")


def is_numeric_date(value: object) -> bool:
    """Return whether `value` is a JSON number of seconds between 1970 and 9999.

    Not a string, a boolean, infinity, or an integer too large to be a float.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, int):
        return 0 <= value <= _LATEST_SECONDS
    return math.isfinite(value) and 0 <= value <= _LATEST_SECONDS


def is_subject(value: object) -> bool:
    """Return whether a `sub` claim is text the audit trail can store and show."""
    return (
        isinstance(value, str)
        and bool(value.strip())
        and len(value) <= MAX_SUBJECT_CHARS
        and value.isprintable()
    )


def hmac_algorithms(secret: str, algorithms: Iterable[str]) -> tuple[str, ...]:
    """Return the HMAC algorithms of the allow-list, refusing a secret too short for any of them."""
    names = tuple(a for a in algorithms if a in HMAC_ALGORITHMS)
    if not names:
        raise ConfigError("an HMAC secret needs an HMAC algorithm (HS256) in MIM_JWT_ALGORITHMS")
    # RFC 7518 3.2: the key is at least as long as the hash, e.g. 32 bytes for HS256.
    needed = max(MIN_HMAC_SECRET_BYTES, *(int(a[2:]) // 8 for a in names))
    if len(secret.encode()) < needed:
        raise ConfigError(f"the JWT secret must be at least {needed} bytes for {list(names)}")
    return names


def asymmetric_algorithms(algorithms: Iterable[str]) -> tuple[str, ...]:
    """Return the allow-list for public keys: an HMAC algorithm there would accept forgeries."""
    names = tuple(algorithms)
    if not names or any(a in HMAC_ALGORITHMS or a.lower() == "none" for a in names):
        raise ConfigError("a public key or JWKS URL goes with asymmetric algorithms only")
    return names


def public_key(pem: str) -> Any:
    """Return the public key a PEM text holds, refusing anything else."""
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ConfigError("MIM_JWT_PUBLIC_KEY does not hold a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise ConfigError(f"an RSA public key must have at least {_MIN_RSA_BITS} bits")
    return key


def algorithms_for_key(key: Any, algorithms: Iterable[str]) -> tuple[str, ...]:
    """Return the algorithms of the allow-list this key can verify: the key fixes the family."""
    fitting: frozenset[str] = frozenset()
    if isinstance(key, rsa.RSAPublicKey):
        fitting = _RSA_ALGORITHMS
    elif isinstance(key, ec.EllipticCurvePublicKey):
        fitting = frozenset({_EC_ALGORITHMS.get(key.curve.name, "")})
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        fitting = frozenset({"EdDSA"})
    names = tuple(a for a in asymmetric_algorithms(algorithms) if a in fitting)
    if not names:
        raise ConfigError("MIM_JWT_ALGORITHMS names no algorithm the public key can verify")
    return names


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """Return the claim at `path`: a key as written, else a dotted path through nested objects.

    Namespaced claims contain dots themselves (`https://example.com/claims.persona`), so the
    longest key that matches a prefix of the path wins.
    """
    if path in claims:
        return claims[path]
    for cut in range(len(path) - 1, 0, -1):
        if path[cut] != ".":
            continue
        head, rest = path[:cut], path[cut + 1 :]
        inner = claims.get(head)
        if isinstance(inner, Mapping):
            return claim_at(inner, rest)
    return None


def parse_personas(raw: Any) -> frozenset[Persona]:
    """Return the known personas a claim names; anything else names none."""
    names: Iterable[Any]
    if isinstance(raw, str):
        names = [raw]
    elif isinstance(raw, list):
        names = raw
    else:
        return frozenset()
    # Exact names only: case folding would also accept look-alikes (the Kelvin sign K folds to k).
    by_value = {p.value: p for p in Persona}
    return frozenset(by_value[name] for name in names if isinstance(name, str) and name in by_value)


def issue_token(
    settings: Settings, *, personas: Iterable[str], subject: str, ttl_seconds: int = 3600
) -> str:
    """Return an HS256 token signed with the configured secret (for local use)."""
    if not settings.jwt_secret:
        raise ValueError("tokens can only be issued locally with an HMAC secret")
    now = int(time.time())
    names = list(personas)
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": now,
        "exp": now + ttl_seconds,
        "persona": names[0] if len(names) == 1 else names,
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret, algorithm=settings.jwt_algorithms[0])
