"""A raw aiohttp + asyncpg baseline answering the throughput benchmark's three GraphQL documents.

It does what the service must do for Q1-Q3 and nothing else: verify the bearer JWT with PyJWT
(HS256, required exp and sub, the persona claim), recognise the document (whitespace-normalised
text), run ONE SQL statement with the exec visibility filter written into it, and return the same
JSON shape as the service. No GraphQL parsing, validation or resolvers.

    MIM_JWT_SECRET=... .venv/bin/python bench/perf_baseline.py --port 8091
    MIM_JWT_SECRET=... .venv/bin/python bench/perf_baseline.py --port 8092 --json-in-postgres

--json-in-postgres builds the whole response body in PostgreSQL (json_agg / json_build_object);
the default fetches rows and builds the body with Python's json module. Only the exec persona is
supported (the benchmark's caller); any other persona gets an error, as does any other document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
from typing import Any

import asyncpg
import jwt
import orjson
from aiohttp import web

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/mim_perf_bench"
POOL_SIZE = 10  # the service's pool (registry/db.py)

Q1 = "{ kpis { slug name units visibility targets { severity persona comparison threshold } } }"
Q2 = (
    "{ incidents(first: 50) { edges { node { id title severity kpis { value timestamp "
    "kpi { slug name } } } } } }"
)
Q3 = "query($id: ID!) { incident(id: $id) { id title kpis { value timestamp kpi { slug name } } } }"


def normalise(document: str) -> str:
    return re.sub(r"\s+", " ", document).strip()


# --- rows -> Python -> json.dumps -------------------------------------------------------------

SQL_Q1 = """
    SELECT slug, name, units, visibility, targets::text AS targets
    FROM kpi_definition WHERE visibility = 'exec' ORDER BY slug"""

OBSERVATIONS_JOIN = """
    LEFT JOIN (kpi_observation AS o
               JOIN kpi_definition AS d ON d.slug = o.kpi AND d.visibility = 'exec')
      ON o.incident = i.id"""

SQL_Q2 = f"""
    SELECT i.key, i.title, i.severity, o.value, o.timestamp, d.slug, d.name
    FROM (SELECT id, key, title, severity, detected_at FROM incident
          ORDER BY detected_at DESC, id DESC LIMIT 50) AS i
    {OBSERVATIONS_JOIN}
    ORDER BY i.detected_at DESC, i.id DESC, o.kpi, o.timestamp"""

SQL_Q3 = f"""
    SELECT i.key, i.title, o.value, o.timestamp, d.slug, d.name
    FROM incident AS i
    {OBSERVATIONS_JOIN}
    WHERE i.key = $1
    ORDER BY o.kpi, o.timestamp"""


def _target(t: dict[str, Any]) -> dict[str, Any]:
    persona = t.get("persona")
    return {
        "severity": t.get("severity"),
        "persona": persona.upper() if persona else None,
        "comparison": t["comparison"],
        "threshold": float(t["threshold"]),
    }


def body_q1(rows: list[asyncpg.Record]) -> dict[str, Any]:
    kpis = [
        {
            "slug": r["slug"],
            "name": r["name"],
            "units": r["units"],
            "visibility": r["visibility"].upper(),
            "targets": [_target(t) for t in json.loads(r["targets"])],
        }
        for r in rows
    ]
    return {"data": {"kpis": kpis}}


def _observation(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "value": r["value"],
        "timestamp": r["timestamp"].isoformat(),
        "kpi": {"slug": r["slug"], "name": r["name"]},
    }


def body_q2(rows: list[asyncpg.Record]) -> dict[str, Any]:
    edges: list[dict[str, Any]] = []
    last: str | None = None
    for r in rows:
        if r["key"] != last:
            last = r["key"]
            node = {"id": r["key"], "title": r["title"], "severity": r["severity"], "kpis": []}
            edges.append({"node": node})
        if r["slug"] is not None:
            edges[-1]["node"]["kpis"].append(_observation(r))
    return {"data": {"incidents": {"edges": edges}}}


def body_q3(rows: list[asyncpg.Record]) -> dict[str, Any]:
    if not rows:
        return {"data": {"incident": None}}
    first = rows[0]
    kpis = [_observation(r) for r in rows if r["slug"] is not None]
    return {"data": {"incident": {"id": first["key"], "title": first["title"], "kpis": kpis}}}


# --- the body built by PostgreSQL --------------------------------------------------------------

OBS_JSON = (
    "json_build_object('value', o.value, 'timestamp', o.timestamp, "
    "'kpi', json_build_object('slug', d.slug, 'name', d.name))"
)
OBS_SUBQUERY = f"""
    SELECT coalesce(json_agg({OBS_JSON} ORDER BY o.kpi, o.timestamp), '[]'::json)
    FROM kpi_observation AS o
    JOIN kpi_definition AS d ON d.slug = o.kpi AND d.visibility = 'exec'
    WHERE o.incident = i.id"""

JSON_Q1 = """
    SELECT json_build_object('data', json_build_object('kpis', coalesce(json_agg(
      json_build_object('slug', k.slug, 'name', k.name, 'units', k.units,
        'visibility', upper(k.visibility),
        'targets', (SELECT coalesce(json_agg(json_build_object(
                      'severity', t->>'severity', 'persona', upper(t->>'persona'),
                      'comparison', t->>'comparison', 'threshold', (t->>'threshold')::float8)),
                      '[]'::json)
                    FROM json_array_elements(k.targets) AS t))
      ORDER BY k.slug), '[]'::json)))::text
    FROM kpi_definition AS k WHERE k.visibility = 'exec'"""

JSON_Q2 = f"""
    SELECT json_build_object('data', json_build_object('incidents', json_build_object(
      'edges', coalesce(json_agg(json_build_object('node', json_build_object(
        'id', i.key, 'title', i.title, 'severity', i.severity,
        'kpis', ({OBS_SUBQUERY})))
        ORDER BY i.detected_at DESC, i.id DESC), '[]'::json))))::text
    FROM (SELECT id, key, title, severity, detected_at FROM incident
          ORDER BY detected_at DESC, id DESC LIMIT 50) AS i"""

JSON_Q3 = f"""
    SELECT json_build_object('data', json_build_object('incident', (
      SELECT json_build_object('id', i.key, 'title', i.title, 'kpis', ({OBS_SUBQUERY}))
      FROM incident AS i WHERE i.key = $1)))::text"""


async def keep_session(connection: asyncpg.Connection) -> None:
    """Release a pooled connection without asyncpg's reset query (as the service does)."""


