"""The formula language: seed KPIs by hand, as_of, nulls, compile errors, and hostile input."""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import model
from registry.errors import BadInput
from registry.formulas import (
    Formula,
    FormulaError,
    IncidentData,
    Result,
    compile_formula,
)
from registry.formulas import formula as formula_module
from registry.formulas.seed import SEED_EXPRESSIONS

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def clean_db() -> None:
    """Override the suite's database reset: these tests build records and touch no database."""


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def incident(
    resolved: float | None = 95, severity: model.Severity = model.Severity.P1
) -> model.Incident:
    return model.Incident(
        pk=1,
        key="INC-1",
        title="Checkout down",
        severity=severity,
        detected_at=T0,
        resolved_at=None if resolved is None else at(resolved),
    )


def alert(minute: float, source: str | None = "pager") -> model.Alert:
    return model.Alert(pk=int(minute * 10), incident_pk=1, issue_time=at(minute), source=source)


def event(minute: float, phase: str | None, kind: str = "phase") -> model.TimelineEvent:
    return model.TimelineEvent(
        incident_pk=1, kind=kind, phase=phase, occurred_at=at(minute), note=None
    )


def milestone(name: str, eta: float, delivered: float | None) -> model.Milestone:
    return model.Milestone(
        incident_pk=1,
        name=name,
        committed_eta=at(eta),
        delivered_at=None if delivered is None else at(delivered),
    )


def survey(score: int, minute: float) -> model.SurveyResponse:
    return model.SurveyResponse(incident_pk=1, score=score, submitted_at=at(minute))


def data(
    *,
    inc: model.Incident | None = None,
    alerts: Sequence[model.Alert] = (),
    timeline: Sequence[model.TimelineEvent] = (),
    milestones: Sequence[model.Milestone] = (),
    surveys: Sequence[model.SurveyResponse] = (),
) -> IncidentData:
    return IncidentData(
        incident=inc or incident(),
        alerts=alerts,
        timeline=timeline,
        milestones=milestones,
        surveys=surveys,
    )


def full() -> IncidentData:
    """An incident with some of everything, used where the exact data does not matter."""
    return data(
        alerts=[alert(30, None), alert(-5), alert(2, "synthetic")],
        timeline=[event(0, "detect"), event(7, "gather"), event(40, "mitigate"), event(50, None)],
        milestones=[milestone("a", 20, 15), milestone("b", 40, 52), milestone("c", 60, None)],
        surveys=[survey(4, 200), survey(5, 300), survey(3, 250)],
    )


def run(source: str, incident_data: IncidentData) -> Result | None:
    return compile_formula(source).evaluate(incident_data)


def value(source: str, incident_data: IncidentData | None = None) -> float | None:
    result = run(source, incident_data or full())
    return None if result is None else result.value


# The four seed KPIs, against hand calculations.


def test_mttr_is_minutes_from_detected_to_resolved_as_of_resolution() -> None:
    result = run(SEED_EXPRESSIONS["mttr"], data(inc=incident(resolved=95.5)))
    assert result == Result(value=95.5, as_of=at(95.5))


def test_mttr_has_no_value_while_unresolved() -> None:
    assert run(SEED_EXPRESSIONS["mttr"], data(inc=incident(resolved=None))) is None


def test_mtta_is_minutes_from_first_alert_to_gather_as_of_gather() -> None:
    incident_data = data(
        alerts=[alert(30), alert(-5), alert(2)],  # not in time order; later duplicates ignored
        timeline=[event(12, "gather"), event(0, "detect"), event(7, "gather")],  # first gather: 7
    )
    assert run(SEED_EXPRESSIONS["mtta"], incident_data) == Result(value=12.0, as_of=at(7))


def test_mtta_as_of_is_the_first_alert_when_that_is_later_than_gather() -> None:
    incident_data = data(alerts=[alert(9), alert(20)], timeline=[event(7, "gather")])
    assert run(SEED_EXPRESSIONS["mtta"], incident_data) == Result(value=-2.0, as_of=at(9))


