"""Generate the typed Python client, mim_client, from schema.graphql and schema/operations.

Runs in the codegen venv (`make clients`; ariadne-codegen pins a ruff of its own, so it cannot
join the project's venv), with the settings of `[tool.ariadne-codegen]` in pyproject.toml.
`--into DIR` writes the package under DIR instead of replacing the checked-in one, so that
tests/clients/test_python_client_is_generated.py can compare the two.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import toml
from ariadne_codegen.main import client
from ariadne_codegen.plugins.base import Plugin
from graphql import ExecutableDefinitionNode, OperationDefinitionNode

ROOT = Path(__file__).resolve().parents[2]


class ShippedText(Plugin):
    """Make each method send its operation as the exact text of the operation's file.

    The server knows the operations it ships by the SHA-256 of their text, comments included, and
    a token limited to them (MIM_TRUSTED_OPERATIONS) may send no other text: ariadne-codegen's
    own reprint of a document would be refused.
    """

    def generate_operation_str(
        self, operation_str: str, operation_definition: ExecutableDefinitionNode
    ) -> str:
        if not isinstance(operation_definition, OperationDefinitionNode):
            return operation_str
        assert operation_definition.name is not None, "every shipped operation is named"
        queries = Path(self.config_dict["tool"]["ariadne-codegen"]["queries_path"])
        return (queries / f"{operation_definition.name.value}.graphql").read_text("utf-8")

    def generate_client_method(
        self,
        method_def: ast.FunctionDef | ast.AsyncFunctionDef,
        operation_definition: OperationDefinitionNode,
    ) -> ast.FunctionDef | ast.AsyncFunctionDef:
        # The text as one literal: ariadne-codegen writes a literal a line, and Python's unparser
        # breaks such a run when a line holds a quote (a comment's "KPI's").
        for node in ast.walk(method_def):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "gql":
                [lines] = node.args
                node.args = [ast.Constant("".join(line.value for line in lines))]  # type: ignore
        return method_def


def generate(into: Path) -> Path:
    """Write the package under `into` and return its folder."""
    config = toml.load(ROOT / "pyproject.toml")
    section = config["tool"]["ariadne-codegen"]
    section["target_package_path"] = str(into)
    with contextlib.redirect_stdout(io.StringIO()):
        client(config)
    return into / section["target_package_name"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--into", type=Path, help="write the package under this folder")
    args = parser.parse_args()
    os.chdir(ROOT)  # the settings' paths are relative to the repository
    if args.into is not None:
        generate(args.into.resolve())
        return
    section = toml.load(ROOT / "pyproject.toml")["tool"]["ariadne-codegen"]
    target = ROOT / section["target_package_path"] / section["target_package_name"]
    with tempfile.TemporaryDirectory() as scratch:
        # Replaced whole, so that a removed operation leaves no module behind.
        fresh = generate(Path(scratch))
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(fresh, target)
    print(f"generated {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
