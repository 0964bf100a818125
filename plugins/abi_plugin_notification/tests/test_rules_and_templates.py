"""Properties of priority rules and template rendering (hypothesis)."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_plugin_notification.rules import PRIORITIES, RuleError, check_condition, first_match
from abi_plugin_notification.templates import (
    MissingVariable,
    TemplateError,
    parse_template,
    render,
)

FAST = settings(max_examples=60, deadline=None)
LEVELS = st.sampled_from(["high", "medium", "low", "critical", "o'brien"])
NAMES = st.text(string.ascii_lowercase, min_size=1, max_size=8).filter(
    lambda n: (
        n
        not in {"true", "false", "null", "parameters", "and", "or", "not", "in", "is", "if", "else"}
    )
)


@FAST
@given(rules=st.lists(LEVELS, max_size=6), severity=LEVELS)
def test_first_matching_rule_wins(rules: list[str], severity: str) -> None:
    """The index returned is the first rule whose level equals the severity, else None."""
    conditions = [f"severity == {level!r}" for level in rules]
    index, notes = first_match(conditions, {"severity": severity})
    expected = next((i for i, level in enumerate(rules) if level == severity), None)
    assert index == expected
    assert notes == []


@FAST
@given(rules=st.lists(LEVELS, min_size=1, max_size=4))
def test_missing_parameter_matches_no_rule(rules: list[str]) -> None:
    """Without the parameter no rule holds, and each skipped rule is noted."""
    conditions = [f"severity == {level!r}" for level in rules]
    index, notes = first_match(conditions, {})
    assert index is None
    assert len(notes) == len(rules)


@FAST
@given(amount=st.integers(-(10**6), 10**6), limit=st.integers(-(10**6), 10**6))
def test_numeric_conditions(amount: int, limit: int) -> None:
    """Arithmetic and comparisons evaluate as Python would, over the parameters."""
    index, _ = first_match([f"amount * 2 > {limit} and not amount == {limit}"], {"amount": amount})
    assert (index == 0) == (amount * 2 > limit and amount != limit)


@FAST
@given(text=st.text(max_size=60))
def test_any_condition_text_is_accepted_or_refused_cleanly(text: str) -> None:
    """Arbitrary text is either an allowed condition or a RuleError, never anything else."""
    try:
        check_condition(text)
    except RuleError:
        return


@pytest.mark.parametrize(
    "condition",
    [
        "severity.__class__",
        "__import__('os')",
        "open('x')",
        "[x for x in y]",
        "lambda: 1",
        "a := 1",
    ],
)
def test_dangerous_conditions_are_refused(condition: str) -> None:
    """Attributes, imports, unknown calls, comprehensions, lambdas, walrus: refused at save."""
    with pytest.raises(RuleError):
        check_condition(condition)


def test_a_condition_failing_at_run_names_its_rule() -> None:
    """A type error while evaluating is a RuleError naming the rule, not a silent no-match."""
    with pytest.raises(RuleError, match=r"priority_rules\[1\]"):
        first_match(["false", "amount > 5"], {"amount": "many"})
    assert set(PRIORITIES) == {"urgent", "high", "normal", "low"}


VALUES = st.dictionaries(NAMES, st.text(max_size=20), min_size=1, max_size=5)


@FAST
@given(values=VALUES)
def test_render_substitutes_each_placeholder_once(values: dict[str, str]) -> None:
    """Each ${name} becomes its value verbatim; values holding '$' are never rendered again."""
    names = sorted(values)
    template = "|".join(f"${{{n}}}" for n in names)
    assert render(template, values) == "|".join(values[n] for n in names)


@FAST
@given(values=VALUES, extra=NAMES)
def test_missing_variable_is_named(values: dict[str, str], extra: str) -> None:
    """A placeholder without a value raises MissingVariable naming it."""
    if extra in values:
        return
    with pytest.raises(MissingVariable) as raised:
        render(f"${{{extra}}}", values)
    assert raised.value.name == extra


@FAST
@given(
    value=st.one_of(st.integers(), st.booleans(), st.none(), st.lists(st.integers(), max_size=3))
)
def test_non_text_values_render_as_json(value: Any) -> None:
    """Numbers as written, true/false/null and lists as JSON."""
    expected = (
        str(value) if isinstance(value, int) and not isinstance(value, bool) else json.dumps(value)
    )
    assert render("$v", {"v": value}) == expected


def test_dotted_paths_and_escapes() -> None:
    """${a.b} reads nested objects and list items; $$ is a dollar; escape applies to values only."""
    values = {"incident": {"id": "INC-1", "tags": ["db", "eu"]}, "t": "<b>"}
    assert render("${incident.id} ${incident.tags.1} $$5", values) == "INC-1 eu $5"
    assert render("<i>$t</i>", values, escape=lambda s: s.replace("<", "&lt;")) == "<i>&lt;b></i>"


@pytest.mark.parametrize(
    "bad",
    ["Cost $ 5", "${unclosed", {"subject": "x"}, {"body": 3}, {"body": "x", "html": "y"}, 7],
)
def test_malformed_templates_are_refused(bad: Any) -> None:
    """A lone '$', an unclosed placeholder, a missing body, wrong types, unknown fields."""
    with pytest.raises(TemplateError):
        parse_template(bad)