def test_mtta_has_no_value_without_a_gather_phase() -> None:
    incident_data = data(alerts=[alert(-5)], timeline=[event(0, "detect"), event(3, None)])
    assert run(SEED_EXPRESSIONS["mtta"], incident_data) is None


def test_mtta_has_no_value_without_alerts() -> None:
    assert run(SEED_EXPRESSIONS["mtta"], data(timeline=[event(7, "gather")])) is None


def test_cadence_is_the_percent_of_milestones_on_or_before_eta() -> None:
    incident_data = data(
        milestones=[
            milestone("early", 20, 15),
            milestone("exactly on time", 30, 30),
            milestone("late", 40, 52),
            milestone("not delivered", 60, None),
        ]
    )
    result = run(SEED_EXPRESSIONS["cadence-adherence"], incident_data)
    # 2 of 4 on time. as_of: the latest ETA (60), the only later time among the milestones
    # used; the late delivery (52) was filtered out of the numerator.
    assert result == Result(value=50.0, as_of=at(60))


def test_cadence_as_of_includes_on_time_deliveries_after_the_latest_eta() -> None:
    incident_data = data(milestones=[milestone("a", 90, 80), milestone("b", 10, 11)])
    assert run(SEED_EXPRESSIONS["cadence-adherence"], incident_data) == Result(50.0, at(90))


def test_cadence_is_zero_when_nothing_was_on_time() -> None:
    incident_data = data(milestones=[milestone("late", 10, 11), milestone("open", 20, None)])
    assert run(SEED_EXPRESSIONS["cadence-adherence"], incident_data) == Result(0.0, at(20))


def test_cadence_has_no_value_without_milestones() -> None:
    assert run(SEED_EXPRESSIONS["cadence-adherence"], data()) is None


def test_satisfaction_is_the_mean_score_as_of_the_latest_survey() -> None:
    incident_data = data(surveys=[survey(4, 200), survey(5, 300), survey(3, 250)])
    assert run(SEED_EXPRESSIONS["stakeholder-satisfaction"], incident_data) == Result(4.0, at(300))


def test_satisfaction_has_no_value_without_surveys() -> None:
    assert run(SEED_EXPRESSIONS["stakeholder-satisfaction"], data()) is None


def test_seed_expressions_cover_the_four_kpis() -> None:
    assert sorted(SEED_EXPRESSIONS) == [
        "cadence-adherence",
        "mtta",
        "mttr",
        "stakeholder-satisfaction",
    ]


# Null semantics and values that must not be given.


@pytest.mark.parametrize(
    "source",
    [
        "1 + null",
        "-null + 1",
        "minutes(null)",
        "null + minutes(resolved_at - detected_at)",
        "minutes(phase_entered_at(null) - detected_at)",
    ],
)
def test_arithmetic_with_null_is_no_value(source: str) -> None:
    assert value(source) is None


@pytest.mark.parametrize(
    "source",
    [
        "1 / 0",
        "count(alerts) / count(surveys where score > 5)",
        "minutes(resolved_at - detected_at) / minutes(detected_at - detected_at)",
        "1e308 * 10",
        "-1e308 - 1e308",
        "minutes(detected_at + (resolved_at - detected_at) * 1e12 - detected_at)",
        "hours((resolved_at - detected_at) * 1e300 * 1e10)",
    ],
)
def test_division_by_zero_and_overflow_give_no_value(source: str) -> None:
    assert value(source) is None


def test_a_score_too_large_for_a_float_gives_no_value() -> None:
    incident_data = data(surveys=[survey(10**400, 5), survey(4, 6)])
    assert run("avg(surveys.score)", incident_data) is None
    assert run("count(surveys where score > 5)", incident_data) == Result(1.0, at(5))


def test_where_treats_a_null_comparison_as_false() -> None:
    assert value('count(alerts where source == "pager")') == 1
    assert value('count(alerts where source != "pager")') == 1  # the null source is neither
    assert value("count(milestones where delivered_at > committed_eta)") == 1


