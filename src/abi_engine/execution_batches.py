"""Many asynchronous executions of one workflow accepted at once (``engine.executions``).

Mixed into :class:`~abi_engine.executions.ExecutionService`; no state of its own.
A host with many executions to start (a synchronous host above all, where every
:meth:`~abi_engine.engine.Engine.call` is a hand-over to the engine's thread and
every acceptance a commit the caller waits for) submits them in one call: the
checks run once, and the insertions reach the group committer together, so a
thousand acceptances cost a few commits instead of a thousand.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from abi_engine.errors import AbiError, InvalidParameters, InvalidRequest, InvalidState, QueueFull
from abi_engine.events import OutboxEvent
from abi_engine.execution_views import build_execution
from abi_engine.models import Execution, ExecutionStatus, Workflow
from abi_engine.runtime.execution import Prepared
from abi_engine.storage._codec import dumps
from abi_engine.storage.records import InsertExecution

if TYPE_CHECKING:
    from abi_engine.auth import Principal
    from abi_engine.runtime.runner import Runtime

__all__ = ["MAX_BATCH", "ExecutionBatches"]

#: The most executions one :meth:`ExecutionBatches.execute_many` call accepts.
MAX_BATCH = 10_000


class ExecutionBatches:
    """``execute_many`` of :class:`~abi_engine.executions.ExecutionService`."""

    # Provided by ExecutionService.
    _runtime: Runtime

    if TYPE_CHECKING:

        def _check_request(self, *args: Any, **kwargs: Any) -> Any: ...
        async def compiled(self, workflow_id: str) -> Any: ...
        async def _check_runnable(self, compiled: Any) -> None: ...
        def _new_record(self, *args: Any, **kwargs: Any) -> Any: ...

    async def execute_many(
        self,
        workflow_id: str,
        parameters: Sequence[Mapping[str, Any] | None],
        *,
        callback_url: str | None = None,
        callback_secret: str | None = None,
        actor: Principal | None = None,
    ) -> builtins.list[Execution]:
        """Start one asynchronous execution of ``workflow_id`` per item of ``parameters``
        (at most :data:`MAX_BATCH`), as ``execute(..., wait=False)`` would, and return
        them in the same order, each ``queued`` or ``running`` and durable.

        All or nothing at the door: every item is checked before any is stored (a
        refused item raises the error ``execute`` would, its ``details`` naming its
        ``index``), and :class:`~abi_engine.errors.QueueFull` is raised when the queue
        has no room for all of them. ``callback_url``/``callback_secret`` apply to
        every execution. There is no idempotency key per item: a host that retries
        a batch after a lost answer uses :meth:`execute` with keys instead.
        """
        items = _items(parameters)
        _check_json(items)
        compiled = await self._checked(workflow_id, items, callback_url, callback_secret)
        todo = list(range(len(items)))
        parsed = [_at(i, compiled.workflow_type.parse_parameters, items[i], compiled.config)
                  for i in todo]  # fmt: skip
        reservations = self._reserve_all(len(items))
        answers: builtins.list[Execution | None] = [None] * len(items)
        try:
            while True:
                got = await self._insert_all(compiled, parsed, todo, items, reservations,
                                             (callback_url, callback_secret, actor))  # fmt: skip
                for i, answer in zip(todo, got, strict=True):
                    answers[i] = answer
                todo = [i for i in todo if answers[i] is None]
                if not todo:
                    return [a for a in answers if a is not None]
                # Not stored: the workflow changed (updated, paused or resumed) since the
                # check. Checked again against its version now, as ``execute`` does.
                compiled = await self._checked(workflow_id, items, callback_url, callback_secret)
                parsed = [_at(i, compiled.workflow_type.parse_parameters, items[i],
                              compiled.config) for i in todo]  # fmt: skip
        finally:
            for reservation in reservations:
                reservation.release()

    async def _insert_all(
        self,
        compiled: Any,
        parsed: builtins.list[Any],
        positions: builtins.list[int],
        items: builtins.list[Mapping[str, Any]],
        reservations: builtins.list[Any],
        options: tuple[str | None, str | None, Principal | None],
    ) -> builtins.list[Execution | None]:
        """Insert the items at ``positions`` (``parsed`` in the same order) in one
        hand-over to the group committer (no task each): each is handed to the runtime
        at its commit, as ``execute`` would. ``None`` for one not stored because its
        workflow changed since ``compiled`` was read."""
        runtime = self._runtime
        workflow = compiled.workflow
        # As many as workers are idle are stored running already (as a synchronous
        # execute's): one write fewer each, the claim (not when the store decides).
        at_once = 0 if compiled.paused or _store_decides(workflow) else len(positions)
        at_once = runtime.take_idle(at_once)
        try:
            return await self._insert_each(compiled, parsed, positions, items, reservations,
                                           at_once, options)  # fmt: skip
        finally:
            runtime.give_idle(at_once)

    async def _insert_each(
        self,
        compiled: Any,
        parsed: builtins.list[Any],
        positions: builtins.list[int],
        items: builtins.list[Mapping[str, Any]],
        reservations: builtins.list[Any],
        at_once: int,
        options: tuple[str | None, str | None, Principal | None],
    ) -> builtins.list[Execution | None]:
        runtime = self._runtime
        workflow = compiled.workflow
        callback_url, callback_secret, actor = options
        integration_ids = tuple(i.id for i in workflow.integrations)
        ops: builtins.list[InsertExecution] = []
        thens: builtins.list[Callable[[Any], None]] = []
        accepted: builtins.list[Execution] = []
        for index, position in enumerate(positions):
            record = self._new_record(
                compiled.paused, workflow, compiled.specs, items[position], wait=False, timeout=None,
                callback_url=callback_url, callback_secret=callback_secret, idempotency_key=None,
                schedule_id=None, actor=actor, traceparent=None, parent_execution_id=None,
                scheduled_for=None, priority=None,
            )  # fmt: skip
            runtime.grant(record)
            events: tuple[OutboxEvent, ...] = ()
            if index < at_once:
                record.status = ExecutionStatus.RUNNING
                record.started_at = record.created_at
                events = runtime.started_events(record)
            prepared = Prepared(
                record=record,
                workflow_type=compiled.workflow_type,
                config=compiled.config,
                params=parsed[index],
                specs=compiled.specs,
                integration_ids=integration_ids,
                claimed=index < at_once,
            )
            ops.append(
                InsertExecution(record=record, events=events, workflow_version=workflow.updated_at)
            )
            thens.append(partial(_hand_over, runtime, prepared, reservations[position]))
            # The answer is the execution as stored: taken now, since the runtime owns
            # (and changes) the record from the commit on.
            accepted.append(build_execution(record, []))
        results = await runtime.commit_many(ops, thens)
        for position, result in zip(positions, results, strict=True):
            _check_inserted(position, result)
        return [None if r is None else a for a, r in zip(accepted, results, strict=True)]

    async def _checked(
        self,
        workflow_id: str,
        items: builtins.list[Mapping[str, Any]],
        callback_url: str | None,
        callback_secret: str | None,
    ) -> Any:
        """The compiled workflow, once the options and the workflow are checked."""
        self._check_request(
            None,
            wait=False,
            timeout_seconds=None,
            callback_url=callback_url,
            callback_secret=callback_secret,
            idempotency_key=None,
        )
        compiled = await self.compiled(workflow_id)
        await self._check_runnable(compiled)
        return compiled

    def _reserve_all(self, count: int) -> builtins.list[Any]:
        """A queue place for each of ``count`` executions, or ``QueueFull`` and none."""
        room = self._runtime.room()
        if count > room:
            raise QueueFull(
                f"The execution queue has room for {max(room, 0)} executions, not {count}; "
                "retry later or submit fewer",
                {"queue_size": self._runtime.settings.queue_size, "room": max(room, 0)},
            )
        return [self._runtime.reserve() for _ in range(count)]


def _store_decides(workflow: Workflow) -> bool:
    """Whether the store decides when ``workflow``'s executions start (#16: concurrency
    limits, a rate limit, a debounce), as in ``executions._limited``."""
    return (
        workflow.max_concurrency is not None
        or workflow.concurrency is not None
        or workflow.rate_limit is not None
        or workflow.debounce is not None
    )


def _hand_over(runtime: Runtime, prepared: Prepared, reservation: Any, inserted: Any) -> None:
    """At the commit of an insertion (called by the committer): a caller cancelled
    meanwhile cannot leave it stored but not running."""
    if inserted:
        runtime.submit(prepared, sync=False, reservation=reservation)


def _check_inserted(index: int, result: Any) -> None:
    """Raise what the insertion of item ``index`` met, if it was not stored (``None``:
    its workflow changed meanwhile, checked again by the caller)."""
    if isinstance(result, TypeError | ValueError):  # parameters JSON cannot hold
        raise InvalidParameters(
            "'parameters' must be JSON: objects, arrays, strings, finite numbers,"
            " booleans and null",
            {"field": f"parameters[{index}]", "index": index},
        )
    if isinstance(result, Exception):
        raise result
    if result is not None and not result:
        raise InvalidState("The execution could not be created; retry", {"index": index})


def _check_json(items: builtins.list[Mapping[str, Any]]) -> None:
    """Refuse the batch before anything is stored when an item's parameters are not
    JSON (all or nothing: the insertions would store the others and then fail)."""
    try:
        dumps(items)
    except (TypeError, ValueError):
        for index, item in enumerate(items):
            try:
                dumps(item)
            except (TypeError, ValueError):
                _check_inserted(index, TypeError())
        _check_inserted(0, TypeError())  # together only (not met: each item is a tree)


def _items(parameters: Any) -> builtins.list[Mapping[str, Any]]:
    """``parameters`` as a list of mappings (``None`` read as ``{}``), bounded."""
    if isinstance(parameters, str | bytes | Mapping) or not isinstance(parameters, Sequence):
        raise InvalidRequest(
            "'parameters' must be a list of parameter objects", {"field": "parameters"}
        )
    if len(parameters) > MAX_BATCH:
        raise InvalidRequest(
            f"At most {MAX_BATCH} executions per call", {"field": "parameters", "max": MAX_BATCH}
        )
    items = [{} if p is None else p for p in parameters]
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidRequest(
                f"'parameters[{index}]' must be an object",
                {"field": f"parameters[{index}]", "index": index},
            )
    return items


def _at(index: int, fn: Any, *args: Any) -> Any:
    """``fn(*args)``, an error it raises naming the item's ``index``."""
    try:
        return fn(*args)
    except AbiError as exc:
        exc.details.setdefault("index", index)
        raise