class Baseline:
    def __init__(self, url: str, secret: str, json_in_postgres: bool, tuned: bool) -> None:
        self.url = url
        self.secret = secret
        self.json_in_postgres = json_in_postgres
        # The service's two cheap tricks, so that the ratio measures its plans, not them:
        # orjson for the body and no reset query when a pooled connection is released.
        self.tuned = tuned
        self.pool: asyncpg.Pool | None = None

    async def start(self, _app: web.Application) -> None:
        # UTC, so PostgreSQL's JSON timestamps read like Python's isoformat() of a UTC datetime.
        self.pool = await asyncpg.create_pool(
            self.url,
            min_size=1,
            max_size=POOL_SIZE,
            server_settings={"timezone": "UTC"},
            reset=keep_session if self.tuned else None,
        )

    async def stop(self, _app: web.Application) -> None:
        if self.pool is not None:
            await self.pool.close()

    def _personas(self, authorization: str | None) -> set[str]:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise web.HTTPUnauthorized(text='{"errors":[{"message":"missing bearer token"}]}')
        try:
            claims = jwt.decode(
                token.strip(),
                self.secret,
                algorithms=["HS256"],
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError:
            raise web.HTTPUnauthorized(text='{"errors":[{"message":"invalid token"}]}') from None
        raw = claims.get("persona")
        names = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        return {n.lower() for n in names if isinstance(n, str)}

    async def graphql(self, request: web.Request) -> web.Response:
        if "exec" not in self._personas(request.headers.get("Authorization")):
            return web.json_response({"errors": [{"message": "only the exec persona"}]})
        payload = await request.json()
        document = normalise(payload.get("query", ""))
        variables = payload.get("variables") or {}
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            if self.json_in_postgres:
                if document == Q1:
                    text = await conn.fetchval(JSON_Q1)
                elif document == Q2:
                    text = await conn.fetchval(JSON_Q2)
                elif document == Q3:
                    text = await conn.fetchval(JSON_Q3, str(variables.get("id")))
                else:
                    return web.json_response({"errors": [{"message": "unknown document"}]})
                return web.Response(text=text, content_type="application/json")
            if document == Q1:
                body = body_q1(await conn.fetch(SQL_Q1))
            elif document == Q2:
                body = body_q2(await conn.fetch(SQL_Q2))
            elif document == Q3:
                body = body_q3(await conn.fetch(SQL_Q3, str(variables.get("id"))))
            else:
                return web.json_response({"errors": [{"message": "unknown document"}]})
        if self.tuned:
            return web.Response(body=orjson.dumps(body), content_type="application/json")
        return web.json_response(body)


def make_app(url: str, secret: str, json_in_postgres: bool, tuned: bool) -> web.Application:
    baseline = Baseline(url, secret, json_in_postgres, tuned)
    app = web.Application()
    app.on_startup.append(baseline.start)
    app.on_cleanup.append(baseline.stop)
    app.router.add_post("/graphql", baseline.graphql)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--json-in-postgres", action="store_true")
    parser.add_argument(
        "--tuned", action="store_true", help="orjson, and no reset query on pool release"
    )
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    secret = os.environ["MIM_JWT_SECRET"]
    app = make_app(url, secret, args.json_in_postgres, args.tuned)
    asyncio.set_event_loop_policy(None)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
