"""Priority rules: safe expressions over the parameters, checked when the workflow is saved.

A condition such as ``severity == 'high' and amount > 1000`` is parsed and
checked against a list of allowed constructs when the workflow is created
(comparisons, ``and``/``or``/``not``, arithmetic, literals, subscripts, the
functions in :data:`FUNCTIONS`), then evaluated with simpleeval, never with
Python's ``eval``. Each parameter is a name; ``parameters`` is all of them.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import simpleeval

from abi_engine.expressions import SafeEvaluator

__all__ = ["FUNCTIONS", "PRIORITIES", "RuleError", "check_condition", "first_match"]

#: The priorities a rule may give, most pressing first.
PRIORITIES = ("urgent", "high", "normal", "low")
MAX_CONDITION_CHARS = 1000

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "str": str,
    "int": int,
    "float": float,
    "ceil": math.ceil,
    "floor": math.floor,
}

_ALLOWED: tuple[type[ast.AST], ...] = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Mod,
    ast.FloorDiv,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.List,
    ast.Tuple,
    ast.Subscript,
    ast.Call,
    ast.IfExp,
)
_NAMES = {"true": True, "false": False, "null": None}


class RuleError(ValueError):
    """A condition is not a valid rule expression, or failed to evaluate."""


def check_condition(condition: str) -> None:
    """Raise :class:`RuleError` unless ``condition`` is an allowed expression."""
    if not condition.strip():
        raise RuleError("must not be empty")
    if len(condition) > MAX_CONDITION_CHARS:
        raise RuleError(f"at most {MAX_CONDITION_CHARS} characters")
    try:
        tree = ast.parse(condition.strip(), mode="eval")
    except SyntaxError as exc:
        raise RuleError(f"invalid expression: {exc.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise RuleError(f"{type(node).__name__} is not allowed in a condition")
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
                raise RuleError(f"only these functions may be called: {', '.join(FUNCTIONS)}")
            if node.keywords:
                raise RuleError("functions take positional arguments only")
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise RuleError(f"names may not start with '_': {node.id}")


def _evaluator(parameters: Mapping[str, Any]) -> SafeEvaluator:
    names = {**_NAMES, **parameters, "parameters": dict(parameters)}
    return SafeEvaluator(names=names, functions=FUNCTIONS)


def first_match(
    conditions: Sequence[str], parameters: Mapping[str, Any]
) -> tuple[int | None, list[str]]:
    """The index of the first condition that holds (or ``None``), and notes on skipped ones.

    A condition naming a parameter the execution lacks does not hold (noted).
    Any other failure raises :class:`RuleError` naming the rule.
    """
    evaluator = _evaluator(parameters)
    notes: list[str] = []
    for index, condition in enumerate(conditions):
        try:
            if evaluator.eval(condition.strip()):
                return index, notes
        except simpleeval.NameNotDefined as exc:
            notes.append(f"priority_rules[{index}]: no parameter {exc.name!r}")
        except Exception as exc:
            raise RuleError(
                f"priority_rules[{index}] ({condition!r}): {type(exc).__name__}: {exc}"
            ) from None
    return None, notes
