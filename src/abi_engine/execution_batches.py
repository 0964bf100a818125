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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from abi_engine.errors import AbiError, InvalidRequest, QueueFull
from abi_engine.models import Execution

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
        async def _start(self, *args: Any, **kwargs: Any) -> Execution: ...

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
        compiled = await self._checked(workflow_id, items, callback_url, callback_secret)
        parsed = [
            _at(i, compiled.workflow_type.parse_parameters, p, compiled.config)
            for i, p in enumerate(items)
        ]
        reservations = self._reserve_all(len(items))
        results: builtins.list[Execution | None] = [None] * len(items)
        errors: builtins.list[Exception] = []

        async def start(index: int) -> None:
            try:
                results[index] = await self._start_one(
                    compiled, parsed[index], items[index], callback_url, callback_secret,
                    actor, reservations[index],
                )  # fmt: skip
            except Exception as exc:  # the store failing: the others go on, the first is raised
                errors.append(exc)

        try:
            async with anyio.create_task_group() as tg:
                for index in range(len(items)):
                    tg.start_soon(start, index)
        finally:
            for reservation in reservations:
                reservation.release()
        if errors:
            raise errors[0]
        return [r for r in results if r is not None]

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

    async def _start_one(
        self,
        compiled: Any,
        parsed: Any,
        params: Mapping[str, Any],
        callback_url: str | None,
        callback_secret: str | None,
        actor: Principal | None,
        reservation: Any,
    ) -> Execution:
        return await self._start(
            compiled.paused,
            compiled.workflow,
            compiled.workflow_type,
            compiled.config,
            compiled.specs,
            parsed,
            params,
            wait=False,
            timeout=None,
            callback_url=callback_url,
            callback_secret=callback_secret,
            idempotency_key=None,
            schedule_id=None,
            actor=actor,
            reservation=reservation,
        )


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
