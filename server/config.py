"""The environment, read once into a frozen Settings object."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from registry.model import Persona
from server import logs, tracing

DEFAULT_DATABASE_URL = "sqlite:///mim.sqlite3"
DEFAULT_SECRET_FILE = ".mim-jwt-secret"
MIN_HMAC_SECRET_BYTES = 32
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class ConfigError(ValueError):
    """The environment describes a set-up the service refuses to run with."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8080
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_persona_claim: str = "persona"
    jwt_leeway_seconds: int = 30
    # The longest lifetime a token may have: `exp` at most this far ahead (with the leeway), and
    # `exp - iat` at most this long when `iat` is present.
    jwt_max_ttl_seconds: int = 86400
    graphiql: bool = True
    introspection: bool = True
    # Compiled plans answer the queries they cover; off, every request takes the standard path.
    fast_path: bool = True
    # Answers of the compiled plans kept per worker until the data changes (server/answers.py).
    answer_cache: bool = True
    request_timeout_seconds: float = 15.0
    # Personas whose tokens may run only the operations the project ships (server/persisted.py).
    trusted_personas: frozenset[Persona] = frozenset()
    # Requests a worker serves at once; beyond it, answered at once with 503 UNAVAILABLE.
    max_inflight: int = 16
    # While refusing, the event loop's lag beyond which the bound in force is halved (0: fixed).
    shed_lag_seconds: float = 0.005
    statement_timeout_seconds: float = 10.0
    # How long a definition mutation waits for the recompute it queued before answering with the
    # job still running (it never waits past half the request time limit), and how often each
    # worker looks for jobs another worker queued or left behind (0: only at start and its own).
    recompute_wait_seconds: float = 2.0
    recompute_poll_seconds: float = 5.0
    # Observability: /metrics (for this bearer or an admin token), log lines, OpenTelemetry.
    metrics: bool = True
    metrics_token: str | None = None
    log_format: str = "text"
    tracing: bool = False
    # Origins of browser apps that may call /graphql and the REST mirror (server/cors.py).
    cors_origins: tuple[str, ...] = ()

    @property
    def recompute_wait(self) -> float:
        """Return the seconds a mutation may wait for its recompute."""
        return min(self.recompute_wait_seconds, self.request_timeout_seconds / 2)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Return the settings the environment describes, refusing unsafe key set-ups."""
        env = os.environ if env is None else env
        secret = env.get("MIM_JWT_SECRET") or None
        public_key_file = env.get("MIM_JWT_PUBLIC_KEY") or None
        jwks_url = env.get("MIM_JWT_JWKS_URL") or None
        if not (secret or public_key_file or jwks_url):
            secret = local_secret(Path(env.get("MIM_JWT_SECRET_FILE", DEFAULT_SECRET_FILE)))
        public_key = Path(public_key_file).read_text() if public_key_file else None
        default_algorithms = "HS256" if secret else "RS256,ES256"
        algorithms = _algorithms(env.get("MIM_JWT_ALGORITHMS", default_algorithms))
        if public_key and jwks_url:
            raise ConfigError("configure MIM_JWT_PUBLIC_KEY or MIM_JWT_JWKS_URL, not both")
        _check_keys(secret, public_key or jwks_url, algorithms)
        return cls(
            database_url=env.get("DATABASE_URL", DEFAULT_DATABASE_URL),
            host=env.get("MIM_HOST", "127.0.0.1"),
            port=_int(env, "MIM_PORT", 8080),
            jwt_secret=secret,
            jwt_public_key=public_key,
            jwt_jwks_url=jwks_url,
            jwt_algorithms=algorithms,
            jwt_issuer=env.get("MIM_JWT_ISSUER") or None,
            jwt_audience=env.get("MIM_JWT_AUDIENCE") or None,
            jwt_persona_claim=env.get("MIM_JWT_PERSONA_CLAIM") or "persona",
            jwt_leeway_seconds=_int(env, "MIM_JWT_LEEWAY", 30),
            jwt_max_ttl_seconds=_max_ttl(env),
            graphiql=_flag(env, "MIM_GRAPHIQL", True),
            introspection=_flag(env, "MIM_INTROSPECTION", True),
            fast_path=_flag(env, "MIM_FAST_PATH", True),
            answer_cache=_flag(env, "MIM_ANSWER_CACHE", True),
            request_timeout_seconds=_seconds(env, "MIM_REQUEST_TIMEOUT", 15.0),
            max_inflight=_max_inflight(env),
            shed_lag_seconds=_shed_lag(env),
            trusted_personas=_personas(env, "MIM_TRUSTED_OPERATIONS"),
            statement_timeout_seconds=_seconds(env, "MIM_STATEMENT_TIMEOUT", 10.0),
            recompute_wait_seconds=_seconds(env, "MIM_RECOMPUTE_WAIT", 2.0, zero=True),
            recompute_poll_seconds=_seconds(env, "MIM_RECOMPUTE_POLL", 5.0, zero=True),
            metrics=_flag(env, "MIM_METRICS", True),
            metrics_token=_metrics_token(env.get("MIM_METRICS_TOKEN") or None),
            log_format=_log_format(env.get("MIM_LOG_FORMAT") or None),
            tracing=_tracing(env),
            cors_origins=_origins(env.get("MIM_CORS_ORIGINS", "")),
        )


# Bounds of MIM_JWT_MAX_TTL: a minute (shorter leaves no time to use a token) to a year.
MAX_TTL_RANGE = (60, 366 * 86400)


def _max_ttl(env: Mapping[str, str]) -> int:
    value = _int(env, "MIM_JWT_MAX_TTL", 86400)
    low, high = MAX_TTL_RANGE
    if not low <= value <= high:
        raise ConfigError(f"MIM_JWT_MAX_TTL must be between {low} and {high} seconds")
    return value


def _personas(env: Mapping[str, str], name: str) -> frozenset[Persona]:
    names = [part.strip() for part in env.get(name, "").split(",") if part.strip()]
    known = {p.value: p for p in Persona}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"{name}: unknown personas {unknown}; use {', '.join(known)}")
    return frozenset(known[n] for n in names)


def _shed_lag(env: Mapping[str, str]) -> float:
    value = _int(env, "MIM_SHED_LAG", 5)
    if not 0 <= value <= 60_000:
        raise ConfigError("MIM_SHED_LAG must be between 0 and 60000 milliseconds (0: off)")
    return value / 1000


def _max_inflight(env: Mapping[str, str]) -> int:
    value = _int(env, "MIM_MAX_INFLIGHT", 16)
    if not 1 <= value <= 100_000:
        raise ConfigError("MIM_MAX_INFLIGHT must be between 1 and 100000 requests")
    return value


def _tracing(env: Mapping[str, str]) -> bool:
    try:
        return tracing.wanted(env)
    except tracing.TracingUnavailable as refusal:
        raise ConfigError(str(refusal)) from None


# An origin as a browser sends it: scheme://host[:port], nothing after it.
_ORIGIN = re.compile(
    r"([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[a-z0-9][a-z0-9.-]*)(?::([0-9]{1,5}))?"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origins(raw: str) -> tuple[str, ...]:
    """Return MIM_CORS_ORIGINS's origins as browsers write them (lower case, no default port)."""
    found: list[str] = []
    for given in filter(None, (part.strip() for part in raw.split(","))):
        if given == "*":
            raise ConfigError("MIM_CORS_ORIGINS: '*' is not accepted; list each origin exactly")
        match = _ORIGIN.fullmatch(given.lower())
        port = int(match[3]) if match is not None and match[3] is not None else None
        if match is None or (port is not None and not 0 < port < 65536):
            raise ConfigError(
                f"MIM_CORS_ORIGINS: {given!r} is not an origin; write scheme://host[:port] "
                "without path or trailing slash, e.g. https://dash.example.com"
            )
        origin = f"{match[1]}://{match[2]}"
        if port is not None and port != _DEFAULT_PORTS.get(match[1]):
            origin += f":{port}"
        if origin not in found:
            found.append(origin)
    return tuple(found)


