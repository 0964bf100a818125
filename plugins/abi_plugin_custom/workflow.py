"""The ``custom`` workflow type: its configuration and its steps."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from abi_engine import Host, RetryPolicy, StepSpec, WorkflowType
from abi_engine.converter import structure
from abi_engine.errors import AbiError, InvalidWorkflowConfig
from abi_engine.netguard import check_url
from abi_plugin_custom.actions import make_action

MAX_STEPS = 100
MAX_DELAY_SECONDS = 24 * 3600


@attrs.define(kw_only=True)
class RetrySpec:
    """``"retry": {"attempts": 3, "backoff_seconds": 1, "backoff_multiplier": 2}``."""

    attempts: int = 1
    backoff_seconds: float = 0.0
    backoff_multiplier: float = 2.0
    max_backoff_seconds: float = 60.0


@attrs.define(kw_only=True)
class DelayStep:
    name: str
    action: Literal["delay"]
    seconds: float
    retry: RetrySpec | None = None
    timeout_seconds: float | None = None


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
    retry: RetrySpec | None = None


@attrs.define(kw_only=True)
class TransformStep:
    name: str
    action: Literal["transform"]
    expressions: dict[str, str]
    retry: RetrySpec | None = None
    timeout_seconds: float | None = None


ACTIONS: dict[str, type[Any]] = {
    "delay": DelayStep,
    "http_request": HttpRequestStep,
    "transform": TransformStep,
}


def _fail(field: str, message: str) -> InvalidWorkflowConfig:
    return InvalidWorkflowConfig(f"Invalid value for '{field}': {message}", {"field": field})


def parse_steps(raw: Any, *, allow_private: bool = False) -> list[Any]:
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
        _check_step(step_def, where, allow_private)
        if step_def.name in names:
            raise _fail(f"{where}.name", f"step name {step_def.name!r} is used twice")
        names.add(step_def.name)
        parsed.append(step_def)
    return parsed


def _check_step(step_def: Any, where: str, allow_private: bool) -> None:
    if not step_def.name.strip():
        raise _fail(f"{where}.name", "must not be empty")
    if step_def.retry is not None:
        retry = step_def.retry
        if not 1 <= retry.attempts <= 100:
            raise _fail(f"{where}.retry.attempts", "must be between 1 and 100")
        if retry.backoff_seconds < 0 or retry.max_backoff_seconds < 0:
            raise _fail(f"{where}.retry.backoff_seconds", "must not be negative")
        if retry.backoff_multiplier < 1:
            raise _fail(f"{where}.retry.backoff_multiplier", "must be at least 1")
    if step_def.timeout_seconds is not None and not 0 < step_def.timeout_seconds <= 86_400:
        raise _fail(f"{where}.timeout_seconds", "must be between 0 and 86400")
    if isinstance(step_def, DelayStep) and not 0 <= step_def.seconds <= MAX_DELAY_SECONDS:
        raise _fail(f"{where}.seconds", f"must be between 0 and {MAX_DELAY_SECONDS}")
    if isinstance(step_def, HttpRequestStep):
        if (step_def.url is None) == (step_def.integration is None):
            raise _fail(f"{where}.url", "give exactly one of 'url' or 'integration'")
        if step_def.url is not None and not step_def.url.startswith(("http://", "https://")):
            raise _fail(f"{where}.url", "must be an http or https URL")
        if not 0 < step_def.timeout_seconds <= 300:
            raise _fail(f"{where}.timeout_seconds", "must be between 0 and 300")
        if step_def.url is not None:
            try:
                check_url(step_def.url, field=f"{where}.url", allow_private=allow_private)
            except AbiError as exc:
                raise _fail(f"{where}.url", exc.message.split(": ", 1)[-1]) from None
        if step_def.path is not None:
            # Appended to the integration's base URL when the step runs: its form checked now.
            try:
                check_url(
                    f"https://example.com/{step_def.path.lstrip('/')}",
                    field="path",
                    allow_private=True,
                )
            except AbiError as exc:
                raise _fail(f"{where}.path", exc.message.split(": ", 1)[-1]) from None
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
    docs_url = "docs/custom.md"

    _handlers: Mapping[str, Any] = {}
    _host: Host | None = None

    def bind(self, host: Host) -> None:
        self._host = host
        self._handlers = host.collect("abi_step_handlers", "step handler")

    @property
    def _allow_private(self) -> bool:
        return self._host is not None and self._host.allow_private_urls

    def steps(self, config: Any) -> list[StepSpec]:
        """A handler's steps, or one step per declarative step definition."""
        handler_name = config.get("handler")
        if handler_name is not None:
            handler = self._handlers[handler_name]
            if isinstance(handler, type) and issubclass(handler, WorkflowType):
                inner = handler()
                if self._host is not None:
                    inner.bind(self._host)
                return inner.steps(config)
            return [StepSpec(name=handler_name, fn=handler)]
        specs = []
        for step_def in parse_steps(config["steps"], allow_private=self._allow_private):
            retry = step_def.retry
            specs.append(
                StepSpec(
                    name=step_def.name,
                    fn=make_action(step_def),
                    retry=RetryPolicy(
                        attempts=retry.attempts,
                        backoff_seconds=retry.backoff_seconds,
                        backoff_multiplier=retry.backoff_multiplier,
                        max_backoff_seconds=retry.max_backoff_seconds,
                    )
                    if retry
                    else RetryPolicy(),
                    timeout_seconds=step_def.timeout_seconds
                    if not isinstance(step_def, HttpRequestStep)
                    else None,
                )
            )
        return specs

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
            parse_steps(steps, allow_private=self._allow_private)
