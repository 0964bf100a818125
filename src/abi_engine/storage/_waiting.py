"""Where a store call may wait for another writer, and where it must not.

A SQLite file is written by one connection at a time, across processes: a second
``abi-engine serve --processes``, ``abi-engine prune`` from cron, a backup, the host's
own connection. A write made inline on the engine's event loop (:func:`call_store`
runs a SQLite call there: it is quicker than a thread hop) that waited for such a
writer stalled the loop for as long: every request, timer and heartbeat of the
process, up to SQLite's busy timeout (60 s).

So a call made on the loop is *impatient*: when the database's write lock is taken
elsewhere, the store raises :class:`WouldWait` before it has written anything, and
the caller runs the same call again in a worker thread, where waiting is fine. A call
that already committed a write is never repeated: from its first commit on it waits
like any other (:func:`settled`).
"""

from __future__ import annotations

import threading

__all__ = ["WouldWait", "impatient", "set_impatient", "settled"]


class WouldWait(BaseException):
    """Another writer holds the database: nothing was written; call again where
    waiting stalls nobody (a worker thread).

    A ``BaseException``, as cancellation is: the store's own ``except Exception``
    (a batch retried op by op, an op's error kept as its result) must let it through
    to :func:`~abi_engine.storage.aio.call_store`, not take it for the op's failure."""


class _State(threading.local):
    impatient = False


_state = _State()


def impatient() -> bool:
    """Whether this thread's current store call must not wait for another writer."""
    return _state.impatient


def set_impatient(value: bool) -> bool:
    """Set whether this thread's store calls may wait; the previous value."""
    previous = _state.impatient
    _state.impatient = value
    return previous


def settled() -> None:
    """This call committed a write: it can no longer be repeated elsewhere, so any
    write it makes next waits rather than raising :class:`WouldWait`."""
    _state.impatient = False
