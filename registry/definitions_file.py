"""Definitions as code: the KPI page kept as a YAML file, read with its line numbers, and written.

The file holds one entry a KPI under `kpis:`, in the seed page's own field names, lower-case enum
values, targets as `{severity, persona, comparison, threshold}` (an absent key means "every"):

    kpis:
    - slug: mttr
      name: Mean Time to Resolve
      ...
      targets:
      - severity: P1
        comparison: at_most
        threshold: 120.0
      visibility: exec
      review_cadence: P90D
      status: active

`parse` checks the whole file and reports every problem with its line, KPI and field, or returns
the checked values `registry.kpis.plan_definitions` and `apply_definitions` take; `export`
writes the registry back in the same form, in a stable order, so that export then apply
changes nothing and two exports of the same data are byte-identical.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from registry import kpis, targets, validate
from registry.errors import BadInput
from registry.model import (
    Comparison,
    Definition,
    KpiStatus,
    Persona,
    Severity,
    Target,
    Visibility,
)

# The file's field names (the seed page's), in its order: the registry's own names.
FIELDS = ("slug", *kpis.FILE_FIELDS)
REQUIRED = (
    "slug",
    "name",
    "description",
    "formula",
    "units",
    "visibility",
    "owner",
    "review_cadence",
)
TARGET_KEYS = ("severity", "persona", "comparison", "threshold")
# Bounds on what one file may hold, checked before anything else.
MAX_BYTES = 1_000_000
MAX_KPIS = 1000
HEADER = (
    "# KPI definitions: the registry's source of truth. Review changes as pull requests;\n"
    "# `mim kpi plan FILE` shows what applying would change, `mim kpi apply FILE --note ...`\n"
    "# applies it (docs/definitions-as-code.md).\n"
)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a file: where (line, KPI, field) and what."""

    line: int
    kpi: str | None
    field: str | None
    message: str

    def describe(self, source: str) -> str:
        where = ": ".join(part for part in (self.kpi, self.field) if part)
        return f"{source}:{self.line}: {where + ': ' if where else ''}{self.message}"


class InvalidFile(BadInput):
    """A definitions file with problems; nothing of it may be applied."""

    def __init__(self, problems: Sequence[Problem], source: str = "the file") -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(p.describe(source) for p in self.problems[:20]))
        self.details = {
            "problems": [
                {"line": p.line, "kpi": p.kpi, "field": p.field, "message": p.message}
                for p in self.problems
            ]
        }


