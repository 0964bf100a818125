"""Checking a request to start executions: its options, the workflow (compiled and
cached while unchanged), whether it may run now.

Mixed into :class:`~abi_engine.executions.ExecutionService`; its state (the
cache) is set up there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from abi_engine.errors import (
    EngineNotRunning,
    ExecutionTimeout,
    IntegrationMissing,
    InvalidParameters,
    InvalidRequest,
    InvalidState,
    WorkflowExecutionError,
    WorkflowNotFound,
)
from abi_engine.models import Execution, ExecutionStatus, Workflow, WorkflowStatus
from abi_engine.netguard import check_url
from abi_engine.types import StepSpec, WorkflowType

if TYPE_CHECKING:
    from abi_engine.coalesce import ReadCoalescer
    from abi_engine.integrations import IntegrationService
    from abi_engine.notification_templates import NotificationTemplateService
    from abi_engine.runtime.runner import Runtime
    from abi_engine.storage.aio import AsyncStore
    from abi_engine.workflows import WorkflowService

__all__ = [
    "MAX_TIMEOUT_SECONDS",
    "Compiled",
    "ExecutionRequests",
    "check_priority",
    "not_running",
    "waited_answer",
]

MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
MAX_KEY = 255


def _timeout(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"'{field}' must be a number of seconds", {"field": field})
    if not 0 < value <= MAX_TIMEOUT_SECONDS:
        raise InvalidRequest(
            f"'{field}' must be more than 0 and at most {MAX_TIMEOUT_SECONDS}", {"field": field}
        )
    return float(value)


_CACHE_SIZE = 1024


@attrs.define(kw_only=True)
class Compiled:
    workflow: Workflow
    workflow_type: WorkflowType
    config: Any
    specs: list[StepSpec]
    #: The managed notification templates the configuration names.
    template_ids: tuple[str, ...] = ()
    #: The workflow is paused: its new executions wait queued (#16).
    paused: bool = False
    #: The configuration and the plan (the steps' names) as JSON, written once for the
    #: executions of this version (``ExecutionService._new_record``).
    texts: tuple[str, str] | None = None


class ExecutionRequests:
    """The checks of :class:`~abi_engine.executions.ExecutionService` before a start."""

    # Provided by ExecutionService.
    _store: AsyncStore
    _runtime: Runtime
    _workflows: WorkflowService
    _integrations: IntegrationService
    _templates: NotificationTemplateService
    _allow_private_urls: Callable[[], bool]
    _cache: dict[str, Compiled]
    _versions: ReadCoalescer[str, datetime | None] | None

    def _check_running(self) -> None:
        if not self._runtime.running:
            raise not_running()

    def _check_request(
        self,
        parameters: Mapping[str, Any] | None,
        *,
        wait: bool,
        timeout_seconds: float | None,
        callback_url: str | None,
        callback_secret: str | None,
        idempotency_key: str | None,
    ) -> tuple[Mapping[str, Any], float | None]:
        """The request's parameters and timeout, once every option is checked."""
        if not self._runtime.running:
            raise not_running()
        params = {} if parameters is None else parameters
        if type(params) is not dict and not isinstance(params, Mapping):
            raise InvalidParameters("'parameters' must be an object", {"field": "parameters"})
        timeout = _timeout(timeout_seconds, "execution_options.timeout_seconds")
        if wait and timeout is None:
            timeout = self._runtime.settings.default_sync_timeout
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= MAX_KEY
        ):
            raise InvalidRequest(
                f"The idempotency key must be 1 to {MAX_KEY} characters",
                {"field": "idempotency_key"},
            )
        if callback_url is not None:
            check_url(
                callback_url,
                field="callback_url",
                allow_private=self._allow_private_urls(),
            )
        if callback_secret is not None and (
            not isinstance(callback_secret, str)
            or not callback_secret.startswith("whsec_")
            or len(callback_secret) < 12
        ):
            raise InvalidRequest(
                "'callback_secret' must be a 'whsec_' secret", {"field": "callback_secret"}
            )
        return params, timeout

    async def _check_runnable(self, compiled: Compiled) -> None:
        """Refuse a workflow that is inactive, lacks a required integration or a template."""
        workflow = compiled.workflow
        if workflow.status is not WorkflowStatus.ACTIVE:
            raise InvalidState(
                f"Workflow {workflow.id!r} is inactive; activate it before executing",
                {"workflow_id": workflow.id, "status": workflow.status.value},
            )
        required = [i.id for i in workflow.integrations if i.required]
        if required:
            connected = await self._integrations.connected(required)
            missing = [i for i in required if i not in connected]
            if missing:
                raise IntegrationMissing(
                    f"Required integration {missing[0]!r} is not connected",
                    {"workflow_id": workflow.id, "integration_id": missing[0], "missing": missing},
                )
        if compiled.template_ids:
            await self.check_templates(workflow.id, compiled.template_ids)

    async def compiled(self, workflow_id: Any, *, cached_ok: bool = False) -> Compiled:
        """The workflow with its parsed configuration and steps, cached while unchanged.

        ``cached_ok``: the cached one as it is, without reading the workflow's version
        (for a caller whose write checks that version in its own transaction).
        """
        if not isinstance(workflow_id, str):
            raise WorkflowNotFound(str(workflow_id))
        if cached_ok and workflow_id in self._cache:
            return self._cache[workflow_id]
        if self._versions is not None:
            version = await self._versions.read(workflow_id)
        else:
            version = await self._store.workflow_version(workflow_id)
        if version is None:
            self._cache.pop(workflow_id, None)
            raise WorkflowNotFound(workflow_id)
        cached = self._cache.get(workflow_id)
        if cached is not None and cached.workflow.updated_at == version:
            return cached
        workflow = await self._store.get_workflow(workflow_id)
        if workflow is None:
            raise WorkflowNotFound(workflow_id)
        wtype = self._workflows.workflow_type(workflow.type)
        config = wtype.parse_configuration(workflow.configuration)
        compiled = Compiled(
            workflow=workflow,
            workflow_type=wtype,
            config=config,
            specs=wtype.steps(config),
            template_ids=tuple(self._workflows.template_ids(workflow)),
            paused=await self._store.workflow_paused_at(workflow_id) is not None,
        )
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[workflow_id] = compiled
        return compiled

    async def check_templates(self, workflow_id: str, template_ids: Collection[str]) -> None:
        """``InvalidState`` (409) naming the first of ``template_ids`` that does not exist.

        Reads the templates, so the workflow type's synchronous checks that
        follow see them (``engine.notification_templates.cached``).
        """
        missing = await self._templates.missing(template_ids)
        if missing:
            raise InvalidState(
                f"Notification template {missing[0]!r} does not exist; create it with"
                f" PUT /api/v1/notification_templates/{missing[0]}",
                {
                    "workflow_id": workflow_id,
                    "reason": "template_missing",
                    "template_id": missing[0],
                    "missing": missing,
                },
            )


