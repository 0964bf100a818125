"""The built-in declarative actions of the ``custom`` type: delay, http_request, transform."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from abi_engine import StepContext
from abi_engine.errors import InvalidRequest
from abi_engine.expressions import SafeEvaluator
from abi_engine.netguard import URLRefused

__all__ = ["MAX_BODY_CHARS", "make_action"]

#: Response bodies kept in a step's result are cut to this many characters.
MAX_BODY_CHARS = 100_000

_FUNCTIONS: dict[str, Callable[..., Any]] = {
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
    "ceil": math.ceil,
    "floor": math.floor,
}


#: One evaluator per thread, its names set for each evaluation (evaluations do not await).
_evaluators = threading.local()


class TransformError(ValueError):
    """An expression of a ``transform`` step could not be evaluated."""


def evaluate(expressions: dict[str, str], ctx: StepContext) -> dict[str, Any]:
    """Evaluate each expression over ``parameters`` and earlier ``results`` (simpleeval).

    Python's ``eval`` is never used: simpleeval allows only expressions,
    literals, arithmetic, comparisons, subscripts and the functions listed in
    ``_FUNCTIONS``, with limits on power and string sizes.
    """
    evaluator: SafeEvaluator | None = getattr(_evaluators, "evaluator", None)
    if evaluator is None:  # built once per thread (it costs more than most expressions)
        evaluator = _evaluators.evaluator = SafeEvaluator(functions=_FUNCTIONS)
    evaluator.names = {
        "parameters": dict(ctx.parameters),
        "results": dict(ctx.results),
        "true": True,
        "false": False,
        "null": None,
    }
    try:
        return _evaluate_all(evaluator, expressions)
    finally:
        evaluator.names = {}  # keep no execution's data past its step


def _evaluate_all(evaluator: SafeEvaluator, expressions: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, expression in expressions.items():
        try:
            value = evaluator.eval(expression)
        except Exception as exc:
            raise TransformError(f"{key}: {type(exc).__name__}: {exc}") from None
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise TransformError(f"{key}: the value is not JSON") from None
        out[key] = value
    return out


def _body(response: httpx.Response) -> Any:
    text = response.text[:MAX_BODY_CHARS]
    if "json" in response.headers.get("content-type", ""):
        try:
            return response.json()
        except ValueError:
            return text
    return text


async def _http(step: Any, ctx: StepContext) -> dict[str, Any]:
    host = ctx.host
    if host is None:
        raise RuntimeError("http_request steps run only in an engine")
    if step.integration is not None:
        # Only the workflow's own integrations (ctx.integrations): naming another
        # connection must not lend its credentials to this workflow.
        if step.integration not in ctx.integrations:
            raise LookupError(
                f"integration {step.integration!r} is not one of this workflow's connected"
                " integrations (list it in the workflow's integrations)"
            )
        client: httpx.AsyncClient = ctx.client(step.integration)
        # Appended, never resolved: a path such as "https://elsewhere/..." or "//elsewhere"
        # must not carry the integration's credentials to another host.
        base = str(client.base_url).rstrip("/")
        url = f"{base}/{step.path.lstrip('/')}" if step.path else base
    else:
        # Every request checked against the outbound URL rules, and connected to
        # the address checked (resolved in a thread, not on the event loop).
        client = host.http_client()
        url = step.url
    try:  # checked again: the engine's setting may differ from the one at creation
        host.check_url(url, field="url")
    except InvalidRequest as exc:
        raise URLRefused(f"URL refused: {exc.message}") from None
    parts = urlsplit(url)
    async with client:
        response = await client.request(
            step.method,
            url,
            # the step's span as the parent of the server's (with tracing on); the step's
            # own headers win
            headers={**host.trace_headers(), **(step.headers or {})} or None,
            json=step.json,
            timeout=step.timeout_seconds,
        )
    if response.status_code >= 400:
        raise httpx.HTTPStatusError(
            f"{step.method} {parts.scheme}://{parts.netloc}{parts.path} answered"
            f" {response.status_code}",
            request=response.request,
            response=response,
        )
    return {
        "status_code": response.status_code,
        "headers": {"content-type": response.headers.get("content-type", "")},
        "body": _body(response),
    }


def make_action(step: Any) -> Callable[[StepContext], Awaitable[Any]]:
    """The step function running one declarative step definition."""
    action = step.action

    async def run(ctx: StepContext) -> Any:
        if action == "delay":
            await ctx.sleep(step.seconds)
            return {"slept_seconds": step.seconds}
        if action == "http_request":
            return await _http(step, ctx)
        return evaluate(step.expressions, ctx)

    run.__name__ = f"{action}:{step.name}"
    return run
