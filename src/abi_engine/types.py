"""The authoring API for workflow types: :class:`WorkflowType` and :func:`step`.

A workflow type has a name, a configuration schema, a parameter schema and
ordered steps. Schemas are attrs classes structured by the engine's converter,
so a wrong shape is refused with the offending field named::

    import attrs
    from abi_engine import WorkflowType, step

    class Greeting(WorkflowType):
        name = "greeting"
        description = "Greets someone"

        @attrs.define(kw_only=True)
        class Parameters:
            who: str

        @step
        async def greet(self, ctx):
            return {"text": f"Hello, {ctx.parameters['who']}!"}
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar, TypeVar, overload

import anyio
import attrs

from abi_engine.converter import structure
from abi_engine.errors import AbiError, InvalidParameters, InvalidWorkflowConfig
from abi_engine.host import Host
from abi_engine.json_schema import json_schema
from abi_engine.step_signals import (
    APPROVAL_SIGNAL,
    DURABLE_SLEEP_THRESHOLD,
    MAX_CORRELATION_KEY,
    PROGRESS_PREFIX,
    SLEEP_PREFIX,
    ChildWorkflowFailed,
    ExecutionLost,
    IncomingSignal,
    SignalTimeout,
    Suspend,
    approval_signal,
    is_approval_signal,
)
from abi_engine.storage.records import TIMEOUT_SUFFIX, stream_key

__all__ = [
    "APPROVAL_SIGNAL",
    "DURABLE_SLEEP_THRESHOLD",
    "PROGRESS_PREFIX",
    "ChildWorkflowFailed",
    "ExecutionLost",
    "IncomingSignal",
    "RetryPolicy",
    "SignalTimeout",
    "StepContext",
    "StepSpec",
    "Suspend",
    "WorkflowType",
    "approval_signal",
    "is_approval_signal",
    "json_schema",
    "prefixed_fields",
    "step",
]

StepFunction = Callable[["StepContext"], Awaitable[Any]]


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often a failing step is tried, and how long to wait between tries.

    The wait before try ``n`` (from 2) is
    ``min(backoff_seconds * backoff_multiplier ** (n - 2), max_backoff_seconds)``.
    """

    attempts: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    backoff_seconds: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    backoff_multiplier: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    max_backoff_seconds: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before try number ``attempt`` (1-based)."""
        if attempt <= 1:
            return 0.0
        delay = self.backoff_seconds * self.backoff_multiplier ** (attempt - 2)
        return float(min(delay, self.max_backoff_seconds))


@attrs.frozen(kw_only=True)
class StepSpec:
    """One step of a workflow type: its name, function and policies.

    ``skip_if(configuration, parameters)`` returning true records the step as
    ``skipped`` without running it.
    """

    name: str
    fn: StepFunction
    retry: RetryPolicy = RetryPolicy()
    timeout_seconds: float | None = None
    skip_if: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] | None = None


_STEP_LOGGER = logging.getLogger("abi_engine.steps")


@attrs.define(kw_only=True)
class StepContext:
    """What a step receives.

    ``parameters`` and ``configuration`` are the execution's and workflow's
    JSON; ``params`` and ``config`` their structured forms (the type's
    ``Parameters`` / ``Configuration`` instances, or the dicts when the type
    declares none); ``results`` maps each finished step's name to its result;
    ``integrations`` maps the workflow's connected integration ids to their
    connections (with secrets: never return them); ``signals`` holds the
    signals delivered to the execution; ``attempt`` counts tries of this step
    from 1; ``host`` is the engine's :class:`~abi_engine.Host` (outbound
    policy, a guarded HTTP client, read-only queries; ``None`` for a step run
    outside an engine); ``progress`` is what an earlier run of this step last
    kept with :meth:`save_progress` (``None`` if nothing). ``services``
    (``{"engine": <the Engine>}``) is deprecated: use ``host``.
    """

    execution_id: str
    workflow_id: str
    step_name: str
    parameters: Mapping[str, Any]
    configuration: Mapping[str, Any]
    params: Any
    config: Any
    results: Mapping[str, Any]
    integrations: Mapping[str, Any] = attrs.Factory(dict)
    signals: Mapping[str, Any] = attrs.Factory(dict)
    attempt: int = 1
    logger: logging.Logger = _STEP_LOGGER
    host: Host | None = None
    #: Deprecated (``{"engine": <the Engine>}``): use :attr:`host`; removed in the next release.
    services: Mapping[str, Any] = attrs.Factory(dict)
    progress: Any = None
    #: The due time the schedule started this execution for (UTC; ``None`` when it was
    #: not started by a schedule): a nightly report covers "yesterday" even when it runs late.
    scheduled_for: datetime | None = None
    progress_saver: Callable[[Any], Awaitable[Any]] | None = attrs.field(default=None, repr=False)
    _sleeps: int = attrs.field(default=0, init=False)
    _children: int = attrs.field(default=0, init=False)
    _streams: dict[str, int] = attrs.field(factory=dict, init=False)

    async def save_progress(self, value: Any) -> None:
        """Durably keep how far this step got, so that a run of it after a failure or
        a crash can skip what is done (it reads ``progress``).

        ``value`` must be JSON (it replaces what was kept before); when this
        returns it is committed. A step that calls ``save_progress`` after each
        unit of work repeats at most the unit in flight when the process died.
        Each call is a write: keep ``value`` small and call it per unit of work
        that costs more than a write (a batch sent, a file moved), not per item.
        Afterwards ``progress`` is the value as stored (JSON: dict keys are
        strings, tuples are lists), exactly what a run after a restart reads.
        Raises ``ValueError`` when ``value`` is not JSON, and
        :class:`ExecutionLost` when this engine no longer runs the execution
        (it was cancelled, or another engine took it over): the step then stops.
        """
        if self.progress_saver is None:
            raise RuntimeError("save_progress is only available to steps the engine runs")
        self.progress = await self.progress_saver(value)

    def client(self, integration_id: str) -> Any:
        """A ready client for a connected integration of the workflow.

        What the integration's provider builds from its configuration: an
        ``httpx.AsyncClient`` (base URL, headers, auth set) for the built-in
        ``http`` provider. Close it when done (``async with ctx.client(...)``).
        Raises ``LookupError`` when the integration is not connected.
        """
        connection = self.integrations.get(integration_id)
        if connection is None:
            raise LookupError(f"integration {integration_id!r} is not connected")
        if self.host is None:
            raise RuntimeError("client() is only available to steps the engine runs")
        return self.host.client(connection)

    def wait_for_signal(
        self,
        name: str,
        timeout_seconds: float | None = None,
        *,
        correlation_key: str | None = None,
        stream: bool = False,
    ) -> Any:
        """Return the payload of signal ``name``, suspending the execution until it arrives.

        The execution parks as ``waiting`` without holding a worker, durably:
        when the signal arrives (``engine.executions.signal``) the step runs
        again from its start and this call returns the payload. So a step
        must do nothing it cannot repeat before it waits. After
        ``timeout_seconds`` without the signal the step runs again and this
        call raises :class:`SignalTimeout`. A signal sent before the wait is
        kept and returned at once.

        ``correlation_key``: the wait can also be woken by a signal addressed to
        the key rather than to the execution (``engine.signals.send`` /
        ``POST /api/v1/signals``); one sent before any execution waits on the key
        is kept (for a while) for the first wait on it. ``stream``: each call
        (in the order the step makes them) returns the next signal ``name``
        delivered, so a name sent several times is read once each, in order
        (see :meth:`signal_stream`); without it every wait for ``name`` returns
        the first one.
        """
        if correlation_key is not None and not (
            isinstance(correlation_key, str) and 0 < len(correlation_key) <= MAX_CORRELATION_KEY
        ):
            raise ValueError(
                f"a correlation key is a string of 1 to {MAX_CORRELATION_KEY} characters"
            )
        key = name
        if stream:
            self._streams[name] = number = self._streams.get(name, 0) + 1
            key = stream_key(name, number)
        if key in self.signals:
            return self.signals[key]
        if f"{key}{TIMEOUT_SUFFIX}" in self.signals:
            raise SignalTimeout(name)
        raise Suspend(key, timeout_seconds, correlation_key=correlation_key)

    def signal_stream(
        self,
        name: str,
        timeout_seconds: float | None = None,
        *,
        correlation_key: str | None = None,
    ) -> Iterator[Any]:
        """The signals ``name`` delivered to the execution, each once, in order: an endless
        iterator of payloads that suspends the execution while the next has not come
        (``wait_for_signal(name, stream=True)`` in a loop; break out of it when done)."""
        while True:
            yield self.wait_for_signal(
                name, timeout_seconds, correlation_key=correlation_key, stream=True
            )

    async def run_workflow(
        self, workflow_id: str, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        """Start an execution of another (active) workflow and wait for it durably; its
        ``result`` once it completes.

        The child is started once (a repeat of this call, as the step runs again
        after the wait or a restart, finds it by its key: this execution, this
        step, the call's rank in the step) and its end is signalled to this
        execution, which waits for it as ``waiting`` without holding a worker.
        Raises :class:`ChildWorkflowFailed` (``execution_id``, ``status``,
        ``error``) when the child ends otherwise; a retry of the step finds the
        same child, ended. Cancelling this execution cancels its children.
        """
        if self.host is None:
            raise RuntimeError("run_workflow is only available to steps the engine runs")
        step_key = hashlib.sha256(self.step_name.encode()).hexdigest()[:16]
        key = f"child:{self.execution_id}:{step_key}:{self._children}"
        self._children += 1
        child = await self.host.start_child_execution(
            self.execution_id, workflow_id, dict(parameters or {}), key
        )
        ended = self.wait_for_signal(f"child:{child}")
        if not isinstance(ended, Mapping) or ended.get("status") != "completed":
            raise ChildWorkflowFailed(child, ended)
        return ended.get("result")

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; waits over a second park the execution durably."""
        if seconds <= DURABLE_SLEEP_THRESHOLD:
            await anyio.sleep(max(0.0, seconds))
            return
        name = f"{SLEEP_PREFIX}{self.step_name}:{self._sleeps}"
        self._sleeps += 1
        if name in self.signals or f"{name}{TIMEOUT_SUFFIX}" in self.signals:
            return
        raise Suspend(name, seconds, sleeping=True)


_STEP_ATTR = "__abi_step__"


@contextmanager
def prefixed_fields(prefix: str) -> Iterator[None]:
    """Re-raise an :class:`AbiError` with ``details`` fields under ``prefix.``."""
    try:
        yield
    except AbiError as exc:
        fields = [exc.details, *list(exc.details.get("errors", []))]
        for item in fields:
            field = item.get("field")
            if isinstance(field, str):
                item["field"] = prefix if field == "(body)" else f"{prefix}.{field}"
        shown = exc.details.get("field", prefix)
        exc.message = f"Invalid value for '{shown}': " + exc.message.split(": ", 1)[-1]
        exc.args = (exc.message,)
        raise


_StepFn = TypeVar("_StepFn", bound=Callable[..., Awaitable[Any]])
_SkipIf = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]