def test_and_or_not_follow_three_valued_logic() -> None:
    late_or_b = 'count(milestones where delivered_at > committed_eta or name == "c")'
    assert value(late_or_b) == 2  # null or true is true
    assert value("count(milestones where not (delivered_at > committed_eta))") == 1
    assert value('count(milestones where name == "c" and delivered_at > committed_eta)') == 0
    assert value("count(milestones where null or true)") == 3
    assert value("count(milestones where null and false)") == 0
    assert value("count(milestones where not null)") == 0


def test_comparison_with_a_null_literal_is_never_true() -> None:
    assert value("count(milestones where delivered_at == null)") == 0


def test_count_of_an_empty_collection_is_zero_as_of_detection() -> None:
    assert run("count(alerts)", data()) == Result(0.0, T0)
    assert run('count(alerts where source == "nobody")', full()) == Result(0.0, T0)
    assert run("sum(surveys.score)", data()) == Result(0.0, T0)


@pytest.mark.parametrize(
    "source",
    [
        "avg(surveys.score)",
        "minutes(min(alerts.issue_time) - detected_at)",
        "minutes(max(milestones.delivered_at) - detected_at)",
        "minutes(first(timeline.occurred_at) - detected_at)",
        "minutes(last(timeline.occurred_at) - detected_at)",
    ],
)
def test_other_aggregates_of_an_empty_collection_have_no_value(source: str) -> None:
    assert run(source, data()) is None


def test_min_and_max_skip_null_values() -> None:
    assert run("minutes(max(milestones.delivered_at) - detected_at)", full()) == Result(52, at(52))
    assert run("minutes(min(milestones.delivered_at) - detected_at)", full()) == Result(15, at(20))


def test_first_and_last_pick_by_natural_time_and_may_be_null() -> None:
    assert run("minutes(first(milestones.delivered_at) - detected_at)", full()) == Result(
        15, at(20)
    )
    assert run("minutes(last(milestones.delivered_at) - detected_at)", full()) is None  # "c"


def test_first_with_a_filter_picks_among_the_kept_items() -> None:
    source = "minutes(first(timeline.occurred_at where phase != null) - detected_at)"
    assert run(source, full()) is None  # phase != null is null, so nothing is kept
    source = 'minutes(first(timeline.occurred_at where phase == "mitigate") - detected_at)'
    assert run(source, full()) == Result(40, at(40))


def test_sum_and_avg_with_a_filter() -> None:
    assert run("sum(surveys.score where score >= 4)", full()) == Result(9.0, at(300))
    before = "submitted_at < detected_at + (resolved_at - detected_at) * 3"  # before minute 285
    assert run(f"avg(surveys.score where {before})", full()) == Result(3.5, at(250))


def test_where_can_read_incident_fields() -> None:
    assert value('count(alerts where severity == "P1")') == 3
    assert value('count(alerts where severity == "P2")') == 0
    assert value("count(alerts where issue_time < detected_at)") == 1


def test_phase_entered_at_works_inside_where() -> None:
    assert value('count(alerts where issue_time < phase_entered_at("gather"))') == 2


def test_a_formula_of_constants_is_as_of_detection() -> None:
    assert run("1 + 2 * 3 - 4 / 2", full()) == Result(5.0, T0)


def test_arithmetic_on_durations() -> None:
    assert value("hours((resolved_at - detected_at) * 2)") == pytest.approx(95 * 2 / 60)
    assert value("(resolved_at - detected_at) / (resolved_at - detected_at)") == 1
    assert value("minutes(resolved_at - (resolved_at - detected_at) / 5 - detected_at)") == 76
    assert value("minutes(-(detected_at - resolved_at) + (resolved_at - detected_at))") == 190


def test_naive_datetimes_are_read_as_utc() -> None:
    naive = model.Incident(1, "INC-1", "t", model.Severity.P2, datetime(2026, 3, 1, 9), None)
    incident_data = data(inc=naive, surveys=[survey(5, 10)])
    assert run("minutes(last(surveys.submitted_at) - detected_at)", incident_data) == Result(
        10, at(10)
    )


