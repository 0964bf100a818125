"""What a step raises to wait or stop, and the names of the signals it waits for:
:class:`Suspend`, :class:`ExecutionLost`, :class:`SignalTimeout`,
:class:`ChildWorkflowFailed`, approvals' signal names, :class:`IncomingSignal`.

Part of the authoring API: :mod:`abi_engine.types` re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "APPROVAL_SIGNAL",
    "DURABLE_SLEEP_THRESHOLD",
    "MAX_CORRELATION_KEY",
    "PROGRESS_PREFIX",
    "SLEEP_PREFIX",
    "ChildWorkflowFailed",
    "ExecutionLost",
    "IncomingSignal",
    "SignalTimeout",
    "Suspend",
    "approval_signal",
    "is_approval_signal",
]

#: Name under which a step's progress is kept with the execution's signals (no
#: signal name can contain ``#``), followed by the step's index.
PROGRESS_PREFIX = "#progress:"

#: The longest correlation key (characters) a wait or a signal may carry.
MAX_CORRELATION_KEY = 200

#: Sleeps longer than this (seconds) suspend the execution instead of a worker.
DURABLE_SLEEP_THRESHOLD = 1.0
#: Prefix of the wait name of a durable sleep.
SLEEP_PREFIX = "sleep:"


class Suspend(BaseException):
    """Raised by :meth:`StepContext.wait_for_signal` to park the execution.

    A ``BaseException`` so that a step's ``except Exception`` cannot swallow it.
    """

    def __init__(
        self,
        name: str,
        timeout_seconds: float | None,
        *,
        sleeping: bool = False,
        correlation_key: str | None = None,
    ) -> None:
        super().__init__(name)
        self.name = name
        self.timeout_seconds = timeout_seconds
        #: The correlation key the wait can be woken by (see ``wait_for_signal``).
        self.correlation_key = correlation_key
        #: A durable sleep (running time: the execution's timeout still counts),
        #: not a wait for a signal from outside.
        self.sleeping = sleeping


class ExecutionLost(BaseException):
    """Raised by :meth:`StepContext.save_progress` when this engine no longer runs
    the execution (cancelled, or taken over by another engine after its lease
    lapsed): the step stops at once and this engine writes nothing more for it.

    A ``BaseException`` so that a step's ``except Exception`` cannot swallow it
    (and the step is not tried again while another engine runs it).
    """


class SignalTimeout(Exception):
    """A wait for a signal ended without the signal."""

    def __init__(self, name: str) -> None:
        super().__init__(f"No signal {name!r} arrived in time")
        self.name = name


class ChildWorkflowFailed(RuntimeError):
    """A child execution (:meth:`StepContext.run_workflow`) ended without completing:
    ``execution_id``, ``status`` (``failed``, ``timed_out``, ``cancelled``), ``error``."""

    def __init__(self, execution_id: str, ended: Any) -> None:
        data = ended if isinstance(ended, Mapping) else {}
        self.execution_id = execution_id
        self.status = str(data.get("status"))
        self.error = data.get("error")
        message = (self.error or {}).get("message") if isinstance(self.error, Mapping) else None
        super().__init__(
            f"child execution {execution_id} ended {self.status}"
            + (f": {message}" if message else "")
        )


#: The signal ``approve`` / ``reject`` deliver: an execution waiting for its first
#: decision waits for ``approval``, for its n-th (n >= 2) for ``approval:<n>``.
APPROVAL_SIGNAL = "approval"


def approval_signal(number: int) -> str:
    """The name of the ``number``-th (from 1) approval decision: ``approval``, ``approval:2``..."""
    return APPROVAL_SIGNAL if number <= 1 else f"{APPROVAL_SIGNAL}:{number}"


def is_approval_signal(name: str) -> bool:
    """Whether ``name`` is an approval decision's signal (``approval`` or ``approval:<n>``)."""
    return name == APPROVAL_SIGNAL or name.startswith(f"{APPROVAL_SIGNAL}:")


@attrs.frozen(kw_only=True)
class IncomingSignal:
    """A signal about to be delivered, as :meth:`WorkflowType.check_signal` sees it.

    ``sender`` is the user id of the caller delivering it over the REST API or
    ``abi.workflows`` (``decided_by`` for ``engine.executions.decide``), ``None``
    for a host calling ``engine.executions.signal`` in-process; ``parameters``
    and ``created_by`` are the execution's; ``delivered`` holds the signals it
    already received, by name.
    """

    execution_id: str
    name: str
    payload: Any
    sender: str | None
    parameters: Mapping[str, Any]
    created_by: str | None = None
    delivered: Mapping[str, Any]
