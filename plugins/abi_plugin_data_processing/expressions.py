"""Safe expressions over records (simpleeval, never Python's ``eval``).

An expression is checked once, when the workflow's configuration is, and
evaluated many times with names bound per record. simpleeval allows only
expressions: literals, arithmetic, comparisons, boolean operators,
subscripts, attribute-free names and the functions listed in
:data:`FUNCTIONS`, with limits on powers and string sizes.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from abi_engine.expressions import SafeEvaluator

__all__ = ["FUNCTIONS", "Expression", "ExpressionError"]

#: Functions an expression may call.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "min": min,
    "max": max,
    "sum": sum,
    "abs": abs,
    "round": round,
    "sorted": sorted,
    "any": any,
    "all": all,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "strip": lambda s: str(s).strip(),
    "ceil": math.ceil,
    "floor": math.floor,
}

_CONSTANTS = {"true": True, "false": False, "null": None, "None": None}
MAX_EXPRESSION = 1_000


class ExpressionError(ValueError):
    """An expression is malformed, or could not be evaluated for one record."""


class Expression:
    """One safe expression, parsed once.

    ``Expression("value * 100")`` then ``expr.evaluate({"value": 0.25})``.
    """

    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ExpressionError("expected a non-empty expression")
        if len(source) > MAX_EXPRESSION:
            raise ExpressionError(f"longer than {MAX_EXPRESSION} characters")
        try:
            ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"invalid expression: {exc.msg}") from None
        self.source = source
        self._evaluator = SafeEvaluator(functions=FUNCTIONS)
        self._parsed = self._evaluator.parse(source.strip())

    def evaluate(self, names: Mapping[str, Any]) -> Any:
        """The expression's value with ``names`` bound; ``ExpressionError`` on failure.

        The value must be JSON (it lands in records and results).
        """
        self._evaluator.names = {**_CONSTANTS, **names}
        try:
            value = self._evaluator.eval(self.source, previously_parsed=self._parsed)
        except Exception as exc:
            raise ExpressionError(f"{type(exc).__name__}: {exc}") from None
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ExpressionError("the value is not JSON") from None
        return value

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"