def test_the_same_data_in_any_order_gives_the_same_result() -> None:
    base = full()
    shuffler = random.Random(7)
    for source in [*SEED_EXPRESSIONS.values(), "minutes(last(alerts.issue_time) - detected_at)"]:
        expected = run(source, base)
        for _ in range(10):
            shuffled = data(
                alerts=shuffler.sample(list(base.alerts), len(base.alerts)),
                timeline=shuffler.sample(list(base.timeline), len(base.timeline)),
                milestones=shuffler.sample(list(base.milestones), len(base.milestones)),
                surveys=shuffler.sample(list(base.surveys), len(base.surveys)),
            )
            assert run(source, shuffled) == expected


def test_evaluate_never_parses_again(monkeypatch: pytest.MonkeyPatch) -> None:
    formula = compile_formula(SEED_EXPRESSIONS["cadence-adherence"])

    def no_parsing(source: str) -> Any:
        raise AssertionError("evaluate parsed the formula again")

    monkeypatch.setattr(formula_module, "parse", no_parsing)
    monkeypatch.setattr(formula_module, "check", no_parsing)
    incident_data = full()
    results = {formula.evaluate(incident_data) for _ in range(2000)}
    assert results == {Result(100 / 3, at(60))}


def test_formula_keeps_its_source() -> None:
    formula = compile_formula(SEED_EXPRESSIONS["mttr"])
    assert isinstance(formula, Formula)
    assert formula.source == SEED_EXPRESSIONS["mttr"]


# Compile errors: each kind, with the offset it points at.


@pytest.mark.parametrize(
    ("source", "position", "message"),
    [
        # characters and tokens
        ("detected_at # x", 12, "unexpected character '#'"),
        ("a = b", 2, "use '=='"),
        ("x && y", 2, "use 'and'"),
        ('phase_entered_at("gather)', 17, "unterminated string"),
        ('phase_entered_at("a\\nb")', 19, "unsupported escape"),
        ("12abc", 0, "malformed number"),
        ("1.2.3", 0, "malformed number"),
        ("1e400", 0, "too large"),
        ("", 0, "empty formula"),
        ("   ", 0, "empty formula"),
        ("café", 3, "unexpected character"),
        # syntax
        ("1 +", 3, "expected a value, got end of formula"),
        ("(1 + 2", 6, "expected ')'"),
        ("count(alerts", 12, "expected ')'"),
        ("1 2", 2, "expected an operator or the end, got '2'"),
        ("1 < 2 < 3", 6, "cannot be chained"),
        ("alerts.", 7, "expected a field name after '.'"),
        ("count(alerts where)", 18, "expected a value"),
        # names and functions
        ("minutes(resolvd_at - detected_at)", 8, "unknown name 'resolvd_at'"),
        ("minutes(resolvd_at - detected_at)", 8, "did you mean 'resolved_at'?"),
        ("__import__", 0, "unknown name '__import__'"),
        ('open("/etc/passwd")', 0, "'open' is not a known function"),
        ("detected_at(1)", 0, "'detected_at' is not a function"),
        ("count + 1", 0, "count is a function"),
        ("minutes()", 0, "minutes takes 1 argument"),
        ("minutes(resolved_at - detected_at, 2)", 0, "got 2"),
        ("count(alerts, surveys)", 0, "count takes 1 argument"),
        ("phase_entered_at()", 0, "takes 1 argument"),
        # types
        ("detected_at + 1", 12, "cannot apply '+' to a datetime and a number"),
        ('1 + "a"', 2, "a number and a string"),
        ("minutes(3)", 8, "minutes needs a duration, not a number"),
        ("hours(detected_at)", 6, "not a datetime"),
        ("minutes(phase_entered_at(1) - detected_at)", 25, "needs a string"),
        ('-"x"', 0, "cannot apply '-' to a string"),
        ("count(alerts where not 1)", 19, "cannot apply 'not' to a number"),
        ("1 and true", 2, "cannot apply 'and'"),
        ("true < false", 5, "cannot apply '<' to a bool and a bool"),
        ("avg(alerts.source)", 4, "avg cannot apply to alerts.source, which is a string"),
        ("sum(milestones.delivered_at)", 4, "which is a datetime"),
        ("count(1)", 6, "count needs a collection"),
        ("avg(surveys)", 4, "avg needs a field, e.g. avg(surveys.score)"),
        ("count(alerts where 1)", 19, "'where' needs a true/false condition"),
        ("minutes(resolved_at - detected_at where true)", 34, "'where' only goes in aggregates"),
        # fields and collections
        ("count(detected_at.x)", 18, "'.x' needs a collection, not a datetime"),
        ("count(alerts.source.x)", 20, "not alerts.source"),
        ("avg(surveys.rating)", 12, "surveys has no field 'rating'"),
        ("alerts + 1", 0, "alerts is a collection"),
        ("count(alerts where alerts)", 19, "cannot be used inside 'where'"),
        ("count(alerts where count(surveys) > 1)", 19, "count(...) cannot be used inside 'where'"),
        ("count(alerts where score > 1)", 19, "unknown name 'score'"),
        # the result must be a number
        ("detected_at", 0, "must give a number, but this gives a datetime"),
        ("resolved_at - detected_at", 0, "gives a duration"),
        ("count(alerts) > 1", 0, "gives a bool"),
        ('"P1"', 0, "gives a string"),
        ("null", 0, "gives null"),
    ],
)
def test_compile_error_points_at_the_problem(source: str, position: int, message: str) -> None:
    with pytest.raises(FormulaError) as caught:
        compile_formula(source)
    assert caught.value.position == position
    assert message in caught.value.message
    assert caught.value.message.endswith(f"at position {position}")


