"""The synchronous door's fast path (issue #18): ``execute(wait=False)`` and ``wait`` of
an ended execution answered in the calling thread, without the event loop.

``Engine.call(engine.executions.execute, wf_id, params, wait=False)`` from a host
thread used to cross to the event loop and back for each acceptance. When the call
needs nothing the loop owns (the workflow compiled and cached, no idempotency key,
no integration or template to check, tracing off), :meth:`ExecutionThreadDoor.
execute_in_thread` does the same checks in the caller's thread, commits the new
execution there (:class:`~abi_engine.runtime.thread_commit.ThreadCommits`: committed
at the engine's durability before the caller is answered) and posts the hand-over
to the runtime to the loop without waiting for it. Anything else returns ``None``:
the call then goes through the loop as before.

Mixed into :class:`~abi_engine.executions.ExecutionService`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from abi_engine.errors import InvalidParameters, InvalidState
from abi_engine.execution_requests import Compiled, check_priority
from abi_engine.execution_views import build_execution
from abi_engine.models import Execution, WorkflowStatus
from abi_engine.runtime.execution import Prepared, settled
from abi_engine.storage.records import InsertExecution

if TYPE_CHECKING:
    from abi_engine.auth import Principal
    from abi_engine.runtime.runner import Runtime
    from abi_engine.storage.aio import AsyncStore

__all__ = ["ExecutionThreadDoor"]

#: The options of ``execute`` the caller's thread handles; any other goes to the loop.
_IN_THREAD = frozenset(
    {"wait", "timeout_seconds", "callback_url", "callback_secret", "actor", "priority"}
)


class ExecutionThreadDoor:
    """``execute_in_thread`` and ``wait_in_thread`` of
    :class:`~abi_engine.executions.ExecutionService`."""

    # Provided by ExecutionService.
    _store: AsyncStore
    _runtime: Runtime
    _cache: dict[str, Compiled]

    def execute_in_thread(
        self, workflow_id: Any, parameters: Mapping[str, Any] | None = None, **options: Any
    ) -> Execution | None:
        """``execute(workflow_id, parameters, wait=False, ...)`` done in the calling
        thread (not the loop's): the accepted execution, or ``None`` when this call
        needs the event loop (then call ``execute`` there). Raises what ``execute``
        raises for the same request."""
        if options.get("wait", True) is not False or not _IN_THREAD.issuperset(options):
            return None
        runtime = self._runtime
        if runtime.thread_commits.loop is None or runtime.tracing is not None:
            return None
        compiled = self._compiled_in_thread(workflow_id)
        if compiled is None:
            return None
        priority = options.get("priority")
        check_priority(priority, "priority")
        params, timeout = self._check_request(  # type: ignore[attr-defined]
            parameters, wait=False, timeout_seconds=options.get("timeout_seconds"),
            callback_url=options.get("callback_url"),
            callback_secret=options.get("callback_secret"), idempotency_key=None,
        )  # fmt: skip
        _check_active(compiled)
        parsed = compiled.workflow_type.parse_parameters(params, compiled.config)
        reservation = runtime.reserve()
        try:
            return self._insert_in_thread(
                compiled, parsed, params, timeout=timeout, reservation=reservation,
                callback_url=options.get("callback_url"),
                callback_secret=options.get("callback_secret"),
                actor=options.get("actor"), priority=priority,
            )  # fmt: skip
        except BaseException:
            reservation.release()  # on success the runtime's hand-over releases it
            raise

    def _compiled_in_thread(self, workflow_id: Any) -> Compiled | None:
        """The cached compiled workflow while it is unchanged and needs no check of the
        loop's (required integrations, templates); ``None`` otherwise."""
        compiled = self._cache.get(workflow_id) if isinstance(workflow_id, str) else None
        if compiled is None or compiled.template_ids:
            return None
        if any(i.required for i in compiled.workflow.integrations):
            return None
        if self._store.sync.workflow_version(workflow_id) != compiled.workflow.updated_at:
            return None  # changed or deleted: the loop reads it again (or says so)
        return compiled

    def _insert_in_thread(
        self,
        compiled: Compiled,
        parsed: Any,
        params: Mapping[str, Any],
        *,
        timeout: float | None,
        reservation: Any,
        callback_url: str | None,
        callback_secret: str | None,
        actor: Principal | None,
        priority: int | None,
    ) -> Execution | None:
        workflow = compiled.workflow
        record = self._new_record(  # type: ignore[attr-defined]
            compiled.paused, workflow, compiled.specs, params, wait=False, timeout=timeout,
            callback_url=callback_url, callback_secret=callback_secret, idempotency_key=None,
            schedule_id=None, actor=actor, traceparent=None, parent_execution_id=None,
            scheduled_for=None, priority=priority,
        )  # fmt: skip
        runtime = self._runtime
        runtime.grant(record)
        prepared = Prepared(
            record=record,
            workflow_type=compiled.workflow_type,
            config=compiled.config,
            params=parsed,
            specs=compiled.specs,
            integration_ids=tuple(i.id for i in workflow.integrations),
            claimed=False,
        )

        def hand_over(inserted: Any) -> None:  # on the loop, after the commit
            if inserted and runtime.running:
                runtime.submit(prepared, sync=False, reservation=reservation)
                return
            reservation.release()
            if inserted and record.claim is not None:  # stopping: the engine's release
                runtime.claims.hold(record.id, record.claim)  # hands it back (or its lease)

        accepted = build_execution(record, [])  # as stored: the runtime owns the record next
        op = InsertExecution(record=record, workflow_version=workflow.updated_at)
        try:
            inserted = runtime.thread_commits.commit(op, execution_id=record.id, then=hand_over)
        except (TypeError, ValueError):
            raise InvalidParameters(
                "'parameters' must be JSON: objects, arrays, strings, finite numbers,"
                " booleans and null",
                {"field": "parameters"},
            ) from None
        if inserted is None:  # the workflow changed since it was checked: the loop checks
            reservation.release()  # the request again (and compiles the new version)
            return None
        if not inserted:  # without an idempotency key, only a store refusing it
            raise InvalidState("The execution could not be created; retry")
        return accepted

    def wait_in_thread(self, execution_id: Any, timeout: float | None = None) -> Execution | None:
        """``wait(execution_id)`` of an execution that has ended (or waits for a signal),
        answered from the calling thread; ``None`` when the loop must wait for it."""
        if not isinstance(execution_id, str) or self._runtime.thread_commits.loop is None:
            return None
        store = self._store.sync
        record = store.get_execution(execution_id)
        if record is None or not settled(record):
            return None
        return build_execution(record, store.get_steps(execution_id))


def _check_active(compiled: Compiled) -> None:
    workflow = compiled.workflow
    if workflow.status is not WorkflowStatus.ACTIVE:
        raise InvalidState(
            f"Workflow {workflow.id!r} is inactive; activate it before executing",
            {"workflow_id": workflow.id, "status": workflow.status.value},
        )
