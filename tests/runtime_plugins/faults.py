"""A real store with faults and interleavings injected on demand (runtime tests).

:class:`Harness` wraps the store of a backend (a SQLite file, a PostgreSQL
schema) and makes what networks and kernels do happen at a chosen moment: a
write whose commit succeeded but whose answer was lost, a call that fails, a
call that hangs (a partition), or another thread's action right after a
commit. :func:`harnessed` builds an engine with the test types on one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

import runtime_plugins
from abi_engine import Engine
from abi_engine.storage import Store
from abi_engine.storage.records import WriteOp
from runtime_plugins.helpers import EngineFactory, fast

__all__ = ["Harness", "harnessed"]


def _store_error(store: Store, message: str) -> Exception:
    """The error the backend's driver raises when the database does not answer."""
    if store.blocking:  # PostgreSQL
        import psycopg

        return psycopg.OperationalError(message)
    return sqlite3.OperationalError(message)


class Harness:
    """A real store with faults and interleavings injected on demand.

    - ``fail(kind, times, after=False)``: the next ``times`` batches holding an op of
      type ``kind`` raise; with ``after`` the batch is applied first (committed, its
      answer lost, as when a connection drops during COMMIT).
    - ``down(*names)`` / ``up()``: the named store methods raise until ``up()``.
    - ``fail_calls(name, times)``: the next ``times`` calls of store method ``name`` raise.
    - ``stall(*names)`` / ``unstall()``: calls of the named methods hang until ``unstall()``,
      then raise (a network partition: the driver waits for its timeouts).
    - ``after_commit(fn)``: ``fn(ops)`` runs right after each batch committed (before
      its caller sees the answer): what another thread or node does at that instant.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self.blocking = store.blocking
        self._faults: list[tuple[type[WriteOp], bool]] = []
        self._down: set[str] = set()
        self._lock = threading.Lock()
        self.failed: list[tuple[str, bool]] = []
        self.down_calls: list[str] = []
        self._after: list[Callable[[Sequence[WriteOp]], None]] = []
        self._call_faults: dict[str, int] = {}
        self._stalled: set[str] = set()
        self._unstalled = threading.Event()

    def fail(self, kind: type[WriteOp], times: int = 1, *, after: bool = False) -> None:
        with self._lock:
            self._faults.extend([(kind, after)] * times)

    def faults_left(self) -> int:
        with self._lock:
            return len(self._faults)

    def down(self, *names: str) -> None:
        self._down.update(names)

    def up(self) -> None:
        self._down.clear()

    def stall(self, *names: str) -> None:
        self._unstalled.clear()
        self._stalled.update(names)

    def unstall(self) -> None:
        self._stalled.clear()
        self._unstalled.set()

    def fail_calls(self, name: str, times: int = 1) -> None:
        with self._lock:
            self._call_faults[name] = self._call_faults.get(name, 0) + times

    def after_commit(self, fn: Callable[[Sequence[WriteOp]], None]) -> None:
        self._after.append(fn)

    def _check_down(self, name: str) -> None:
        if name in self._stalled:
            self._unstalled.wait(120)
            raise _store_error(self._store, f"{name}: timeout expired (injected)")
        with self._lock:
            once = self._call_faults.get(name, 0) > 0
            if once:
                self._call_faults[name] -= 1
        if once or name in self._down:
            self.down_calls.append(name)
            raise _store_error(self._store, f"{name}: server closed the connection (injected)")

    def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
        self._check_down("apply")
        fault = None
        with self._lock:
            for index, (kind, _after) in enumerate(self._faults):
                if any(type(op) is kind for op in ops):
                    fault = self._faults.pop(index)
                    break
        if fault is not None and not fault[1]:
            self.failed.append((fault[0].__name__, False))
            raise _store_error(self._store, "database is locked (injected)")
        results = self._store.apply(ops)
        for fn in list(self._after):
            fn(ops)
        if fault is not None:
            self.failed.append((fault[0].__name__, True))
            raise _store_error(self._store, "connection lost during COMMIT (injected)")
        return results

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._check_down(name)
            return attribute(*args, **kwargs)

        return call


def harnessed(
    make: EngineFactory, *, plugins: Sequence[object] = (), **settings: Any
) -> tuple[Engine, Harness]:
    """An engine (with the test types) on a Harness over a real store of the backend."""
    plain = make()
    harness = Harness(plain.store)
    engine = Engine(
        harness,  # type: ignore[arg-type]
        plugins=[runtime_plugins, *plugins],
        runtime=fast(**settings),
    )
    return engine, harness
