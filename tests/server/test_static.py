"""/static/: the vendored packages match their manifest, and every file is served public, with
its type, compressed when large, and cached for as long as its link carries its hash."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re

import pytest
from aiohttp.test_utils import TestClient

from server import static, vendor

VENDORED = sorted(vendor.manifest()["files"])


def test_every_vendored_file_matches_the_manifest() -> None:
    assert vendor.mismatches() == []


def test_the_manifest_names_every_pinned_package_its_files_and_licence() -> None:
    found = vendor.manifest()
    assert sorted(found["packages"]) == sorted(vendor.PACKAGES)
    for spec, files in vendor.PACKAGES.items():
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", found["packages"][spec])
        assert "LICENSE" in files.values()
        for name in files.values():
            assert f"{vendor.directory(spec)}/{name}" in found["files"]


@pytest.mark.parametrize("name", VENDORED)
async def test_a_vendored_file_is_served_as_kept_without_a_token(
    client: TestClient, name: str
) -> None:
    response = await client.get(f"/static/vendor/{name}", headers={"Accept-Encoding": "identity"})
    assert response.status == 200
    body = await response.read()
    assert hashlib.sha256(body).hexdigest() == vendor.manifest()["files"][name]
    suffix = name.rpartition(".")[2] if "." in name.rpartition("/")[2] else ""
    expected = {"js": "text/javascript", "css": "text/css", "json": "application/json"}
    assert response.content_type == expected.get(suffix, "text/plain")
    assert response.charset == "utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("mim/graphiql.js", "text/javascript"),
        ("mim/graphiql.css", "text/css"),
        ("mim/favicon.svg", "image/svg+xml"),
    ],
)
async def test_our_own_files_are_served_with_their_type(
    client: TestClient, name: str, content_type: str
) -> None:
    response = await client.get(f"/static/{name}")
    assert response.status == 200
    assert response.content_type == content_type
    assert await response.read() == (static.ROOT / name).read_bytes()


async def test_a_link_with_the_hash_is_cached_for_a_year(client: TestClient) -> None:
    link = static.url(client.app, "mim/graphiql.js")
    assert re.fullmatch(r"/static/mim/graphiql\.js\?v=[0-9a-f]{20}", link)
    response = await client.get(link)
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"


async def test_a_link_without_the_current_hash_revalidates(client: TestClient) -> None:
    for path in ("/static/mim/graphiql.js", "/static/mim/graphiql.js?v=0123"):
        response = await client.get(path, headers={"Accept-Encoding": "identity"})
        assert response.headers["Cache-Control"] == "public, no-cache"
        tag = response.headers["ETag"]
        again = await client.get(path, headers={"If-None-Match": tag})
        assert again.status == 304
        assert await again.read() == b""


async def test_a_large_file_is_sent_compressed_to_who_accepts_gzip(client: TestClient) -> None:
    name = vendor.served("graphiql", "graphiql.min.js")
    response = await client.get(
        f"/static/{name}", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert response.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in response.headers.getall("Vary")
    assert response.headers["ETag"].startswith('W/"')
    compressed = await response.read()
    assert len(compressed) < (static.ROOT / name).stat().st_size / 2
    assert gzip.decompress(compressed) == (static.ROOT / name).read_bytes()


async def test_head_answers_the_headers_alone(client: TestClient) -> None:
    response = await client.head("/static/mim/graphiql.css")
    assert response.status == 200
    assert response.content_type == "text/css"
    assert await response.read() == b""


@pytest.mark.parametrize(
    "path", ["/static/missing.js", "/static/", "/static/mim", "/static/..%2fvendor.py"]
)
async def test_anything_else_under_static_is_not_found(client: TestClient, path: str) -> None:
    response = await client.get(path)
    assert response.status == 404
    assert (await response.json())["errors"][0]["extensions"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "target", ["/static/../vendor.py", "/static/%2e%2e/vendor.py", "/static/mim/../../app.py"]
)
async def test_no_path_leads_out_of_the_static_folder(client: TestClient, target: str) -> None:
    # Sent as written (aiohttp's client would remove the dot segments first).
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] in (b"401", b"404")  # not a file: unknown, or outside /static/
    assert b'"errors"' in body and b"import" not in body


def test_only_known_kinds_of_files_are_served() -> None:
    served = static.Assets(static.ROOT).files
    assert all(static.TYPES[(static.ROOT / name).suffix] for name in served)
    assert not [name for name in served if name.endswith(".py")]