def not_running() -> EngineNotRunning:
    """The error of an execution asked of an engine that was never started."""
    return EngineNotRunning(
        "The engine is not running, so nothing can be executed. A host application that"
        " mounts abi_asgi.create_app(engine) must start the engine in its own lifespan:"
        " `async with engine: yield` (Starlette does not run a mounted app's lifespan; see"
        " 'Mounting the API in your ASGI application' in docs/deployment.md). Embedded,"
        " use `async with engine:` or engine.start_blocking()",
        {"engine": "not_running"},
    )


def check_priority(priority: Any, field: str) -> None:
    """Refuse a ``priority`` that is not an integer from 0 to 9 (``None``: the default)."""
    if priority is None:
        return
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise InvalidRequest("'priority' must be an integer from 0 to 9", {"field": field})


def waited_answer(view: Execution, timeout: float | None) -> Execution:
    """The answer of a synchronous ``execute`` once its wait is over: the execution, or
    :class:`ExecutionTimeout` / :class:`WorkflowExecutionError` for one that timed out
    or failed."""
    execution_id = view.execution_id
    if view.status is ExecutionStatus.TIMED_OUT:
        raise ExecutionTimeout(
            f"Execution {execution_id} did not finish within {timeout:g} s"
            if timeout
            else f"Execution {execution_id} timed out",
            {"execution_id": execution_id, "timeout_seconds": timeout},
        )
    if view.status is ExecutionStatus.FAILED:
        error = view.error
        raise WorkflowExecutionError(
            f"Execution {execution_id} failed"
            + (f" in step {error.step!r}: {error.message}" if error and error.step else ""),
            {
                "execution_id": execution_id,
                "step": error.step if error else None,
                "error_type": error.type if error else None,
                "error_message": error.message if error else None,
            },
        )
    return view