def test_formula_error_is_bad_user_input() -> None:
    with pytest.raises(BadInput) as caught:
        compile_formula("nope")
    assert caught.value.code == "BAD_USER_INPUT"


def test_source_longer_than_2000_characters_is_rejected() -> None:
    compile_formula("1" + " " * 1999)
    with pytest.raises(FormulaError, match="longer than 2000") as caught:
        compile_formula("1" + " " * 2000)
    assert caught.value.position == 2000


def balanced(levels: int) -> str:
    """Return a sum of 2**levels ones as a balanced tree: 2**(levels+1) - 1 nodes."""
    return "1" if levels == 0 else f"({balanced(levels - 1)} + {balanced(levels - 1)})"


def test_more_than_200_nodes_is_rejected() -> None:
    two_hundred = f"{balanced(6)} + {balanced(5)} + -1" + " + 1" * 3  # 127 + 1 + 63 + 9 nodes
    assert compile_formula(two_hundred).evaluate(full()) == Result(98.0, T0)
    with pytest.raises(FormulaError, match="more than 200 parts"):
        compile_formula(two_hundred + " + 1")


def test_nesting_deeper_than_32_levels_is_rejected() -> None:
    compile_formula("(" * 32 + "1" + ")" * 32)
    compile_formula("-" * 31 + "1")
    for source, position in [
        ("(" * 33 + "1" + ")" * 33, 32),
        ("-" * 40 + "1", 32),
        ("minutes(" * 33 + "x" + ")" * 33, 256),
        (" + ".join(["1"] * 40), 26),  # a left-leaning chain 39 levels deep
    ]:
        with pytest.raises(FormulaError, match="nested more than 32 levels") as caught:
            compile_formula(source)
        assert caught.value.position == position


@pytest.mark.parametrize(
    "source",
    [
        "__import__('os')",
        '__import__("os").system("ls")',
        "().__class__",
        "().__class__.__bases__[0].__subclasses__()",
        'open("/etc/passwd")',
        'open("/etc/passwd").read()',
        "lambda: 1",
        "(lambda x: x)(1)",
        'f"{1+1}"',
        "exec('1')",
        'eval("1")',
        "globals()",
        "surveys.__class__",
        "count(alerts.__dict__)",
        "detected_at.__class__",
        "[x for x in alerts]",
        "1; import os",
        "1 if true else 2",
        "\x00",
        "\u202e1",
        "1 ** 2",
        "1 // 2",
        "1 % 2",
    ],
)
def test_hostile_text_is_only_ever_a_formula_error(source: str) -> None:
    with pytest.raises(FormulaError):
        compile_formula(source)


