"""Bearer token -> Viewer, verified with PyJWT against the configured keys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from server.config import Settings
from server.errors import Unauthenticated
from server.model import Persona

# Longer tokens are refused before any parsing: no identity provider issues them.
MAX_TOKEN_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Viewer:
    subject: str
    personas: frozenset[Persona]


# Who a request is before a token proves otherwise: denied everything by the policy.
ANONYMOUS = Viewer(subject="", personas=frozenset())


class TokenVerifier:
    """Verifies bearer tokens; one per app, built from Settings."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._jwks = (
            jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True, lifespan=300)
            if settings.jwt_jwks_url
            else None
        )

    async def viewer(self, authorization: str | None) -> Viewer:
        """Return the Viewer an `Authorization` header proves, or raise Unauthenticated."""
        token = bearer_token(authorization)
        key = await self._key(token)
        claims = self._decode(token, key)
        personas = parse_personas(claim_at(claims, self._settings.jwt_persona_claim))
        return Viewer(subject=claims["sub"], personas=personas)

    async def _key(self, token: str) -> Any:
        if self._jwks is not None:
            try:
                # PyJWKClient fetches over HTTP synchronously: keep it off the event loop.
                signing_key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
            except jwt.PyJWTError:
                raise Unauthenticated("invalid token") from None
            return signing_key.key
        return self._settings.jwt_secret or self._settings.jwt_public_key

    def _decode(self, token: str, key: Any) -> dict[str, Any]:
        s = self._settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(s.jwt_algorithms),
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=s.jwt_leeway_seconds,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": s.jwt_audience is not None,
                    "verify_iss": s.jwt_issuer is not None,
                },
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthenticated("invalid token") from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise Unauthenticated("invalid token")
        return claims


def bearer_token(authorization: str | None) -> str:
    """Return the token of a `Bearer` Authorization header."""
    if not authorization:
        raise Unauthenticated("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("missing bearer token")
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthenticated("invalid token")
    return token


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
    by_value = {p.value: p for p in Persona}
    return frozenset(
        by_value[name.lower()]
        for name in names
        if isinstance(name, str) and name.lower() in by_value
    )


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