@overload
def step(fn: _StepFn) -> _StepFn: ...


@overload
def step(
    fn: None = None,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout_seconds: float | None = None,
    skip_if: _SkipIf | None = None,
) -> Callable[[_StepFn], _StepFn]: ...


def step(
    fn: Callable[..., Awaitable[Any]] | None = None,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout_seconds: float | None = None,
    skip_if: _SkipIf | None = None,
) -> Any:
    """Mark an async method of a :class:`WorkflowType` as a step.

    Steps run in the order they are defined in the class body. Use as
    ``@step`` or ``@step(retry=RetryPolicy(attempts=3), timeout_seconds=5)``.
    """

    def mark(func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        setattr(
            func,
            _STEP_ATTR,
            {
                "name": name or func.__name__,
                "retry": retry or RetryPolicy(),
                "timeout_seconds": timeout_seconds,
                "skip_if": skip_if,
            },
        )
        return func

    return mark(fn) if fn is not None else mark


class WorkflowType:
    """Base class of every workflow type.

    Class attributes: ``name`` (unique, lower_snake_case), ``description``,
    ``Configuration`` and ``Parameters`` (attrs classes; ``None`` accepts any
    JSON object), ``docs_url`` (where its documentation lives, listed by
    ``GET /api/v1/workflow_types``). Override :meth:`check_configuration` and
    :meth:`check_parameters` for rules on values, and :meth:`steps` when the
    steps depend on the configuration. A type that uses notification templates
    by id overrides :meth:`template_ids` and :meth:`check_template`.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Configuration: ClassVar[type[Any] | None] = None
    Parameters: ClassVar[type[Any] | None] = None
    docs_url: ClassVar[str | None] = None
    _class_steps: ClassVar[tuple[tuple[str, dict[str, Any]], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                marker = getattr(value, _STEP_ATTR, None)
                if marker is not None:
                    found[attr] = (attr, marker)
        cls._class_steps = tuple(found.values())

    def bind(self, host: Host) -> None:
        """Called once with the engine's :class:`~abi_engine.Host` when it registers this type.

        Override to keep what the type needs: registrations of a hook the
        plugin declared (``host.collect(...)``), or the host itself for
        checks that depend on the engine's settings
        (``host.allow_private_urls``, ``host.check_url``). The default calls
        a deprecated :meth:`attach` override with the engine.
        """
        if type(self).attach is not WorkflowType.attach:
            warnings.warn(
                f"{type(self).__qualname__}.attach(engine) is deprecated and will be removed"
                " in the next release: override bind(host) (abi_engine.Host) instead",
                DeprecationWarning,
                stacklevel=2,
            )
            self.attach(host._legacy_engine)

    def attach(self, engine: Any) -> None:
        """Deprecated: override :meth:`bind`, which receives the narrow :class:`~abi_engine.Host`.

        Still called, with the :class:`~abi_engine.Engine`, when a type
        overrides it (with a ``DeprecationWarning``); removed in the next release.
        """

    # -- configuration ----------------------------------------------------

    def parse_configuration(self, configuration: Mapping[str, Any]) -> Any:
        """Structure and check ``configuration``; raise ``InvalidWorkflowConfig``."""
        if not isinstance(configuration, Mapping):
            raise InvalidWorkflowConfig(
                "'configuration' must be an object", {"field": "configuration"}
            )
        if self.Configuration is None:
            parsed: Any = dict(configuration)
        else:
            with prefixed_fields("configuration"):
                parsed = structure(
                    dict(configuration), self.Configuration, error=InvalidWorkflowConfig
                )
        self.check_configuration(parsed)
        return parsed

    def check_configuration(self, config: Any) -> None:
        """Rules on configuration values; raise ``InvalidWorkflowConfig`` with ``details``."""

    # -- parameters ----------------------------------------------------------

    def parse_parameters(self, parameters: Mapping[str, Any], config: Any) -> Any:
        """Structure and check ``parameters`` for a workflow configured with ``config``.

        Wrong shape raises ``InvalidParameters``; :meth:`check_parameters`
        raises ``ParameterValidationError`` for invalid values.
        """
        if type(parameters) is not dict and not isinstance(parameters, Mapping):
            raise InvalidParameters("'parameters' must be an object", {"field": "parameters"})
        if self.Parameters is None:
            parsed: Any = dict(parameters)
        else:
            with prefixed_fields("parameters"):
                parsed = structure(dict(parameters), self.Parameters, error=InvalidParameters)
        self.check_parameters(parsed, config)
        return parsed

    def check_parameters(self, params: Any, config: Any) -> None:
        """Rules on parameter values; raise ``ParameterValidationError``."""

    # -- schemas -------------------------------------------------------------

    def configuration_schema(self) -> dict[str, Any]:
        """The JSON Schema of a workflow's ``configuration`` (from ``Configuration``).

        Override when :meth:`parse_configuration` accepts other shapes.
        """
        return json_schema(self.Configuration)

    def parameters_schema(self) -> dict[str, Any]:
        """The JSON Schema of an execution's ``parameters`` (from ``Parameters``).

        Override when :meth:`parse_parameters` accepts other shapes.
        """
        return json_schema(self.Parameters)

    # -- notification templates ------------------------------------------------

    def template_ids(self, config: Any) -> Collection[str]:
        """The ids of the managed notification templates ``config`` uses.

        Managed templates live in the engine (``engine.notification_templates``,
        ``PUT /api/v1/notification_templates/{id}``). The engine shows each id
        in the workflow's ``notification_templates`` (``pending`` until it
        exists, then ``available``) and refuses to execute the workflow (409
        ``INVALID_STATE``) while one is missing. Default: none.
        """
        return ()

    def check_template(self, template: Any) -> None:
        """Refuse a notification template this type could not render.

        Called with each :class:`~abi_engine.models.NotificationTemplate` about
        to be stored; raise ``InvalidRequest`` naming the field (``body``,
        ``subject``). Default: accept.
        """

    # -- signals -------------------------------------------------------------

    def check_signal(self, signal: IncomingSignal, config: Any) -> None:
        """Accept or refuse a signal before it is delivered to an unfinished execution.

        Called with the execution's structured configuration; raise an
        ``AbiError`` (e.g. ``Forbidden`` for a caller who may not decide) to
        refuse it: nothing is stored and the caller gets that error.
        """

    # -- steps ---------------------------------------------------------------

    def steps(self, config: Any) -> list[StepSpec]:
        """The ordered steps for a workflow configured with ``config``."""
        specs = []
        for attr, marker in self._class_steps:
            specs.append(StepSpec(fn=getattr(self, attr), **marker))
        return specs