# Property tests: whatever the text, compile_formula gives a Formula or a FormulaError, and a
# Formula's evaluate gives None or a finite Result as of a timestamp from the data.

NAMES = [
    "detected_at",
    "resolved_at",
    "severity",
    "alerts",
    "timeline",
    "milestones",
    "surveys",
    "issue_time",
    "source",
    "kind",
    "phase",
    "occurred_at",
    "note",
    "name",
    "committed_eta",
    "delivered_at",
    "score",
    "submitted_at",
    "minutes",
    "hours",
    "phase_entered_at",
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "first",
    "last",
    "nope",
    "__import__",
    "__class__",
]
KEYWORDS = ["and", "or", "not", "true", "false", "null", "where"]
SYMBOLS = ["+", "-", "*", "/", "<", "<=", ">", ">=", "==", "!=", "(", ")", ",", ".", "=", "!"]
LITERALS = ["0", "1", "2.5", "100", "1e308", "1e309", '"gather"', '"P1"', '""', '"', "'x'"]
TOKENS = NAMES + KEYWORDS + SYMBOLS + LITERALS
HOSTILE = [
    "__import__('os')",
    "().__class__",
    'open("/etc/passwd")',
    "lambda: 0",
    'f"{x}"',
    "exec",
    "\\",
    "\n",
    "\x00",
    "é",
]

