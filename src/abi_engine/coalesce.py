"""Concurrent reads of one key shared by one query, without reading stale.

Under load, many tasks ask the store the same question at once (64 submitters
starting executions of one workflow each check its version first). On a store
reached over the network every such read is a round trip. :class:`ReadCoalescer`
lets the callers that arrive while a read of their key is in flight wait, and
sends one read for all of them once it returns. A caller only ever shares a
read *sent after it arrived*: it sees every write committed before its call,
exactly as if it had read alone (reads stay linearizable); the price is at most
one extra round trip of waiting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["ReadCoalescer"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Round:
    """One read, and the callers who wait for it."""

    __slots__ = ("abandoned", "done", "error", "value")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: Any = None
        self.error: Exception | None = None
        self.abandoned = False  # its leader was cancelled: its callers read again


class _Key:
    __slots__ = ("inflight", "waiting")

    def __init__(self) -> None:
        self.inflight: _Round | None = None  # the read sent, not yet answered
        self.waiting: _Round | None = None  # the next read: callers join it until sent


class ReadCoalescer(Generic[K, V]):
    """``await coalescer.read(key)``: ``read_fn(key)``, shared by the callers of one key
    that arrived before it was sent."""

    def __init__(self, read_fn: Callable[[K], Awaitable[V]]) -> None:
        self._read_fn = read_fn
        self._keys: dict[K, _Key] = {}
        #: Reads sent (for tests and figures).
        self.reads = 0

    async def read(self, key: K) -> V:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key()
        if state.waiting is not None:  # a read not sent yet: it will be sent after now
            current = state.waiting
            await current.done.wait()
        else:
            current = state.waiting = _Round()
            await self._lead(key, state, current)
        if current.abandoned:
            return await self.read(key)
        if current.error is not None:
            raise current.error
        value: V = current.value
        return value

    async def _lead(self, key: K, state: _Key, current: _Round) -> None:
        """Send ``current`` once the read in flight has returned (so every caller of
        ``current`` arrived before it is sent), and answer its callers."""
        try:
            while state.inflight is not None:
                await state.inflight.done.wait()
            state.waiting, state.inflight = None, current
            self.reads += 1
            try:
                current.value = await self._read_fn(key)
            except Exception as exc:
                current.error = exc
        except BaseException:  # cancelled: the callers that joined read again
            current.abandoned = True
            raise
        finally:
            if state.waiting is current:
                state.waiting = None
            if state.inflight is current:
                state.inflight = None
            if state.inflight is None and state.waiting is None:
                self._keys.pop(key, None)
            current.done.set()
