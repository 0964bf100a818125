"""Safe expressions: simpleeval's evaluator with its cost bounded."""

from __future__ import annotations

import time

import pytest
import simpleeval
from hypothesis import given
from hypothesis import strategies as st

from abi_engine.expressions import MAX_ELEMENTS, ExpressionTooCostly, SafeEvaluator

COSTLY = [
    "[[1]*99999 for a in 'x'*9999]",  # nested comprehensions multiply simpleeval's bounds
    "[[0]*99999 for a in 'x'*9999 for b in 'y'*9]",
    "'x'*99999 + 'y'*99999 + 'z'*99999",
    "[1]*(10**6 + 1)",
    "('ab' * 50000) * 30",
    "2**10**6",
]
REFUSED_METHODS = [
    "'x'.ljust(10**9)",
    "'ab'.center(5 * 10**8)",
    "'x'.zfill(10**9)",
    "'a'.join(['b'])",
]


@pytest.mark.parametrize("expression", COSTLY)
def test_costly_expressions_are_refused_at_once(expression: str) -> None:
    """What would allocate gigabytes or burn seconds is refused before it does."""
    started = time.perf_counter()
    with pytest.raises((ExpressionTooCostly, simpleeval.IterableTooLong)):
        SafeEvaluator().eval(expression)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("expression", REFUSED_METHODS)
def test_methods_that_grow_their_object_are_not_available(expression: str) -> None:
    """Only methods whose result is no bigger than their object may be called."""
    with pytest.raises(simpleeval.FeatureNotAvailable):
        SafeEvaluator().eval(expression)


def test_ordinary_expressions_still_work() -> None:
    """Names, subscripts, safe methods, comprehensions, arithmetic and functions evaluate."""
    evaluator = SafeEvaluator(
        names={"parameters": {"a": 2, "name": " Ada ", "tags": ["x", "y"]}},
        functions={"len": len},
    )
    assert evaluator.eval("parameters['a'] ** 10 + 1") == 1025
    assert evaluator.eval("parameters['name'].strip().lower()") == "ada"
    assert evaluator.eval("[t.upper() for t in parameters['tags']]") == ["X", "Y"]
    assert evaluator.eval("parameters.get('missing', 0) + len(parameters['tags'])") == 2
    assert evaluator.eval("'a,b,c'.split(',')") == ["a", "b", "c"]
    assert len(evaluator.eval("'x' * 1000 + 'y' * 1000")) == 2000


def test_the_budget_is_per_evaluation() -> None:
    """Each evaluation starts with the whole budget."""
    evaluator = SafeEvaluator()
    rows = MAX_ELEMENTS // 2 // 90_000 + 1  # over half the budget
    expression = f"[[0] * 90000 for a in {'x' * rows!r}]"
    for _ in range(3):
        assert len(evaluator.eval(expression)) == rows


small = st.integers(min_value=-50, max_value=50)
words = st.text(alphabet="abc ,", max_size=8)


@given(
    st.one_of(
        st.tuples(small, st.sampled_from(["+", "-", "*", "//", "%", "**"]), small).map(
            lambda t: f"({t[0]}) {t[1]} ({t[2] % 6 if t[1] == '**' else t[2]})"
        ),
        st.tuples(words, st.integers(0, 20)).map(lambda t: f"{t[0]!r} * {t[1]}"),
        st.tuples(words, words).map(lambda t: f"{t[0]!r} + {t[1]!r}"),
        words.map(lambda w: f"{w!r}.strip().split(',')"),
        st.lists(small, max_size=6).map(lambda xs: f"[x * 2 for x in {xs!r} if x > 0]"),
    )
)
def test_agrees_with_simpleeval_on_cheap_expressions(expression: str) -> None:
    """On expressions within the bounds, the value is simpleeval's own."""
    try:
        expected = simpleeval.EvalWithCompoundTypes().eval(expression)
    except ZeroDivisionError:
        with pytest.raises(ZeroDivisionError):
            SafeEvaluator().eval(expression)
        return
    assert SafeEvaluator().eval(expression) == expected