LEAVES = [
    "0",
    "1",
    "60",
    "1e300",
    "null",
    "true",
    '"gather"',
    '"P1"',
    "detected_at",
    "resolved_at",
    "severity",
    'phase_entered_at("gather")',
    "count(alerts)",
    "count(milestones)",
    "avg(surveys.score)",
    "sum(surveys.score)",
    "first(alerts.issue_time)",
    "last(timeline.phase)",
    "min(milestones.delivered_at)",
    "max(surveys.submitted_at)",
    "issue_time",
    "delivered_at",
    "committed_eta",
    "score",
    "phase",
    "alerts",
    "surveys.score",
]
COLLECTION_REFS = [
    "alerts",
    "alerts.issue_time",
    "timeline.occurred_at",
    "timeline.phase",
    "milestones.delivered_at",
    "milestones.committed_eta",
    "surveys.score",
    "surveys.submitted_at",
]
AGGREGATES = ["count", "sum", "avg", "min", "max", "first", "last"]
BINARY_OPS = ["+", "-", "*", "/", "<", "<=", "==", "!=", "and", "or"]


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Bigger expressions from smaller ones, following the grammar (but not the types)."""
    return st.one_of(
        st.builds("({} {} {})".format, children, st.sampled_from(BINARY_OPS), children),
        st.builds("{}{}".format, st.sampled_from(["-", "not ", "-("]), children).map(
            lambda text: text + ")" if text.startswith("-(") else text
        ),
        st.builds("{}({})".format, st.sampled_from(["minutes", "hours"]), children),
        st.builds("phase_entered_at({})".format, children),
        st.builds(
            "{}({} where {})".format,
            st.sampled_from(AGGREGATES),
            st.sampled_from(COLLECTION_REFS),
            children,
        ),
    )


GRAMMAR = st.recursive(st.sampled_from(LEAVES), _extend, max_leaves=25)
# Well-typed formulas, generated by type, so that most of them get as far as evaluation.
SCALARS = {  # usable anywhere, 'where' included
    "number": ["0", "1", "2.5", "60", "1e300", "null"],
    "datetime": ["detected_at", "resolved_at", 'phase_entered_at("gather")', "null"],
    "duration": ["(resolved_at - detected_at)", "null"],
    "string": ['"gather"', '"P1"', '"pager"', "severity", "null"],
    "bool": ["true", "false", "null"],
}
ITEM_FIELDS = {
    "alerts": {"datetime": ["issue_time"], "string": ["source"]},
    "timeline": {"datetime": ["occurred_at"], "string": ["kind", "phase", "note"]},
    "milestones": {"datetime": ["committed_eta", "delivered_at"], "string": ["name"]},
    "surveys": {"number": ["score"], "datetime": ["submitted_at"]},
}
AGGREGATES_OF = {
    "number": ["sum", "avg", "min", "max", "first", "last"],
    "datetime": ["min", "max", "first", "last"],
    "string": ["min", "max", "first", "last"],
}


def _pairs(template: str, *parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(template.format, *parts)


@functools.cache
def typed(kind: str, depth: int, collection: str | None = None) -> st.SearchStrategy[str]:
    """Formulas of one type; inside 'where' over collection, with its fields and no aggregates."""
    leaves = SCALARS[kind] + ITEM_FIELDS.get(collection or "", {}).get(kind, [])
    options = [st.sampled_from(leaves)]
    if collection is None and kind in AGGREGATES_OF:
        options.append(aggregate(kind, depth))
    if depth > 0:
        options.extend(_rules(kind, depth - 1, collection))
    return st.one_of(options)


def _rules(kind: str, depth: int, collection: str | None) -> list[st.SearchStrategy[str]]:
    """The ways to build a value of kind from smaller ones."""
    number, when, span = (typed(k, depth, collection) for k in ("number", "datetime", "duration"))
    ops = st.sampled_from
    if kind == "number":
        return [
            _pairs("({} {} {})", number, ops(["+", "-", "*", "/"]), number),
            _pairs("-{}", number),
            _pairs("{}({})", ops(["minutes", "hours"]), span),
            _pairs("({} / {})", span, span),
        ]
    if kind == "duration":
        return [
            _pairs("({} - {})", when, when),
            _pairs("({} * {})", span, number),
            _pairs("({} + {})", span, span),
        ]
    if kind == "datetime":
        return [_pairs("({} {} {})", when, ops(["+", "-"]), span)]
    if kind == "bool":
        truth = typed("bool", depth, collection)
        compared = [
            _pairs("({} {} {})", typed(k, depth, collection), ops(["<", "<=", "==", "!="]), t)
            for k in ("number", "datetime", "string")
            for t in [typed(k, depth, collection)]
        ]
        return [*compared, _pairs("({} {} {})", truth, ops(["and", "or"]), truth)]
    return []


def aggregate(kind: str, depth: int) -> st.SearchStrategy[str]:
    """Aggregates giving kind: count of anything, or a projection of a field of that kind."""
    calls = [
        (name, f"{collection}.{field}", collection)
        for collection, fields in ITEM_FIELDS.items()
        for field in fields.get(kind, [])
        for name in AGGREGATES_OF[kind]
    ]
    if kind == "number":
        calls += [("count", collection, collection) for collection in ITEM_FIELDS]
    return st.sampled_from(calls).flatmap(
        lambda call: st.one_of(
            st.just(f"{call[0]}({call[1]})"),
            _pairs(f"{call[0]}({call[1]} where {{}})", typed("bool", min(depth, 2), call[2])),
        )
    )


FORMULAS = typed("number", 3)

TOKEN_SOUP = st.lists(st.sampled_from(TOKENS), max_size=80).map(" ".join)
DEEP = st.builds(
    lambda pair, depth: pair[0] * depth + "1" + pair[1] * depth,
    st.sampled_from([("(", ")"), ("-", ""), ("not ", ""), ("minutes(", ")"), ("count(", ")")]),
    st.integers(0, 1200),
)
LONG = st.builds(
    lambda token, repeat: (token + " ") * repeat,
    st.sampled_from([*TOKENS, "1 +", "(1) *", "count(alerts) +"]),
    st.integers(100, 1100),
)
HOSTILE_MIX = st.lists(st.sampled_from(HOSTILE + TOKENS), min_size=1, max_size=20).map("".join)
ANY_TEXT = st.one_of(st.text(max_size=300), TOKEN_SOUP, DEEP, LONG, HOSTILE_MIX, GRAMMAR, FORMULAS)

UTC_TIMES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
NEAR_TIMES = st.integers(-10_000, 10_000).map(at)
TIMES = st.one_of(NEAR_TIMES, NEAR_TIMES, UTC_TIMES, st.datetimes(timezones=st.none()))
OPTIONAL_TIMES = st.one_of(st.none(), TIMES)
PHASES = st.sampled_from([None, "detect", "gather", "mitigate"])
INCIDENT_DATA = st.builds(
    IncidentData,
    incident=st.builds(
        model.Incident,
        pk=st.just(1),
        key=st.just("INC-1"),
        title=st.just("t"),
        severity=st.sampled_from(model.Severity),
        detected_at=TIMES,
        resolved_at=OPTIONAL_TIMES,
    ),
    alerts=st.lists(
        st.builds(model.Alert, st.just(1), st.just(1), TIMES, st.sampled_from([None, "pager"])),
        max_size=4,
    ),
    timeline=st.lists(
        st.builds(model.TimelineEvent, st.just(1), st.just("phase"), PHASES, TIMES, st.none()),
        max_size=4,
    ),
    milestones=st.lists(
        st.builds(model.Milestone, st.just(1), st.just("m"), TIMES, OPTIONAL_TIMES), max_size=4
    ),
    surveys=st.lists(
        st.builds(
            model.SurveyResponse, st.just(1), st.one_of(st.integers(1, 5), st.integers()), TIMES
        ),
        max_size=4,
    ),
)


def timestamps(incident_data: IncidentData) -> set[datetime]:
    """Return every timestamp in the data, naive ones read as UTC."""
    found: list[datetime | None] = [
        incident_data.incident.detected_at,
        incident_data.incident.resolved_at,
        *(a.issue_time for a in incident_data.alerts),
        *(e.occurred_at for e in incident_data.timeline),
        *(m.committed_eta for m in incident_data.milestones),
        *(m.delivered_at for m in incident_data.milestones),
        *(s.submitted_at for s in incident_data.surveys),
    ]
    return {t if t.tzinfo else t.replace(tzinfo=UTC) for t in found if t is not None}


def assert_sound(formula: Formula, incident_data: IncidentData) -> None:
    """Assert evaluate gives no value, or a finite one as of a timestamp in the data."""
    result = formula.evaluate(incident_data)
    if result is None:
        return
    assert isinstance(result.value, float)
    assert math.isfinite(result.value)
    assert result.as_of in timestamps(incident_data)
    assert result.as_of.tzinfo is not None
    assert formula.evaluate(incident_data) == result


def compiles_or_formula_error(source: str) -> Formula | None:
    """Return the compiled formula, None on a FormulaError; any other exception fails the test."""
    try:
        return compile_formula(source)
    except FormulaError as error:
        assert 0 <= error.position <= len(source)
        assert len(error.message) < 300
        return None


@FUZZ
@given(source=ANY_TEXT)
def test_any_text_compiles_or_raises_formula_error(source: str) -> None:
    formula = compiles_or_formula_error(source)
    if formula is not None:
        assert_sound(formula, full())
        assert_sound(formula, data())
        assert_sound(formula, data(inc=incident(resolved=None)))


@FUZZ
@given(source=FORMULAS, incident_data=INCIDENT_DATA, shuffle=st.randoms(use_true_random=False))
def test_compiled_formulas_are_sound_and_order_independent_on_any_data(
    source: str, incident_data: IncidentData, shuffle: random.Random
) -> None:
    formula = compiles_or_formula_error(source)
    if formula is None:
        return
    assert_sound(formula, incident_data)
    reordered = IncidentData(
        incident=incident_data.incident,
        alerts=shuffle.sample(list(incident_data.alerts), len(incident_data.alerts)),
        timeline=shuffle.sample(list(incident_data.timeline), len(incident_data.timeline)),
        milestones=shuffle.sample(list(incident_data.milestones), len(incident_data.milestones)),
        surveys=shuffle.sample(list(incident_data.surveys), len(incident_data.surveys)),
    )
    assert formula.evaluate(reordered) == formula.evaluate(incident_data)


@settings(max_examples=300, deadline=None)
@given(incident_data=INCIDENT_DATA)
def test_seed_kpis_are_sound_on_any_data(incident_data: IncidentData) -> None:
    for source in SEED_EXPRESSIONS.values():
        assert_sound(compile_formula(source), incident_data)
