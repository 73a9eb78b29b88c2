"""The browser packages the service serves (GraphiQL and React), kept in the repository.

A visitor's browser loads them from the service itself, so the GraphiQL page works on a machine
without internet access and under a `script-src 'self'` policy. `python -m server.vendor` fetches
the pinned versions with `npm pack` (npm checks each tarball against the registry's integrity),
copies the few files served and their licences into `server/assets/vendor/`, and rewrites the
manifest that `tests/server/test_static.py` checks every file against.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).parent / "assets" / "vendor"
MANIFEST = VENDOR / "manifest.json"
# package@version: {path in the npm tarball: file name served}. The last releases with builds
# that run without a bundler: graphiql 5 is ES modules and Monaco only; React 19 has no UMD.
PACKAGES: dict[str, dict[str, str]] = {
    "graphiql@4.1.2": {
        "package/graphiql.min.js": "graphiql.min.js",
        "package/graphiql.min.css": "graphiql.min.css",
        "package/LICENSE": "LICENSE",
    },
    "react@18.3.1": {
        "package/umd/react.production.min.js": "react.production.min.js",
        "package/LICENSE": "LICENSE",
    },
    "react-dom@18.3.1": {
        "package/umd/react-dom.production.min.js": "react-dom.production.min.js",
        "package/LICENSE": "LICENSE",
    },
}


def directory(spec: str) -> str:
    """Return the folder a package's files are kept in: `graphiql@4.1.2` -> `graphiql-4.1.2`."""
    name, _, version = spec.rpartition("@")
    return f"{name.lstrip('@').replace('/', '-')}-{version}"


def served(package: str, name: str) -> str:
    """Return a kept file's name below /static/: `served("react", "LICENSE")`."""
    (spec,) = (spec for spec in PACKAGES if spec.rpartition("@")[0] == package)
    if name not in PACKAGES[spec].values():
        raise KeyError(f"{spec} keeps no {name}")
    return f"vendor/{directory(spec)}/{name}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest() -> dict[str, dict[str, str]]:
    """Return the manifest: each package's npm integrity, and each kept file's SHA-256."""
    found: dict[str, dict[str, str]] = json.loads(MANIFEST.read_text())
    return found


def mismatches() -> list[str]:
    """Return what differs between the kept files and the manifest (nothing when all match)."""
    expected = manifest()["files"]
    kept = {
        path.relative_to(VENDOR).as_posix(): sha256(path)
        for path in VENDOR.rglob("*")
        if path.is_file() and path != MANIFEST
    }
    problems = [f"{name}: not in the manifest" for name in sorted(kept.keys() - expected.keys())]
    problems += [f"{name}: missing" for name in sorted(expected.keys() - kept.keys())]
    problems += [
        f"{name}: SHA-256 {kept[name]}, the manifest says {digest}"
        for name, digest in sorted(expected.items())
        if name in kept and kept[name] != digest
    ]
    return problems


def _pack(spec: str, into: Path) -> tuple[Path, str]:
    """Fetch one package's tarball with npm; return it and its integrity."""
    out = subprocess.run(
        ["npm", "pack", spec, "--json", "--silent", "--pack-destination", str(into)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (packed,) = json.loads(out)
    return into / packed["filename"], packed["integrity"]


def update() -> None:
    """Fetch every package in PACKAGES and rewrite the kept files and the manifest."""
    shutil.rmtree(VENDOR, ignore_errors=True)
    VENDOR.mkdir(parents=True)
    packages: dict[str, str] = {}
    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for spec, wanted in PACKAGES.items():
            tarball, packages[spec] = _pack(spec, Path(scratch))
            target = VENDOR / directory(spec)
            target.mkdir()
            with tarfile.open(tarball) as archive:
                for member, name in wanted.items():
                    source = archive.extractfile(member)
                    if source is None:
                        raise SystemExit(f"{spec}: {member} is not a file")
                    (target / name).write_bytes(source.read())
                    files[f"{target.name}/{name}"] = sha256(target / name)
    MANIFEST.write_text(
        json.dumps({"packages": packages, "files": dict(sorted(files.items()))}, indent=2) + "\n"
    )


def main() -> None:
    update()
    print(f"wrote {len(manifest()['files'])} files and {MANIFEST}", file=sys.stderr)


if __name__ == "__main__":
    main()
