"""The expressions of the four seed KPIs, as the source-of-truth page defines them."""

from __future__ import annotations

SEED_EXPRESSIONS: dict[str, str] = {
    "mttr": "minutes(resolved_at - detected_at)",
    "mtta": 'minutes(phase_entered_at("gather") - first(alerts.issue_time))',
    "cadence-adherence": (
        "100 * count(milestones where delivered_at <= committed_eta) / count(milestones)"
    ),
    "stakeholder-satisfaction": "avg(surveys.score)",
}
