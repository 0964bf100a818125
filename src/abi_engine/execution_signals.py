"""Signals to waiting executions, the decisions of approvals, and an execution's details
(``engine.executions``).

Mixed into :class:`~abi_engine.executions.ExecutionService`; no state of its own.
A signal is stored with the execution and resumes it, in one transaction, by
granting it to the signalling node (see :mod:`abi_engine.runtime.runner`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from abi_engine.errors import (
    ExecutionNotFound,
    InvalidRequest,
    InvalidState,
)
from abi_engine.execution_views import ExecutionDetails
from abi_engine.ids import format_time, new_id, utcnow
from abi_engine.models import (
    Execution,
    ExecutionStatus,
    SignalDelivery,
)
from abi_engine.storage._fencing import new_claim
from abi_engine.storage.records import (
    DeliverCorrelatedSignal,
    DeliverSignal,
)
from abi_engine.types import (
    APPROVAL_SIGNAL,
    PROGRESS_PREFIX,
    IncomingSignal,
    WorkflowType,
    is_approval_signal,
)

if TYPE_CHECKING:
    from abi_engine.runtime.runner import Runtime
    from abi_engine.storage.aio import AsyncStore
    from abi_engine.workflows import WorkflowService

__all__ = ["CORRELATED_TTL_SECONDS", "MAX_CORRELATED_TTL_SECONDS", "ExecutionSignals"]

#: How long a signal sent to a correlation key nobody waits on is kept, by default.
CORRELATED_TTL_SECONDS = 86_400
#: The longest it may be kept (``ttl_seconds``).
MAX_CORRELATED_TTL_SECONDS = 7 * 86_400


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name or "#" in name:
        raise InvalidRequest("A signal name is a non-empty string without '#'", {"field": "name"})


def _ttl(ttl_seconds: Any) -> float:
    if ttl_seconds is None:
        return CORRELATED_TTL_SECONDS
    ok = isinstance(ttl_seconds, int | float) and not isinstance(ttl_seconds, bool)
    if not ok or not 1 <= ttl_seconds <= MAX_CORRELATED_TTL_SECONDS:
        raise InvalidRequest(
            f"'ttl_seconds' must be a number from 1 to {MAX_CORRELATED_TTL_SECONDS}",
            {"field": "ttl_seconds"},
        )
    return float(ttl_seconds)


class ExecutionSignals:
    """``signal`` and ``decide`` of :class:`~abi_engine.executions.ExecutionService`."""

    # Provided by ExecutionService.
    _store: AsyncStore
    _runtime: Runtime
    _workflows: WorkflowService

    async def get(self, execution_id: str) -> Execution:
        raise NotImplementedError

    async def signal(
        self,
        execution_id: str,
        name: str,
        payload: Any = None,
        *,
        require_waiting: bool = False,
        sender: str | None = None,
    ) -> Execution:
        """Deliver signal ``name`` to an execution and resume it if it waits for it.

        An unfinished execution that does not wait for it (yet) keeps it until
        a step waits for ``name`` (each signal is read by one wait: a name sent
        again is the next item of a stream, see ``StepContext.wait_for_signal``);
        a finished one refuses it (``InvalidState``). With ``require_waiting``
        the execution must be waiting for exactly this signal, else
        ``InvalidState``. ``sender`` is the user id
        of the caller (REST and ``abi.workflows`` pass it); the workflow type's
        ``check_signal`` sees it and may refuse the signal.
        """
        current = await self.get(execution_id)
        _check_name(name)
        if not current.status.finished:
            await self._check_signal(execution_id, name, payload, sender)
        # The execution it resumes is granted to this node in the same transaction (when
        # it runs here and can run the type), so no other run can start it meanwhile.
        runtime = self._runtime
        here = runtime.running  # (a node without the type hands it back to the store)
        token = new_claim() if here else None

        def resume(state: Any) -> None:  # at the commit, whatever happens to the caller
            if state == "queued" and token is not None:
                runtime.resume(execution_id, token)

        try:
            state = await runtime.commit(
                DeliverSignal(
                    execution_id=execution_id,
                    name=name,
                    payload=payload,
                    created_at=utcnow(),
                    require_waiting=require_waiting,
                    grant_owner=runtime.node_id if here else None,
                    grant_token=token,
                    lease_until=runtime.lease() if here else None,
                ),
                execution_id=execution_id,
                then=resume,
            )
        except (TypeError, ValueError):  # a payload JSON cannot hold
            raise InvalidRequest("A signal's payload must be JSON", {"field": "payload"}) from None
        if state is None:
            raise InvalidState(
                f"Execution {execution_id} is not waiting for {name!r}"
                f" (status {current.status.value})",
                {"execution_id": execution_id, "status": current.status.value, "signal": name},
            )
        return await self.get(execution_id)

    async def send_signal(
        self,
        name: str,
        correlation_key: str,
        payload: Any = None,
        *,
        ttl_seconds: float | None = None,
    ) -> SignalDelivery:
        """Deliver signal ``name`` to the execution waiting on ``correlation_key`` (the
        one waiting longest when several do), or, when none waits yet, keep it for
        the first wait on that key, for ``ttl_seconds`` (default
        :data:`CORRELATED_TTL_SECONDS`, a day; at most a week). Each signal is
        taken by exactly one wait. The workflow type's ``check_signal`` does not
        see these (no execution is named by the caller).
        """
        _check_name(name)
        if not (isinstance(correlation_key, str) and 0 < len(correlation_key) <= 200):
            raise InvalidRequest(
                "A correlation key is a string of 1 to 200 characters",
                {"field": "correlation_key"},
            )
        ttl = _ttl(ttl_seconds)
        runtime = self._runtime
        here = runtime.running
        token = new_claim() if here else None
        now = utcnow()

        def resume(result: Any) -> None:
            if result[0] == "queued" and token is not None:
                runtime.resume(result[1], token)

        op = DeliverCorrelatedSignal(
            signal_id=new_id("sig_"),
            name=name,
            correlation_key=correlation_key,
            payload=payload,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
            grant_owner=runtime.node_id if here else None,
            grant_token=token,
            lease_until=runtime.lease() if here else None,
        )
        try:
            _, execution_id = await runtime.commit(op, then=resume)
        except (TypeError, ValueError):
            raise InvalidRequest("A signal's payload must be JSON", {"field": "payload"}) from None
        return SignalDelivery(
            signal_id=op.signal_id,
            name=name,
            correlation_key=correlation_key,
            status="pending" if execution_id is None else "delivered",
            execution_id=execution_id,
            expires_at=op.expires_at if execution_id is None else None,
        )

    async def _check_signal(
        self, execution_id: str, name: str, payload: Any, sender: str | None
    ) -> None:
        """Let the execution's workflow type refuse the signal (``check_signal``)."""
        record = await self._store.get_execution(execution_id)
        wtype = self._workflows.find_type(record.workflow_type) if record else None
        if record is None or wtype is None:
            return
        if type(wtype).check_signal is WorkflowType.check_signal:
            return
        stored = await self._store.get_signals(execution_id)
        delivered = {k: v for k, v in stored.items() if not k.startswith("#")}  # not progress
        incoming = IncomingSignal(
            execution_id=execution_id,
            name=name,
            payload=payload,
            sender=sender,
            parameters=record.parameters,
            created_by=record.created_by,
            delivered=delivered,
        )
        wtype.check_signal(incoming, wtype.parse_configuration(record.configuration))

    async def decide(
        self,
        execution_id: str,
        approved: bool,
        *,
        comment: str | None = None,
        data: Mapping[str, Any] | None = None,
        decided_by: str | None = None,
    ) -> Execution:
        """Approve or reject an execution waiting for an approval decision.

        Delivers the payload ``{"approved", "comment", "data", "decided_by",
        "decided_at"}`` as the approval signal the execution waits for:
        ``approval``, or ``approval:<n>`` when it waits for the n-th decision
        of an approval that needs several. ``InvalidState`` when it waits for
        none; the workflow type may refuse the decider (``check_signal``).
        """
        if comment is not None and not isinstance(comment, str):
            raise InvalidRequest("'comment' must be a string", {"field": "comment"})
        if data is not None and not isinstance(data, Mapping):
            raise InvalidRequest("'data' must be an object", {"field": "data"})
        record = await self._store.get_execution(execution_id)
        if record is None:
            raise ExecutionNotFound(execution_id)
        name = APPROVAL_SIGNAL
        if record.status is ExecutionStatus.WAITING and is_approval_signal(
            record.waiting_for or ""
        ):
            name = record.waiting_for or APPROVAL_SIGNAL
        payload = {
            "approved": bool(approved),
            "comment": comment,
            "data": dict(data or {}),
            "decided_by": decided_by,
            "decided_at": format_time(utcnow()),
        }
        return await self.signal(
            execution_id, name, payload, sender=decided_by, require_waiting=True
        )

    async def details(self, execution_id: str) -> ExecutionDetails:
        """The execution with its stored step results, signals, saved progress and what
        it waits for (:class:`~abi_engine.execution_views.ExecutionDetails`)."""
        execution = await self.get(execution_id)  # ExecutionNotFound
        record = await self._store.get_execution(execution_id)
        steps = await self._store.get_steps(execution_id)
        stored = await self._store.get_signals(execution_id)
        if record is None:  # deleted since (retention)
            raise ExecutionNotFound(execution_id)
        signals = {k: v for k, v in stored.items() if not k.startswith(PROGRESS_PREFIX)}
        progress = {
            int(k.removeprefix(PROGRESS_PREFIX)): v
            for k, v in stored.items()
            if k.startswith(PROGRESS_PREFIX) and k.removeprefix(PROGRESS_PREFIX).isdigit()
        }
        waiting_for = record.waiting_for if execution.status is ExecutionStatus.WAITING else None
        return ExecutionDetails(
            execution=execution,
            parameters=dict(record.parameters),
            results={s.index: s.result for s in steps if s.result is not None},
            signals=signals,
            progress=progress,
            waiting_for=waiting_for,
            approval=waiting_for is not None and is_approval_signal(waiting_for),
        )
