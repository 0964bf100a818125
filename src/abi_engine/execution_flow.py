"""Reruns, pause and resume of executions (#16) (``engine.executions``).

Mixed into :class:`~abi_engine.executions.ExecutionService`; no state of its own.

A rerun is a new execution linked to the original (``rerun_of``) whose steps
before ``from_step`` are the original's stored results, inserted with it as
checkpointed steps (``reused_from``): the runtime resumes after them exactly as
it resumes any execution after its last checkpoint, so they never run again.

A pause is decided by the store (``storage/sql/flow_ops.py``): a queued
execution pauses at once, a running one at its next checkpoint, in the
transaction that stores the step; a paused execution holds no claim, so no
worker, grant or recovery can run it until ``resume`` queues it again.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from abi_engine.errors import (
    AbiError,
    ExecutionNotFound,
    InvalidParameters,
    InvalidRequest,
    InvalidState,
    WorkflowNotFound,
)
from abi_engine.events import Event, OutboxEvent
from abi_engine.execution_views import build_execution
from abi_engine.ids import new_id, parse_time, utcnow
from abi_engine.models import Execution, ExecutionStatus, StepStatus
from abi_engine.runtime.execution import Prepared
from abi_engine.storage.records import (
    ExecutionQuery,
    ExecutionRecord,
    InsertRerun,
    PauseExecution,
    PauseWorkflow,
    ResumeExecution,
    StepRecord,
)
from abi_engine.types import StepSpec, WorkflowType

if TYPE_CHECKING:
    from abi_engine.auth import Principal
    from abi_engine.runtime.runner import Runtime
    from abi_engine.storage.aio import AsyncStore
    from abi_engine.workflows import WorkflowService

__all__ = ["CONFIGURATION_MODES", "MAX_BULK_RERUN", "ExecutionFlow", "WorkflowPauseView"]

#: What configuration a rerun runs with: the original's snapshot, or the workflow's now.
CONFIGURATION_MODES = ("pinned", "current")
#: The most executions one bulk rerun starts.
MAX_BULK_RERUN = 1000
#: What a bulk rerun takes when its filter names no status.
DEFAULT_RERUN_STATUSES = ("failed", "timed_out", "cancelled")
_REUSABLE = (StepStatus.COMPLETED, StepStatus.SKIPPED)


class ExecutionFlow:
    """``rerun``, ``rerun_many``, ``pause`` and ``resume`` of the execution service."""

    # Provided by ExecutionService.
    _store: AsyncStore
    _runtime: Runtime
    _workflows: WorkflowService

    async def get(self, execution_id: str) -> Execution:
        raise NotImplementedError

    async def compiled(self, workflow_id: Any) -> Any:
        raise NotImplementedError

    async def _check_runnable(self, compiled: Any) -> None:
        raise NotImplementedError

    def _check_running(self) -> None:
        raise NotImplementedError

    # -- rerun ------------------------------------------------------------------------------

    async def rerun(
        self,
        execution_id: str,
        *,
        from_step: str | int | None = None,
        configuration: str = "pinned",
        parameters: Mapping[str, Any] | None = None,
        actor: Principal | None = None,
    ) -> Execution:
        """Start a new execution repeating ``execution_id`` (which must have ended) from
        ``from_step`` (a step name or index; default: its first step that did not
        complete), reusing the stored results of the steps before it.

        ``configuration``: ``pinned`` (the original's configuration snapshot) or
        ``current`` (the workflow's now); ``parameters`` replace the original's.
        Returns the new execution, queued (``rerun_of`` = ``execution_id``).
        """
        self._check_running()
        _check_mode(configuration)
        if parameters is not None and not isinstance(parameters, Mapping):
            raise InvalidParameters("'parameters' must be an object", {"field": "parameters"})
        original = await self._original(execution_id)
        compiled = await self.compiled(original.workflow_id)
        await self._check_runnable(compiled)
        wtype: WorkflowType = compiled.workflow_type
        config_json, config, specs = _configuration(configuration, compiled, original)
        stored = await self._store.get_steps(original.id)
        start = _start_index(from_step, specs, stored)
        params = dict(original.parameters if parameters is None else parameters)
        parsed = wtype.parse_parameters(params, config)
        record = ExecutionRecord(
            id=new_id("exec_"),
            workflow_id=original.workflow_id,
            workflow_type=compiled.workflow.type,
            workflow_name=compiled.workflow.name,
            status=ExecutionStatus.QUEUED,
            parameters=params,
            configuration=config_json,
            plan=[s.name for s in specs],
            created_at=utcnow(),
            created_by=actor.user_id if actor else None,
            rerun_of=original.id,
            queued_reason="paused" if compiled.paused else None,
        )
        reused = tuple(
            attrs.evolve(s, execution_id=record.id, reused_from=original.id, result_json=None)
            for s in stored[:start]
        )
        prepared = Prepared(
            record=record,
            workflow_type=wtype,
            config=config,
            params=parsed,
            specs=specs,
            integration_ids=tuple(i.id for i in compiled.workflow.integrations),
        )
        return await self._insert_rerun(prepared, reused, specs[start].name, configuration)

    async def _original(self, execution_id: Any) -> ExecutionRecord:
        """The execution a rerun repeats: it must exist and have ended."""
        if not isinstance(execution_id, str):
            raise ExecutionNotFound(str(execution_id))
        original = await self._store.get_execution(execution_id)
        if original is None:
            raise ExecutionNotFound(execution_id)
        if not original.status.finished:
            raise InvalidState(
                f"Execution {execution_id} has not ended ({original.status.value});"
                " rerun it once it has, or cancel it first",
                {"execution_id": execution_id, "status": original.status.value},
            )
        return original

    async def _insert_rerun(
        self, prepared: Prepared, reused: tuple[StepRecord, ...], from_name: str, mode: str
    ) -> Execution:
        record = prepared.record
        runtime = self._runtime
        events: tuple[OutboxEvent, ...] = ()
        if runtime.events.wants("execution.rerun"):
            data = {
                "execution_id": record.id,
                "workflow_id": record.workflow_id,
                "rerun_of": record.rerun_of,
                "from_step": from_name,
                "configuration": mode,
                "reused_steps": [s.name for s in reused],
            }
            events = (Event(type="execution.rerun", data=data),)
        reservation = runtime.reserve()
        try:
            runtime.grant(record)
            accepted = build_execution(record, list(reused))

            def hand_over(inserted: Any) -> None:
                if inserted:
                    runtime.submit(prepared, sync=False, reservation=reservation)

            try:
                await runtime.commit(
                    InsertRerun(record=record, steps=reused, events=events),
                    execution_id=record.id,
                    then=hand_over,
                )
            except (TypeError, ValueError):
                raise InvalidParameters(
                    "'parameters' must be JSON", {"field": "parameters"}
                ) from None
        finally:
            reservation.release()
        return accepted

    async def rerun_many(
        self,
        *,
        workflow_id: str | None = None,
        status: str | Sequence[str] | None = None,
        created_after: Any = None,
        created_before: Any = None,
        dry_run: bool = False,
        limit: int = 100,
        configuration: str = "pinned",
        actor: Principal | None = None,
    ) -> dict[str, Any]:
        """Rerun (each from its first step that did not complete) the ended executions
        the filter matches, newest first, at most ``limit`` (1 to
        :data:`MAX_BULK_RERUN`); with ``dry_run`` only list them.

        ``status`` defaults to ``failed``, ``timed_out`` and ``cancelled``.
        Returns ``{"dry_run", "matched", "items"}``: per execution taken, the
        ``rerun_execution_id`` started (``null`` in a dry run, or with ``error``
        when that one could not be started).
        """
        query = _bulk_query(workflow_id, status, created_after, created_before, limit)
        if not isinstance(dry_run, bool):
            raise InvalidRequest("'dry_run' must be a boolean", {"field": "dry_run"})
        _check_mode(configuration)
        records, total = await self._store.list_executions(query)
        items: builtins.list[dict[str, Any]] = []
        for original in records:
            item: dict[str, Any] = {
                "execution_id": original.id,
                "workflow_id": original.workflow_id,
                "status": original.status.value,
                "rerun_execution_id": None,
                "error": None,
            }
            if not dry_run:
                try:
                    started = await self.rerun(
                        original.id, configuration=configuration, actor=actor
                    )
                    item["rerun_execution_id"] = started.execution_id
                except AbiError as exc:
                    item["error"] = {"code": exc.code, "message": str(exc.message)}
            items.append(item)
        return {"dry_run": dry_run, "matched": total, "items": items}

    # -- child executions -------------------------------------------------------------------

    async def start_child(
        self, parent_execution_id: str, workflow_id: str, parameters: Mapping[str, Any], key: str
    ) -> str:
        """Start, once per ``key``, an execution of ``workflow_id`` whose end the store
        signals to ``parent_execution_id`` (``child:<id>``); its id
        (``StepContext.run_workflow``)."""
        started = await self.execute(  # type: ignore[attr-defined]
            workflow_id,
            parameters,
            wait=False,
            idempotency_key=key,
            parent_execution_id=parent_execution_id,
        )
        return str(started.execution_id)

    async def cancel_children(self, execution_id: str) -> None:
        """Cancel the unfinished children of an execution (and theirs, in turn)."""
        unfinished = (
            ExecutionStatus.QUEUED,
            ExecutionStatus.RUNNING,
            ExecutionStatus.WAITING,
            ExecutionStatus.PAUSED,
        )
        query = ExecutionQuery(
            page_size=1000, parent_execution_id=execution_id, statuses=unfinished
        )
        children, _ = await self._store.list_executions(query)
        for child in children:
            try:
                await self.cancel(child.id)  # type: ignore[attr-defined]
            except InvalidState:  # ended meanwhile
                continue

    # -- pause and resume -------------------------------------------------------------------

    async def pause_workflow(self, workflow_id: str, paused: bool = True) -> WorkflowPauseView:
        """Pause a workflow (``paused``; or resume it): while paused its new executions
        (requested, scheduled, rerun) are accepted and wait queued, ``queued_reason``
        ``paused``, as do those queued without a worker yet; resuming releases them.
        Executions already running go on. ``WorkflowNotFound`` for an unknown id."""
        if not isinstance(workflow_id, str):
            raise WorkflowNotFound(str(workflow_id))
        changed = await self._runtime.commit(
            PauseWorkflow(workflow_id=workflow_id, paused=paused, at=utcnow())
        )
        if changed is None:
            raise WorkflowNotFound(workflow_id)
        if not paused and changed:
            self._runtime.poke()
        at = await self._store.workflow_paused_at(workflow_id)
        return WorkflowPauseView(workflow_id, at is not None, at, int(changed))

    async def pause(self, execution_id: str) -> Execution:
        """Pause a queued execution at once, a running one at its next step boundary
        (until then it shows ``running``), a waiting one (a durable sleep, a signal, a
        child) at the step boundary after its wait ends (it shows ``waiting`` until
        then; woken, it pauses rather than going on); ``paused`` holds no worker or
        claim and survives restarts. Pausing a paused execution changes nothing;
        ``InvalidState`` for one that has ended."""
        await self.get(execution_id)
        state = await self._runtime.commit(
            PauseExecution(execution_id=execution_id, paused_at=utcnow()),
            execution_id=execution_id,
        )
        if not state:
            latest = await self.get(execution_id)
            raise InvalidState(
                f"Execution {execution_id} cannot be paused ({latest.status.value}):"
                " only unfinished executions can",
                {"execution_id": execution_id, "status": latest.status.value},
            )
        return await self.get(execution_id)

    async def resume(self, execution_id: str) -> Execution:
        """Resume a paused execution (queued again: a worker takes it soon), or withdraw
        the pause asked of one still running; ``InvalidState`` for anything else."""
        await self.get(execution_id)
        state = await self._runtime.commit(
            ResumeExecution(execution_id=execution_id, queued_since=utcnow()),
            execution_id=execution_id,
        )
        if not state:
            latest = await self.get(execution_id)
            raise InvalidState(
                f"Execution {execution_id} is not paused ({latest.status.value})",
                {"execution_id": execution_id, "status": latest.status.value},
            )
        if state == "queued":
            self._runtime.poke()
        return await self.get(execution_id)


def _check_mode(configuration: Any) -> None:
    if configuration not in CONFIGURATION_MODES:
        raise InvalidRequest(
            "'configuration' must be 'pinned' or 'current'", {"field": "configuration"}
        )


def _configuration(mode: str, compiled: Any, original: ExecutionRecord) -> tuple[Any, Any, Any]:
    """The configuration JSON, parsed configuration and steps a rerun runs with: the
    original's snapshot (``pinned``) or the workflow's now (``current``)."""
    if mode == "current":
        return compiled.workflow.configuration, compiled.config, compiled.specs
    wtype: WorkflowType = compiled.workflow_type
    config = wtype.parse_configuration(original.configuration)
    return original.configuration, config, wtype.steps(config)


class WorkflowPauseView(NamedTuple):
    """A workflow's pause: whether it is paused, since when, and how many queued
    executions this call held (pause) or released (resume)."""

    workflow_id: str
    paused: bool
    paused_at: datetime | None
    changed_executions: int


def _start_index(
    from_step: str | int | None, specs: Sequence[StepSpec], stored: Sequence[StepRecord]
) -> int:
    """The index of the step a rerun starts at; ``InvalidRequest`` naming ``from_step``
    when it is no step, or when a step before it did not complete in the original."""
    names = [s.name for s in specs]
    if not names:
        raise InvalidRequest("The workflow has no steps to rerun", {"field": "from_step"})
    done = _reusable(names, stored)
    if from_step is None:
        return done if done < len(names) else 0
    if isinstance(from_step, bool) or not isinstance(from_step, str | int):
        raise InvalidRequest("'from_step' must be a step name or index", {"field": "from_step"})
    if isinstance(from_step, int):
        index = from_step
        if not 0 <= index < len(names):
            raise InvalidRequest(
                f"'from_step' {from_step} is out of range: the workflow has {len(names)} steps",
                {"field": "from_step", "steps": names},
            )
    elif from_step in names:
        index = names.index(from_step)
    else:
        raise InvalidRequest(
            f"'from_step' {from_step[:80]!r} is not a step of the workflow",
            {"field": "from_step", "steps": names},
        )
    if index > done:
        raise InvalidRequest(
            f"'from_step' {names[index]!r} needs the result of step {names[done]!r},"
            " which did not complete in the original execution",
            {"field": "from_step", "first_incomplete": names[done]},
        )
    return index


def _reusable(names: Sequence[str], stored: Sequence[StepRecord]) -> int:
    """How many first steps of ``names`` the original stored as completed (or skipped),
    in order and by the same names: the steps a rerun may reuse."""
    done = 0
    for step in stored:
        if done >= len(names) or step.index != done or step.status not in _REUSABLE:
            break
        if step.name != names[done]:
            break
        done += 1
    return done


def _bulk_query(
    workflow_id: Any, status: Any, after: Any, before: Any, limit: Any
) -> ExecutionQuery:
    """The listing a bulk rerun takes its executions from; ``InvalidRequest`` naming a
    bad field of its filter."""
    if workflow_id is not None and not isinstance(workflow_id, str):
        raise InvalidRequest(
            "'filter.workflow_id' must be a string", {"field": "filter.workflow_id"}
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_BULK_RERUN:
        raise InvalidRequest(
            f"'limit' must be an integer from 1 to {MAX_BULK_RERUN}", {"field": "limit"}
        )
    values = DEFAULT_RERUN_STATUSES if status is None else status
    if isinstance(values, str):
        values = [values]
    statuses: builtins.list[ExecutionStatus] = []
    for value in values if isinstance(values, list | tuple) else [values]:
        try:
            parsed = ExecutionStatus(value)
        except ValueError:
            parsed = None
        if parsed is None or not parsed.finished:
            raise InvalidRequest(
                "'filter.status' must name ended statuses (completed, failed, timed_out,"
                " cancelled): only an ended execution can be rerun",
                {"field": "filter.status"},
            )
        statuses.append(parsed)
    return ExecutionQuery(
        page=1,
        page_size=limit,
        workflow_id=workflow_id,
        statuses=tuple(statuses),
        start=_time(after, "filter.created_after"),
        end=_time(before, "filter.created_before"),
    )


def _time(value: Any, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, datetime):
            return value
        if isinstance(value, str):
            return parse_time(value)
    except ValueError:
        pass
    raise InvalidRequest(f"'{field}' must be an RFC 3339 time", {"field": field})
