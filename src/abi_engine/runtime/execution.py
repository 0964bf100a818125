"""One execution as the runtime holds it, and how its outcome is stored.

:class:`Prepared` is an execution ready to run without reloading; the helpers
bound what a step may store (:func:`sized_json`), mask secrets in stored errors
(:func:`redact`) and say an exception in one line.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

import anyio
import attrs

from abi_engine.models import ExecutionStatus
from abi_engine.step_signals import SLEEP_PREFIX
from abi_engine.storage._codec import dumps as _dumps
from abi_engine.storage.records import (
    ExecutionRecord,
    HandedOff,
)
from abi_engine.types import (
    StepSpec,
    WorkflowType,
)

__all__ = [
    "SUSPENDED",
    "Backoff",
    "Failure",
    "Lost",
    "Prepared",
    "ProgressTooLarge",
    "ResultTooLarge",
    "milliseconds",
    "one_line",
    "redact",
    "settled",
    "sized_json",
]

_SECRETISH = re.compile(
    r"(whsec_[A-Za-z0-9+/=_-]+|abi_[A-Za-z0-9_-]{20,}|(?i:bearer)\s+[A-Za-z0-9._~+/=-]+)"
)
MAX_ERROR_MESSAGE = 1000


@attrs.define(kw_only=True)
class Prepared:
    """An execution made in this process, ready to run without reloading."""

    record: ExecutionRecord
    workflow_type: WorkflowType
    config: Any
    params: Any
    specs: list[StepSpec]
    #: The workflow's integration ids (``None``: not known yet, look them up).
    integration_ids: tuple[str, ...] | None = None
    #: Inserted already ``running`` and held by this node (no claim needed).
    claimed: bool = False
    integrations: dict[str, Any] = attrs.Factory(dict)
    #: The claim token of the run (set when it starts).
    token: int = 0
    #: Nothing of it is stored yet but the execution (no steps, signals, progress to read).
    fresh: bool = True
    #: What the commit of its finish granted this node of the executions waiting for the
    #: concurrency slot it freed (#16); ``None``: nothing was asked, or it did not apply.
    handed_off: HandedOff | None = None


def redact(message: str, secrets_: tuple[str, ...] = ()) -> str:
    """A message fit to store: known secrets and token-like strings masked, bounded."""
    for secret in secrets_:
        if secret and len(secret) >= 4:
            message = message.replace(secret, "********")
    message = _SECRETISH.sub("********", message)
    return message[:MAX_ERROR_MESSAGE]


class ResultTooLarge(ValueError):
    """A step returned a result whose JSON is larger than ``Limits.max_result_bytes``.

    The step fails at once (no retry: the same result would come back), and
    the execution with it; the step's error names the size and the limit.
    """


class ProgressTooLarge(ValueError):
    """A step saved progress whose JSON is larger than ``Limits.max_progress_bytes``
    (raised by ``ctx.save_progress``; nothing is saved)."""


def sized_json(value: Any, limit: int, what: str, error: type[ValueError]) -> str:
    """``value`` as JSON text, unless it is larger than ``limit`` bytes (``error``).

    A long string is refused before anything is encoded, so a step returning
    hundreds of megabytes costs no second copy of them.
    """
    if isinstance(value, str) and len(value) > limit:
        raise error(f"{what} is more than {limit} bytes of JSON ({len(value)} characters)")
    text = _dumps(value)
    if len(text) * 4 > limit:  # at most 4 bytes a character: only then count them
        size = len(text.encode("utf-8"))
        if size > limit:
            raise error(f"{what} is {size} bytes of JSON, more than the limit of {limit}")
    return text


class Lost(Exception):
    """This node no longer holds the execution it was writing (or cannot reach the
    store for long enough that it must assume so); the run stops without writing."""


class Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


SUSPENDED = object()


class Backoff:
    """The waits between the tries of a write the store refused: 50 ms, doubling up to
    ``cap``, for at most ``seconds`` from now."""

    __slots__ = ("cap", "delay", "give_up")

    def __init__(self, seconds: float, cap: float) -> None:
        self.delay = 0.05
        self.cap = cap
        self.give_up = time.monotonic() + seconds

    def left(self) -> bool:
        """Whether there is time for another wait and try."""
        return time.monotonic() + self.delay <= self.give_up

    async def sleep(self) -> None:
        """Wait before the next try."""
        await anyio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)


def milliseconds(delta: timedelta) -> int:
    return max(0, round(delta.total_seconds() * 1000))


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def settled(record: ExecutionRecord) -> bool:
    """Whether a caller waiting for ``record`` has its answer: it ended, or it waits for
    a signal (a durable sleep is still running time, not an answer)."""
    return record.status.finished or (
        record.status is ExecutionStatus.WAITING
        and not (record.waiting_for or "").startswith(SLEEP_PREFIX)
    )