def parse(text: str) -> list[dict[str, Any]]:
    """Return each KPI's checked values (registry field names), or raise InvalidFile."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise InvalidFile([Problem(1, None, None, f"the file is larger than {MAX_BYTES} bytes")])
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise InvalidFile([Problem(line, None, None, f"not YAML: {error.problem}")]) from None
    except yaml.YAMLError as error:
        raise InvalidFile([Problem(1, None, None, f"not YAML: {error}")]) from None
    reader = _Reader(loader)
    entries = reader.entries(root)
    if reader.problems:
        raise InvalidFile(reader.problems)
    return entries


class _Reader:
    """Walks the composed YAML nodes, keeping each value's line; collects every problem."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.problems: list[Problem] = []
        self._seen: set[int] = set()
        # (mapping, key) pairs whose value was an alias: reported once, not again as missing.
        self._aliased: set[tuple[int, str]] = set()

    def problem(self, node: yaml.Node, kpi: str | None, field: str | None, message: str) -> None:
        self.problems.append(Problem(node.start_mark.line + 1, kpi, field, message))

    def entries(self, root: yaml.Node | None) -> list[dict[str, Any]]:
        if root is None:
            self.problems.append(Problem(1, None, None, "the file is empty: give a `kpis:` list"))
            return []
        top = self.mapping(root, None, None)
        if top is None:
            return []
        for key, (key_node, _) in top.items():
            if key != "kpis":
                self.problem(key_node, None, key, "unknown key: the file holds `kpis:` only")
        if "kpis" not in top:
            self.problem(root, None, None, "no `kpis:` list")
            return []
        listed = top["kpis"][1]
        if not isinstance(listed, yaml.SequenceNode):
            self.problem(listed, None, "kpis", "must be a list of KPIs")
            return []
        if len(listed.value) > MAX_KPIS:
            self.problem(listed, None, "kpis", f"at most {MAX_KPIS} KPIs")
            return []
        found: list[dict[str, Any]] = []
        first_line: dict[str, int] = {}
        for number, node in enumerate(listed.value, start=1):
            entry = self.entry(node, number)
            if entry is None:
                continue
            slug = entry["slug"]
            if slug in first_line:
                self.problem(node, slug, "slug", f"duplicate: also on line {first_line[slug]}")
                continue
            first_line[slug] = node.start_mark.line + 1
            found.append(entry)
        return found

    def mapping(
        self, node: yaml.Node, kpi: str | None, field: str | None
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        if not self.fresh(node, kpi, field):
            return None
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, kpi, field, "must be a mapping of keys to values")
            return None
        found: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
                self.problem(key_node, kpi, field, "keys must be plain names")
                continue
            if key in found:
                self.problem(key_node, kpi, key, "given twice")
                continue
            if value_node.start_mark.line < key_node.start_mark.line:
                # The value starts before its key: an alias of a value anchored earlier.
                self.problem(key_node, kpi, key, "anchors and aliases are not allowed")
                self._aliased.add((id(node), key))
                continue
            found[key] = (key_node, value_node)
        return found

    def fresh(self, node: yaml.Node, kpi: str | None, field: str | None) -> bool:
        # An alias is the anchored node again: refused, so no file can expand into a huge one.
        if id(node) in self._seen:
            self.problem(node, kpi, field, "anchors and aliases are not allowed")
            return False
        self._seen.add(id(node))
        return True

    def scalar(self, node: yaml.Node, kpi: str | None, field: str) -> tuple[bool, Any]:
        if not self.fresh(node, kpi, field):
            return False, None
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, kpi, field, "must be a single value")
            return False, None
        try:
            return True, self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError):
            # An explicit tag (`!!int abc`, `!custom x`) that makes no value.
            self.problem(node, kpi, field, f"not a value (tag {node.tag})")
            return False, None

    def text(self, node: yaml.Node, kpi: str | None, field: str, *, null: bool = False) -> Any:
        ok, value = self.scalar(node, kpi, field)
        if not ok:
            return _MISSING
        if value is None and null:
            return None
        if not isinstance(value, str):
            shown = "null" if value is None else type(value).__name__
            self.problem(node, kpi, field, f"must be text, not {shown} (quote it)")
            return _MISSING
        return value

    def choice(
        self, node: yaml.Node, kpi: str | None, field: str, allowed: Mapping[str, Any]
    ) -> Any:
        value = self.text(node, kpi, field)
        if value is _MISSING:
            return _MISSING
        if value not in allowed:
            self.problem(node, kpi, field, f"must be one of {', '.join(allowed)}, not {value!r}")
            return _MISSING
        return allowed[value]

    def entry(self, node: yaml.Node, number: int) -> dict[str, Any] | None:
        kpi = _slug_in(node) or f"#{number}"
        given = self.mapping(node, kpi, None)
        if given is None:
            return None
        if "slug" in given:
            raw = self.text(given["slug"][1], kpi, "slug")
            if raw is not _MISSING:
                kpi = raw
                try:
                    validate.slug(raw)
                except BadInput as error:
                    self.problem(given["slug"][1], kpi, "slug", error.message)
        before = len(self.problems)
        for name, (key_node, _) in given.items():
            if name not in FIELDS:
                known = ", ".join(FIELDS)
                self.problem(key_node, kpi, name, f"unknown field (the fields are {known})")
        for name in REQUIRED:
            if name not in given and (id(node), name) not in self._aliased:
                self.problem(node, kpi, name, "missing")
        values: dict[str, Any] = {}
        for name, (_, value_node) in given.items():
            if name in FIELDS and name != "slug":
                value = self.field(name, value_node, kpi)
                if value is not _MISSING:
                    values[name] = value
        if len(self.problems) > before or any(p.kpi == kpi for p in self.problems):
            return None
        values.setdefault("expression", None)
        values.setdefault("targets", ())
        values.setdefault("data_sources", ())
        values.setdefault("status", KpiStatus.ACTIVE)
        values["slug"] = kpi
        return values

    def field(self, name: str, node: yaml.Node, kpi: str) -> Any:
        if name == "visibility":
            return self.choice(node, kpi, name, {v.value: v for v in Visibility})
        if name == "status":
            return self.choice(node, kpi, name, {s.value: s for s in KpiStatus})
        if name == "targets":
            return self.target_list(node, kpi)
        if name == "data_sources":
            return self.text_list(node, kpi, name)
        value = self.text(node, kpi, name, null=name == "expression")
        if value is _MISSING:
            return _MISSING
        return self.checked(node, kpi, name, value)

    def checked(self, node: yaml.Node, kpi: str, name: str, value: Any) -> Any:
        """Return the value as the registry checks it (the rules of the GraphQL mutations)."""
        try:
            return kpis.checked({name: value}, creating=False)[name]
        except BadInput as error:
            # The registry's messages name fields as GraphQL does; the file names them so.
            public = kpis.PUBLIC_NAMES.get(name, name)
            self.problem(node, kpi, name, error.message.replace(public, name, 1))
            return _MISSING

    def text_list(self, node: yaml.Node, kpi: str, name: str) -> Any:
        if not self.fresh(node, kpi, name):
            return _MISSING
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, kpi, name, "must be a list")
            return _MISSING
        items = [self.text(item, kpi, name) for item in node.value]
        if any(item is _MISSING for item in items):
            return _MISSING
        return self.checked(node, kpi, name, items)

    def target_list(self, node: yaml.Node, kpi: str) -> Any:
        if not self.fresh(node, kpi, "targets"):
            return _MISSING
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, kpi, "targets", "must be a list of targets")
            return _MISSING
        found = [self.target(item, kpi) for item in node.value]
        if any(item is _MISSING for item in found):
            return _MISSING
        return self.checked(node, kpi, "targets", found)

    def target(self, node: yaml.Node, kpi: str) -> Any:
        given = self.mapping(node, kpi, "targets")
        if given is None:
            return _MISSING
        before = len(self.problems)
        for key, (key_node, _) in given.items():
            if key not in TARGET_KEYS:
                self.problem(key_node, kpi, f"targets.{key}", "unknown key")
        for key in ("comparison", "threshold"):
            if key not in given and (id(node), key) not in self._aliased:
                self.problem(node, kpi, f"targets.{key}", "missing")
        parts: dict[str, Any] = {}
        choices: dict[str, Mapping[str, Any]] = {
            "severity": {s.value: s for s in Severity},
            "persona": {p.value: p for p in Persona},
            "comparison": {c.value.lower(): c for c in Comparison},
        }
        for key, allowed in choices.items():
            if key in given:
                parts[key] = self.choice(given[key][1], kpi, f"targets.{key}", allowed)
        if "threshold" in given:
            parts["threshold"] = self.threshold(given["threshold"][1], kpi)
        if len(self.problems) > before or _MISSING in parts.values():
            return _MISSING
        return Target(
            comparison=parts["comparison"],
            threshold=parts["threshold"],
            severity=parts.get("severity"),
            persona=parts.get("persona"),
        )

    def threshold(self, node: yaml.Node, kpi: str) -> Any:
        ok, value = self.scalar(node, kpi, "targets.threshold")
        if not ok:
            return _MISSING
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(node, kpi, "targets.threshold", "must be a number")
            return _MISSING
        try:
            return validate.measure(float(value), "threshold")
        except (BadInput, OverflowError) as error:
            message = error.message if isinstance(error, BadInput) else "too large"
            self.problem(node, kpi, "targets.threshold", message)
            return _MISSING


