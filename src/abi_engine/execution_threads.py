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

import asyncio
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from abi_engine.errors import AbiError, InvalidParameters, InvalidState
from abi_engine.execution_requests import Compiled, check_priority, not_running, waited_answer
from abi_engine.execution_views import build_execution
from abi_engine.models import Execution, WorkflowStatus
from abi_engine.runtime.execution import Prepared, settled
from abi_engine.storage.records import InsertExecution

if TYPE_CHECKING:
    from abi_engine.runtime.runner import Runtime
    from abi_engine.storage.aio import AsyncStore

__all__ = ["ExecutionThreadDoor", "ThreadWaiter"]

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
        """``execute(workflow_id, parameters, ...)`` done in the calling thread (not the
        loop's): the accepted execution (``wait=False``) or the ended one (``wait=True``,
        waited for here), or ``None`` when this call needs the event loop (then call
        ``execute`` there). Raises what ``execute`` raises for the same request."""
        wait = options.get("wait", True)
        if not isinstance(wait, bool) or not _IN_THREAD.issuperset(options):
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
            parameters, wait=wait, timeout_seconds=options.get("timeout_seconds"),
            callback_url=options.get("callback_url"),
            callback_secret=options.get("callback_secret"), idempotency_key=None,
        )  # fmt: skip
        try:
            parsed = compiled.workflow_type.parse_parameters(params, compiled.config)
        except AbiError:  # by the cached version: a newer one may accept them, the loop
            return None  # reads it (and refuses them again if it does not)
        request = _Request(compiled, parsed, params, timeout, options)
        if wait:
            return self._run_in_thread(request)
        reservation = runtime.reserve()
        try:
            stored, accepted = self._insert_in_thread(request, reservation=reservation)
        except BaseException:
            reservation.release()  # on success the runtime's hand-over releases it
            raise
        if not stored:
            reservation.release()
        return accepted

    def _compiled_in_thread(self, workflow_id: Any) -> Compiled | None:
        """The cached compiled workflow when it was active and needs no check of the
        loop's (required integrations, templates); ``None`` otherwise. Whether it is
        still that version is checked by the insert, in its transaction."""
        compiled = self._cache.get(workflow_id) if isinstance(workflow_id, str) else None
        if compiled is None or compiled.template_ids:
            return None
        workflow = compiled.workflow
        if workflow.status is not WorkflowStatus.ACTIVE:
            return None  # the loop reads it again: activated since, or refused there
        if workflow.integrations and any(i.required for i in workflow.integrations):
            return None
        return compiled

    def _insert_in_thread(
        self,
        request: _Request,
        *,
        reservation: Any = None,
        waiter: ThreadWaiter | None = None,
    ) -> tuple[bool, Execution | None]:
        """Commit the new execution from this thread: whether it was stored (not when the
        workflow changed since it was compiled), and its accepted view (without a
        ``waiter``: with one, the caller waits for the ended execution instead)."""
        compiled, options = request.compiled, request.options
        wait = waiter is not None
        workflow = compiled.workflow
        record = self._new_record(  # type: ignore[attr-defined]
            compiled.paused, workflow, compiled.specs, request.params, wait=wait,
            timeout=request.timeout, callback_url=options.get("callback_url"),
            callback_secret=options.get("callback_secret"), idempotency_key=None,
            schedule_id=None, actor=options.get("actor"), traceparent=None,
            parent_execution_id=None, scheduled_for=None, priority=options.get("priority"),
        )  # fmt: skip
        runtime = self._runtime
        runtime.grant(record)
        claimed, events = self._claim_at_once(  # type: ignore[attr-defined]
            record, workflow, wait=wait, paused=compiled.paused, reservation=reservation
        )
        prepared = Prepared(
            record=record,
            workflow_type=compiled.workflow_type,
            config=compiled.config,
            params=request.parsed,
            specs=compiled.specs,
            integration_ids=tuple([i.id for i in workflow.integrations])
            if workflow.integrations
            else (),
            claimed=claimed,
        )
        hand_over = _hand_over(runtime, prepared, sync=wait, reservation=reservation)
        accepted = None if wait else build_execution(record, [])  # the runtime owns it next
        if waiter is not None:  # before the commit: the run may end before it returns
            waiter.execution_id = record.id
            runtime._waiters[record.id] = waiter  # type: ignore[assignment]
        op = InsertExecution(record=record, events=events, workflow_version=workflow.updated_at)
        try:
            inserted = runtime.thread_commits.commit(op, execution_id=record.id, then=hand_over)
        except (TypeError, ValueError):
            raise InvalidParameters(
                "'parameters' must be JSON: objects, arrays, strings, finite numbers,"
                " booleans and null",
                {"field": "parameters"},
            ) from None
        if inserted is None:  # the workflow changed since it was checked: the loop checks
            return False, None  # the request again (and compiles the new version)
        if not inserted:  # without an idempotency key, only a store refusing it
            raise InvalidState("The execution could not be created; retry")
        return True, accepted

    def _run_in_thread(self, request: _Request) -> Execution | None:
        """``execute(..., wait=True)``: the execution committed from this thread (stored
        running when it starts at once), then waited for here until the loop's run
        ends it (``Runtime._notify`` sets the waiter); a timeout ends it ``timed_out``
        on the loop, as ``execute`` does."""
        runtime = self._runtime
        waiter = ThreadWaiter()
        try:
            stored, _ = self._insert_in_thread(request, waiter=waiter)
            if not stored:
                return None
            view = self._waited(waiter.execution_id, request.timeout, waiter)
        finally:
            waiters: dict[str, Any] = runtime._waiters
            if waiters.get(waiter.execution_id) is waiter:
                waiters.pop(waiter.execution_id, None)
        if view is None:  # its time passed: time it out on the loop (or see it ended)
            loop = runtime.thread_commits.loop
            if loop is None:
                raise not_running()
            unended = self._unended(  # type: ignore[attr-defined]
                waiter.execution_id, request.timeout, replay=False
            )
            view = asyncio.run_coroutine_threadsafe(unended, loop).result()
        return waited_answer(view, request.timeout)

    def _waited(
        self, execution_id: str, timeout: float | None, waiter: ThreadWaiter, grace: float = 0.25
    ) -> Execution | None:
        """Wait in this thread until the execution ends or waits (its view), or
        ``timeout`` (and a ``grace``) passes (``None``). Polls the store now and then, as
        the loop's wait does, for an end the runtime does not tell (another process)."""
        runtime = self._runtime
        deadline = None if timeout is None else time.monotonic() + timeout + grace
        poll = max(runtime.settings.poll_interval, 0.05)
        done = waiter.done
        while True:
            remaining = poll if deadline is None else min(poll, deadline - time.monotonic())
            if remaining <= 0:
                return None
            if done.wait_here(remaining):
                if waiter.execution is not None:
                    return waiter.execution
                done.clear()  # told without a view: look at the store
            if runtime.thread_commits.loop is None:
                raise not_running()
            view = self._settled_view(execution_id)
            if view is not None:
                return view

    def _settled_view(self, execution_id: str) -> Execution | None:
        store = self._store.sync
        record = store.get_execution(execution_id)
        if record is None or not settled(record):
            return None
        return build_execution(record, store.get_steps(execution_id))

    def wait_in_thread(self, execution_id: Any, timeout: float | None = None) -> Execution | None:
        """``wait(execution_id, timeout)`` answered from the calling thread: an execution
        that has ended (or waits for a signal) read there, one still running waited for
        there (told by its run's end, as ``execute(wait=True)`` is); ``None`` when the
        loop must answer (an unknown id, an odd timeout, another waiter of it there)."""
        runtime = self._runtime
        if not isinstance(execution_id, str) or runtime.thread_commits.loop is None:
            return None
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 <= timeout < math.inf
        ):
            return None
        store = self._store.sync
        record = store.get_execution(execution_id)  # ended already: answered, no waiter
        if record is None:
            return None
        if settled(record):
            return build_execution(record, store.get_steps(execution_id))
        waiter = ThreadWaiter()
        waiter.execution_id = execution_id
        waiters: dict[str, Any] = runtime._waiters
        mine = waiters.setdefault(execution_id, waiter) is waiter  # before the read: no end
        try:  # is missed between the read and the wait
            record = store.get_execution(execution_id)
            if record is not None and settled(record):
                return build_execution(record, store.get_steps(execution_id))
            if record is None or not mine:
                return None
            view = self._waited(execution_id, timeout, waiter, grace=0.0)
        finally:
            if mine and waiters.get(execution_id) is waiter:
                waiters.pop(execution_id, None)
        if view is not None:
            return view
        loop = runtime.thread_commits.loop  # its time passed: as it stands, as wait answers
        if loop is None:
            raise not_running()
        current = self.get(execution_id)  # type: ignore[attr-defined]
        found: Execution = asyncio.run_coroutine_threadsafe(current, loop).result()
        return found


