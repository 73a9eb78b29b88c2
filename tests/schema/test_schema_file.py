from __future__ import annotations

from pathlib import Path

from schema import schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema.graphql"


def test_checked_in_schema_matches_the_code() -> None:
    assert SCHEMA_FILE.read_text() == schema.as_str() + "\n", "run `make schema` and commit it"