_MISSING: Any = object()


def _slug_in(node: yaml.Node) -> str | None:
    """Return the text an entry gives as its slug, to name it by in problems (else None)."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if (
            isinstance(key, yaml.ScalarNode)
            and key.value == "slug"
            and isinstance(value, yaml.ScalarNode)
            and value.tag == "tag:yaml.org,2002:str"
        ):
            return str(value.value)
    return None


class _Dumper(yaml.SafeDumper):
    """Writes text holding a character YAML reads as a line break (NEL, LS, PS) double-quoted,
    where it is escaped, so that the file reads back as exported."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if any(ch in value for ch in "\x85\u2028\u2029"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_str(value)


_Dumper.add_representer(str, _text)


def export(definitions: Sequence[Definition]) -> str:
    """Return the definitions as a definitions file: by slug, fields in the page's order."""
    entries = [_entry(d) for d in sorted(definitions, key=lambda d: d.slug)]
    body = yaml.dump(
        {"kpis": entries},
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    return HEADER + body


def _entry(d: Definition) -> dict[str, Any]:
    return {
        "slug": d.slug,
        "name": d.name,
        "description": d.description,
        "formula": d.formula,
        "expression": d.expression,
        "units": d.units,
        "targets": [_target(t) for t in d.targets],
        "data_sources": list(d.data_sources),
        "visibility": d.visibility.value,
        "owner": d.owner,
        "review_cadence": d.review_cadence,
        "status": d.status.value,
    }


def _target(t: Target) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if t.severity is not None:
        found["severity"] = t.severity.value
    if t.persona is not None:
        found["persona"] = t.persona.value
    found["comparison"] = t.comparison.value.lower()
    threshold = float(t.threshold)
    found["threshold"] = threshold if math.isfinite(threshold) else str(threshold)
    return found


__all__ = ["InvalidFile", "Problem", "export", "parse", "targets"]