def _hand_over(
    runtime: Runtime, prepared: Prepared, *, sync: bool, reservation: Any
) -> Callable[[Any], None]:
    """What runs on the loop after the commit of ``prepared``'s insert: the runtime runs
    it (at once when ``sync``), or, stopping, holds it for the engine's release."""
    record = prepared.record

    def hand_over(inserted: Any) -> None:
        if inserted and runtime.running:
            runtime.submit(prepared, sync=sync, reservation=reservation)
            return
        if reservation is not None:
            reservation.release()
        if inserted and record.claim is not None:  # stopping: the engine's release
            runtime.claims.hold(record.id, record.claim)  # hands it back (or its lease)

    return hand_over


class _Request:
    """A request of ``execute`` checked in the caller's thread."""

    __slots__ = ("compiled", "options", "params", "parsed", "timeout")

    def __init__(
        self,
        compiled: Compiled,
        parsed: Any,
        params: Mapping[str, Any],
        timeout: float | None,
        options: Mapping[str, Any],
    ) -> None:
        self.compiled = compiled
        self.parsed = parsed
        self.params = params
        self.timeout = timeout
        self.options = options


class _Done:
    """Set on the loop when the execution ends (``Runtime._notify``); waited for by a
    caller's thread, and awaited like an ``anyio.Event`` by a wait of the same
    execution on the loop, if any."""

    __slots__ = ("_loop", "_thread")

    def __init__(self) -> None:
        self._thread = threading.Event()
        self._loop: anyio.Event | None = None

    def set(self) -> None:
        self._thread.set()
        if self._loop is not None:
            self._loop.set()

    def is_set(self) -> bool:
        return self._thread.is_set()

    def clear(self) -> None:
        self._thread.clear()

    def wait_here(self, timeout: float) -> bool:
        return self._thread.wait(timeout)

    async def wait(self) -> None:
        if self._thread.is_set():
            return
        if self._loop is None:
            self._loop = anyio.Event()
        await self._loop.wait()


class ThreadWaiter:
    """A caller's thread waiting for an execution to end, among ``Runtime._waiters`` as
    the runtime's own waiters are: the run builds the ended execution's view for it
    and hands it over with ``done.set()`` (no read of the store)."""

    __slots__ = ("done", "execution", "execution_id")

    def __init__(self) -> None:
        self.done = _Done()
        self.execution: Execution | None = None
        self.execution_id = ""
