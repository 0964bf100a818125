"""The claim rules both stores apply: who may write an execution, decided once.

Every claim of an execution carries a fresh *claim token* (a fencing token):
the grant that hands a queued execution to a node, and the run that a grant
turns into. Every later write of that run (checkpoint, progress, suspension,
finish, lease renewal) is a compare-and-set on the token, so a node that lost
the execution (its lease expired and another node took it, or it was
cancelled) can no longer change it, whatever it believes.

A write whose commit succeeded but whose answer was lost (a dropped
connection) may be applied again; each rule below recognises its own effect
and answers :data:`~abi_engine.storage.records.AGAIN` instead of ``False``.

The stores read each execution's ``(status, claim, completed_at)`` (one query
for a batch) and ask these functions what applies; they only write the rows.
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from abi_engine.storage._codec import to_ms
from abi_engine.storage.records import (
    AGAIN,
    CheckpointStep,
    ClaimExecution,
    FinishExecution,
)

__all__ = [
    "MISSING",
    "State",
    "checkpoints",
    "claims",
    "ended_again",
    "finishes",
    "new_claim",
]

#: ``(status, claim, completed_at in ms)`` of an execution as a batch reads it.
State = tuple[str, int | None, int | None]
MISSING: State = ("missing", None, None)
UNFINISHED = ("queued", "running", "waiting", "paused")


class _Tokens(random.Random):
    """Random 63-bit claim tokens, seeded from the OS (again in a forked child, so two
    processes never share a sequence); no system call per token."""

    def __init__(self) -> None:
        super().__init__(secrets.randbits(128))
        os.register_at_fork(after_in_child=lambda: self.seed(secrets.randbits(128)))


_TOKENS = _Tokens()


def new_claim() -> int:
    """A fresh claim token: a random positive 63-bit integer."""
    return _TOKENS.getrandbits(63) or 1


def claims(ops: Sequence[ClaimExecution], states: dict[str, State]) -> list[Any]:
    """Each claim's result: ``True`` when the execution is queued under its grant (the
    grant is then used up: a second claim with it in the batch loses), ``AGAIN`` when
    it already runs under its token, else ``False``. Updates ``states``.

    A grant is only ever on a queued row (recovery queues what it takes over), so a
    grant token can never pass for a run's token."""
    results: list[Any] = []
    for op in ops:
        status, claim, _ = states.get(op.execution_id, MISSING)
        if status == "running" and claim == op.token:
            results.append(AGAIN)
        elif status == "queued" and claim == op.grant:
            states[op.execution_id] = ("running", op.token, None)
            results.append(True)
        else:
            results.append(False)
    return results


def checkpoints(
    ops: Sequence[CheckpointStep],
    states: dict[str, State],
    stored: Mapping[tuple[str, int], int | None] | None = None,
) -> list[Any]:
    """Each checkpoint applies while its execution runs under its token. A retry
    rewrites the same step (idempotent); one that carries events answers ``AGAIN``
    when its step is stored already with the same end time (``stored``: the
    ``completed_at`` in ms of the stored steps of the checkpoints with events), so
    its events are not written twice."""
    results: list[Any] = []
    for op in ops:
        if states.get(op.step.execution_id, MISSING)[:2] != ("running", op.token):
            results.append(False)
        elif (
            op.events
            and stored is not None
            and stored.get((op.step.execution_id, op.step.index), -1) == to_ms(op.step.completed_at)
        ):
            results.append(AGAIN)
        else:
            results.append(True)
    return results


def ended_again(state: State, status: str, completed_at: datetime, token: int | None) -> bool:
    """Whether an ending (finish, cancel, timeout) already applied: same status and
    end time, and the same claim when it was made under one."""
    return (
        state[0] == status
        and state[2] == to_ms(completed_at)
        and (token is None or state[1] == token)
    )


def finishes(ops: Sequence[FinishExecution], states: dict[str, State]) -> list[Any]:
    """Each finish's result: ``True`` when it applies (under its token, or, without
    one, while unfinished), ``AGAIN`` for a retry of one that applied, else
    ``False``. Updates ``states``."""
    results: list[Any] = []
    for op in ops:
        state = states.get(op.execution_id, MISSING)
        status, claim, _ = state
        if op.token is not None:
            ok = status == "running" and claim == op.token
        else:
            ok = status in UNFINISHED
        if ok:
            states[op.execution_id] = (op.status.value, claim, to_ms(op.completed_at))
            results.append(True)
        elif ended_again(state, op.status.value, op.completed_at, op.token):
            results.append(AGAIN)
        else:
            results.append(False)
    return results


def types_filter(types: Collection[str] | None) -> list[str] | None:
    """The workflow types a recovery may take, sorted (``None``: any)."""
    return None if types is None else sorted(types)
