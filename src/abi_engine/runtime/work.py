"""Wake-ups of the runtime's workers, one per execution queued; places held in the queue.

What a memory object stream of ``None`` items did for the worker pool, without
its costs per item: a receive there always yields a turn of the event loop
first, and records the receiving task. Here a worker that ends a run and finds
work waiting takes it at once, and an idle worker waits on an event of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Protocol

import anyio

__all__ = ["Wakeups"]


class _Queue(Protocol):
    """What a :class:`_Reservation` counts in (the runtime)."""

    _reserve_lock: threading.Lock
    _reserved: int

    def take_idle(self, wanted: int) -> int: ...

    def give_idle(self, count: int) -> None: ...


class _Idle:
    """An idle worker's wait: set with ``given`` when an item is handed to it (a bare
    future on asyncio, lighter than an event; an anyio event elsewhere)."""

    __slots__ = ("event", "given")

    def __init__(self) -> None:
        self.event: asyncio.Future[None] | anyio.Event
        try:
            self.event = asyncio.get_running_loop().create_future()
        except RuntimeError:  # not on asyncio
            self.event = anyio.Event()
        self.given = False

    def set(self) -> None:
        event = self.event
        if isinstance(event, anyio.Event):
            event.set()
        elif not event.done():  # (cancelled: its worker is going away)
            event.set_result(None)

    async def wait(self) -> None:
        event = self.event
        await (event.wait() if isinstance(event, anyio.Event) else event)


class Wakeups:
    """Counts items pushed and not taken yet; :meth:`take` waits for one."""

    def __init__(self) -> None:
        self._waiting = 0
        self._idle: deque[_Idle] = deque()
        self._closed = False

    def push(self) -> None:
        """One item more: hand it to an idle worker, or keep it for the next taker."""
        if self._closed:
            raise anyio.ClosedResourceError
        if self._idle:
            idle = self._idle.popleft()
            idle.given = True
            idle.set()
        else:
            self._waiting += 1

    async def take(self) -> bool:
        """Wait for an item and take it: ``True``; ``False`` once closed."""
        if self._waiting:
            self._waiting -= 1
            return True
        if self._closed:
            return False
        idle = _Idle()
        self._idle.append(idle)
        try:
            await idle.wait()
        except BaseException:  # cancelled: an item handed over meanwhile goes to another
            if idle.given:
                if not self._closed:
                    self.push()
            else:
                self._idle.remove(idle)
            raise
        return idle.given

    def close(self) -> None:
        """No more items: every idle worker (and any that comes) ends."""
        self._closed = True
        while self._idle:
            self._idle.popleft().set()


class _Reservation:
    """A place held in the asynchronous queue (see :meth:`Runtime.reserve`)."""

    __slots__ = ("_runtime", "_worker")

    def __init__(self, runtime: _Queue) -> None:
        self._runtime: _Queue | None = runtime
        #: Whether it holds an idle worker too (:meth:`hold_worker`).
        self._worker = False

    def hold_worker(self) -> bool:
        """Hold an idle worker for the execution this place is for, if one is idle now:
        it is then stored running at its acceptance (no claim write when it starts, as
        ``execute_many``'s first ones); given back with the place (:meth:`release`)."""
        runtime = self._runtime
        if runtime is not None and not self._worker:
            self._worker = runtime.take_idle(1) == 1
        return self._worker

    def release(self) -> None:
        runtime = self._runtime
        if runtime is not None:
            with runtime._reserve_lock:  # a caller's thread or the loop may release it
                if self._runtime is None:
                    return
                self._runtime = None
                runtime._reserved -= 1
                worker, self._worker = self._worker, False
            if worker:  # (after the execution was queued: the count stays right)
                runtime.give_idle(1)
