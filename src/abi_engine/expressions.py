"""Safe expressions (simpleeval, never Python's ``eval``) with bounded cost.

simpleeval allows only expressions over the names and functions it is given,
and bounds each literal, repetition and comprehension; but nested
comprehensions multiply its bounds (``[[1]*99999 for a in 'x'*9999]`` is a
billion elements) and string methods such as ``'x'.ljust(10**10)`` allocate
whatever they are asked. :class:`SafeEvaluator` closes those gaps, for every
expression a workflow's configuration or an execution's parameters carry:

- method calls are limited to :data:`SAFE_METHODS` (methods whose result is
  no bigger than their object: ``lower``, ``strip``, ``split``, ``get``...);
- ``*`` and ``+`` count the elements (characters, items) they create, and one
  evaluation may create at most :data:`MAX_ELEMENTS`;
- exponents are at most :data:`MAX_EXPONENT`.

A refused expression raises :class:`ExpressionTooCostly` or simpleeval's
``FeatureNotAvailable`` (both ``simpleeval.InvalidExpression``).
"""

from __future__ import annotations

import ast
import functools
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

import simpleeval

__all__ = [
    "MAX_ELEMENTS",
    "MAX_EXPONENT",
    "SAFE_METHODS",
    "ExpressionTooCostly",
    "SafeEvaluator",
    "check_key_expression",
    "evaluate_key",
]

#: Elements (characters of strings, items of lists, tuples and dicts) that the
#: operators of one evaluation may create in all.
MAX_ELEMENTS = 1_000_000
#: The largest exponent of ``**``.
MAX_EXPONENT = 1_000
#: Methods an expression may call: none returns more than its object holds.
SAFE_METHODS = frozenset(
    {
        # str
        "lower", "upper", "title", "capitalize", "casefold", "swapcase",
        "strip", "lstrip", "rstrip", "removeprefix", "removesuffix",
        "startswith", "endswith", "find", "rfind", "index", "rindex", "count",
        "split", "rsplit", "splitlines", "partition", "rpartition",
        "isdigit", "isdecimal", "isnumeric", "isalpha", "isalnum", "isspace",
        "islower", "isupper", "istitle",
        # dict
        "get", "keys", "values", "items",
    }
)  # fmt: skip


@functools.lru_cache(maxsize=4096)
def parsed(expr: str) -> Any:
    """``expr`` parsed (simpleeval's tree), cached: the expressions of a workflow's
    configuration are parsed once, not at every step of every execution. (The
    evaluator only reads the tree.)"""
    return simpleeval.SimpleEval.parse(expr)


class ExpressionTooCostly(simpleeval.InvalidExpression):  # type: ignore[misc]
    """An expression would create too much (see :data:`MAX_ELEMENTS`)."""


class SafeEvaluator(simpleeval.EvalWithCompoundTypes):  # type: ignore[misc]
    """simpleeval's evaluator with compound types, its cost bounded (see the module)."""

    def __init__(
        self,
        *,
        names: Mapping[str, Any] | None = None,
        functions: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        super().__init__(functions=dict(functions or {}), names=dict(names or {}))
        self._elements = 0
        operators: dict[Any, Any] = dict(self.operators)  # type: ignore[has-type]
        operators[ast.Mult] = self._counted(operators[ast.Mult])
        operators[ast.Add] = self._counted(operators[ast.Add])
        operators[ast.Pow] = _bounded_power
        self.operators = operators

    def eval(self, expr: str, previously_parsed: Any = None) -> Any:
        self._elements = 0
        return super().eval(expr, previously_parsed or parsed(expr))

    def _counted(self, operator: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def counted(a: Any, b: Any) -> Any:
            if operator is simpleeval.safe_mult:  # check a repetition before making it
                for operand, times in ((a, b), (b, a)):
                    if (
                        hasattr(operand, "__len__")
                        and isinstance(times, int)
                        and self._elements + len(operand) * max(times, 0) > MAX_ELEMENTS
                    ):
                        raise ExpressionTooCostly("the expression would create too many elements")
            result = operator(a, b)
            if hasattr(result, "__len__"):
                self._elements += len(result)
                if self._elements > MAX_ELEMENTS:
                    raise ExpressionTooCostly("the expression would create too many elements")
            return result

        return counted

    def _eval_call(self, node: ast.Call) -> Any:
        if isinstance(node.func, ast.Attribute) and node.func.attr not in SAFE_METHODS:
            raise simpleeval.FeatureNotAvailable(
                f"the method {node.func.attr!r} is not available in expressions"
            )
        return super()._eval_call(node)


def _bounded_power(a: Any, b: Any) -> Any:
    if isinstance(b, int | float) and abs(b) > MAX_EXPONENT:
        raise ExpressionTooCostly(f"exponents are at most {MAX_EXPONENT}")
    return simpleeval.safe_power(a, b)


#: The longest key expression (``concurrency.key``) a workflow may have.
MAX_KEY_EXPRESSION = 500


def check_key_expression(expr: str) -> str | None:
    """Why ``expr`` cannot be a key over ``parameters`` (``None``: it can).

    It must parse as one expression naming nothing but ``parameters``, and use
    only what :class:`SafeEvaluator` allows (tried on empty parameters).
    """
    if not expr.strip() or len(expr) > MAX_KEY_EXPRESSION:
        return f"must be an expression of 1 to {MAX_KEY_EXPRESSION} characters"
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        return f"is not an expression: {exc.msg}"
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    if names - {"parameters"}:
        return f"may name only 'parameters', not {sorted(names - {'parameters'})[0]!r}"
    try:
        SafeEvaluator(names={"parameters": {}}).eval(expr.strip())
    except (simpleeval.FeatureNotAvailable, ExpressionTooCostly) as exc:
        return str(exc)
    except Exception:
        pass
    return None


#: One key evaluator per thread, its names set for each evaluation: building one
#: costs more than evaluating most keys (a distinct concurrency key per execution
#: paid about 8 % of its throughput for it).
_key_evaluators = threading.local()


def evaluate_key(expr: str, parameters: Mapping[str, Any]) -> str | None:
    """The key ``expr`` gives for ``parameters``: a string (others as JSON), or ``None``
    when it gives nothing (``null``, a missing parameter, an error)."""
    evaluator: SafeEvaluator | None = getattr(_key_evaluators, "evaluator", None)
    if evaluator is None:
        evaluator = _key_evaluators.evaluator = SafeEvaluator()
    evaluator.names = {"parameters": dict(parameters)}
    try:
        value = evaluator.eval(expr.strip())
    except Exception:
        return None
    finally:
        evaluator.names = {}  # keep no execution's data past the evaluation
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return None