def _metrics_token(token: str | None) -> str | None:
    if token is not None and len(token) < 16:
        raise ConfigError("MIM_METRICS_TOKEN is too short: use at least 16 random characters")
    return token


def _log_format(raw: str | None) -> str:
    if raw is None:
        return logs.default_format()
    if raw.strip().lower() not in logs.FORMATS:
        raise ConfigError(f"MIM_LOG_FORMAT={raw!r}: use text or json")
    return raw.strip().lower()


def local_secret(path: Path) -> str:
    """Return the local signing secret kept in `path`, creating a random one on first use."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


def _algorithms(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    if not names:
        raise ConfigError("MIM_JWT_ALGORITHMS is empty")
    unknown = [n for n in names if n not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS]
    if unknown:
        raise ConfigError(f"MIM_JWT_ALGORITHMS has algorithms the service never accepts: {unknown}")
    return names


def _check_keys(secret: str | None, asymmetric: object, algorithms: tuple[str, ...]) -> None:
    if secret and asymmetric:
        raise ConfigError("configure MIM_JWT_SECRET or a public key / JWKS URL, not both")
    hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
    if secret and len(hmac) != len(algorithms):
        raise ConfigError("MIM_JWT_SECRET goes with HMAC algorithms (HS256) only")
    if asymmetric and hmac:
        # An HMAC algorithm beside a public key lets a token be signed with the public key itself.
        raise ConfigError("a public key or JWKS URL goes with asymmetric algorithms only")
    if secret:
        # A key shorter than the hash's output weakens it: HS384 wants 48 bytes, HS512 64.
        needed = max([MIN_HMAC_SECRET_BYTES] + [int(a[2:]) // 8 for a in hmac])
        if len(secret.encode()) < needed:
            raise ConfigError(f"MIM_JWT_SECRET must be at least {needed} bytes for {hmac}")


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, not {raw!r}")


def _seconds(env: Mapping[str, str], name: str, default: float, *, zero: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not (value >= 0 if zero else value > 0) or not value <= 3600:
        raise ConfigError(f"{name} must be between 0 and 3600 seconds")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
