"""Safe expressions: simpleeval's evaluator with its cost bounded."""

from __future__ import annotations

import time
from typing import Any

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


def test_expressions_are_parsed_once_and_evaluated_afresh() -> None:
    """The parse of an expression is cached (same tree each time); evaluating it again
    with other names gives the new answer; a syntax error is not cached as a tree."""
    from abi_engine.expressions import parsed

    assert parsed("a + 1") is parsed("a + 1")
    evaluator = SafeEvaluator(names={"a": 1})
    assert evaluator.eval("a + 1") == 2
    evaluator.names = {"a": 41}
    assert evaluator.eval("a + 1") == 42
    with pytest.raises(SyntaxError):
        parsed("a +")
    with pytest.raises(SyntaxError):
        evaluator.eval("a +")


def test_transform_steps_share_an_evaluator_but_no_data() -> None:
    """The custom type's transform reuses one evaluator per thread: each evaluation sees
    only its own step's parameters and results, and none is kept afterwards, even when
    an expression fails."""
    from types import SimpleNamespace

    from abi_plugin_custom import actions

    def ctx(i: int) -> Any:
        return SimpleNamespace(parameters={"i": i}, results={"add": {"a": i + 1}})

    assert actions.evaluate({"b": "results['add']['a'] * 2"}, ctx(1)) == {"b": 4}
    assert actions.evaluate({"b": "results['add']['a'] * 2", "i": "parameters['i']"}, ctx(5)) == {
        "b": 12,
        "i": 5,
    }
    assert actions._evaluators.evaluator.names == {}
    with pytest.raises(actions.TransformError, match="nope"):
        actions.evaluate({"x": "parameters['nope']"}, ctx(2))
    assert actions._evaluators.evaluator.names == {}
    seen: list[Any] = []

    def other_thread() -> None:
        seen.append(actions.evaluate({"v": "parameters['i']"}, ctx(7)))
        seen.append(actions._evaluators.evaluator)

    import threading

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen[0] == {"v": 7}
    assert seen[1] is not actions._evaluators.evaluator
