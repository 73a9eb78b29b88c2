"""Which target applies to a value, and whether the value meets it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from registry.model import Comparison, Persona, Severity, Summary, Target


def applicable(
    targets: Iterable[Target], *, severity: Severity | None, personas: frozenset[Persona]
) -> Target | None:
    """Return the most specific target for a severity and the viewer's personas, if any."""
    matching = [
        t
        for t in targets
        if t.severity in (severity, None) and (t.persona is None or t.persona in personas)
    ]
    if not matching:
        return None
    # The severity's own target beats a general one; a persona's own beats one for everyone.
    return max(matching, key=lambda t: (t.severity is not None, t.persona is not None))


def meets(target: Target | None, value: float | None) -> bool | None:
    """Return whether `value` meets `target`; None when either is missing."""
    if target is None or value is None:
        return None
    return target.met_by(value)


def summarize(
    count: int,
    mean: float | None,
    targets: Iterable[Target],
    *,
    severity: Severity | None,
    personas: frozenset[Persona],
    as_of: datetime,
) -> Summary:
    """Return a Summary of aggregated observations against their applicable target."""
    value = mean if count else None
    target = applicable(targets, severity=severity, personas=personas)
    return Summary(
        count=count, value=value, target=target, meets_target=meets(target, value), as_of=as_of
    )


def to_json(target: Target) -> dict[str, object]:
    """Return a target as stored in the database."""
    return {
        "severity": target.severity.value if target.severity else None,
        "persona": target.persona.value if target.persona else None,
        "comparison": target.comparison.value,
        "threshold": target.threshold,
    }


def from_json(raw: dict[str, object]) -> Target:
    """Return a target stored by to_json()."""
    return Target(
        comparison=Comparison(raw["comparison"]),
        threshold=float(raw["threshold"]),  # type: ignore[arg-type]
        severity=Severity(raw["severity"]) if raw.get("severity") else None,
        persona=Persona(raw["persona"]) if raw.get("persona") else None,
    )
