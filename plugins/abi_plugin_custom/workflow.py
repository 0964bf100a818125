"""Configuration of the ``custom`` workflow type."""

from __future__ import annotations

import ast
from typing import Any, Literal

import attrs

from abi_engine import WorkflowType
from abi_engine.converter import structure
from abi_engine.errors import InvalidWorkflowConfig

MAX_STEPS = 100
MAX_DELAY_SECONDS = 24 * 3600


@attrs.define(kw_only=True)
class DelayStep:
    name: str
    action: Literal["delay"]
    seconds: float


@attrs.define(kw_only=True)
class HttpRequestStep:
    name: str
    action: Literal["http_request"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: str | None = None
    integration: str | None = None
    path: str | None = None
    headers: dict[str, str] = attrs.Factory(dict)
    json: Any = None
    timeout_seconds: float = 10.0


@attrs.define(kw_only=True)
class TransformStep:
    name: str
    action: Literal["transform"]
    expressions: dict[str, str]


ACTIONS: dict[str, type[Any]] = {
    "delay": DelayStep,
    "http_request": HttpRequestStep,
    "transform": TransformStep,
}


def _fail(field: str, message: str) -> InvalidWorkflowConfig:
    return InvalidWorkflowConfig(f"Invalid value for '{field}': {message}", {"field": field})


def parse_steps(raw: Any) -> list[Any]:
    """Structure the declarative ``steps`` list; errors name ``configuration.steps[i]...``."""
    if not isinstance(raw, list) or not raw:
        raise _fail("configuration.steps", "expected a non-empty list of steps")
    if len(raw) > MAX_STEPS:
        raise _fail("configuration.steps", f"at most {MAX_STEPS} steps")
    parsed: list[Any] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        where = f"configuration.steps[{index}]"
        if not isinstance(item, dict):
            raise _fail(where, "expected an object")
        action = item.get("action")
        cls = ACTIONS.get(action) if isinstance(action, str) else None
        if cls is None:
            raise _fail(f"{where}.action", f"must be one of: {', '.join(ACTIONS)}")
        try:
            step_def = structure(item, cls, error=InvalidWorkflowConfig)
        except InvalidWorkflowConfig as exc:
            field = f"{where}.{exc.details.get('field', '')}".rstrip(".")
            raise _fail(field, exc.message.split(": ", 1)[-1]) from None
        _check_step(step_def, where)
        if step_def.name in names:
            raise _fail(f"{where}.name", f"step name {step_def.name!r} is used twice")
        names.add(step_def.name)
        parsed.append(step_def)
    return parsed


def _check_step(step_def: Any, where: str) -> None:
    if not step_def.name.strip():
        raise _fail(f"{where}.name", "must not be empty")
    if isinstance(step_def, DelayStep) and not 0 <= step_def.seconds <= MAX_DELAY_SECONDS:
        raise _fail(f"{where}.seconds", f"must be between 0 and {MAX_DELAY_SECONDS}")
    if isinstance(step_def, HttpRequestStep):
        if (step_def.url is None) == (step_def.integration is None):
            raise _fail(f"{where}.url", "give exactly one of 'url' or 'integration'")
        if step_def.url is not None and not step_def.url.startswith(("http://", "https://")):
            raise _fail(f"{where}.url", "must be an http or https URL")
        if not 0 < step_def.timeout_seconds <= 300:
            raise _fail(f"{where}.timeout_seconds", "must be between 0 and 300")
    if isinstance(step_def, TransformStep):
        if not step_def.expressions:
            raise _fail(f"{where}.expressions", "expected at least one expression")
        for key, expression in step_def.expressions.items():
            try:
                ast.parse(expression, mode="eval")
            except SyntaxError as exc:
                raise _fail(
                    f"{where}.expressions.{key}", f"invalid expression: {exc.msg}"
                ) from None


class CustomWorkflow(WorkflowType):
    """Runs a registered Python handler, or declarative steps of built-in actions."""

    name = "custom"
    description = "Custom workflow implementation"

    def attach(self, engine: Any) -> None:
        self._handlers: dict[str, Any] = engine.registry.step_handlers

    def check_configuration(self, config: Any) -> None:
        handler = config.get("handler")
        steps = config.get("steps")
        if (handler is None) == (steps is None):
            raise _fail("configuration", "give exactly one of 'handler' or 'steps'")
        unknown = sorted(set(config) - {"handler", "steps", "description"})
        if unknown:
            raise _fail(f"configuration.{unknown[0]}", "unknown field")
        if handler is not None:
            if not isinstance(handler, str):
                raise _fail("configuration.handler", "expected a string")
            if handler not in getattr(self, "_handlers", {}):
                raise InvalidWorkflowConfig(
                    f"No step handler is registered under {handler!r}",
                    {
                        "field": "configuration.handler",
                        "allowed": sorted(getattr(self, "_handlers", {})),
                    },
                )
        else:
            parse_steps(steps)
