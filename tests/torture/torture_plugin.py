"""The torture suite's plugin: a workflow type that records its side effects, and a faulty store.

Loaded into every engine process of the suite through ``ABI_ENGINE_PLUGINS=torture_plugin``
(``tests/torture`` on ``PYTHONPATH``), as a third-party plugin would be. Two parts:

``torture_steps`` (a workflow type)
    Three steps, ``s0``, ``s1``, ``s2``. Each appends one line to the ledger (the file named
    by ``TORTURE_LEDGER``) when it starts and one when it ends, opened ``O_APPEND`` and
    fsynced, so a line survives a ``kill -9`` right after it::

        S <execution id> <step index> <node> <pid> <run> <monotonic ns> <wall> <attempt> <seen>
        E <execution id> <step index> <node> <pid> <run> <monotonic ns> <wall> <outcome> <seen>

    ``run`` is a fresh random id per run of a step (it pairs a start with its end);
    ``node`` is the harness's label of the process (``TORTURE_NODE``: ``n1.2`` is node 1
    after its second restart), so two processes that are both PID 1 of their PID
    namespaces stay apart; ``outcome`` is ``ok`` or the name of the exception that ended
    the run; ``seen`` is the nonce of the signal or approval the step waited for (``-``).
    The parameters say what the steps do: ``sleeps`` (seconds each step awaits),
    ``block`` (seconds step ``s1`` blocks the event loop with ``time.sleep``) and ``wait``
    (``"signal"``: ``s1`` waits for the signal ``go``; ``"approval"``: for an approval).
    A waiting step writes nothing before its wait returns: its run starts after the wait.

``abi_storage`` (a wrapper hook)
    When ``TORTURE_FAULTS`` holds a JSON list of faults, the store any other plugin opens
    is wrapped in a :class:`FaultStore`, which raises a real driver error on the n-th call
    of a chosen method, before the call (nothing happened) or after it (it happened, but
    the caller sees an error: a commit lost on its way back). Each injected fault is
    written to the ledger first::

        F <node> <pid> <fault index> <method> <op> <nth> <mode> <error> <monotonic ns> <wall> <ids>

    ``ids`` are the execution ids the failed call carried (``-`` for none: a call about
    the node as a whole, such as a lease renewal or a recovery poll).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio

from abi_engine import StepContext, WorkflowType, hookimpl, step

TYPE_NAME = "torture_steps"
STEPS = 3
#: The step that waits when the parameters ask for a wait.
WAIT_STEP = 1
SIGNAL_NAME = "go"

_fd_lock = threading.Lock()
_fd: int | None = None


def _node() -> str:
    return os.environ.get("TORTURE_NODE", "?")


def ledger_write(line: str) -> None:
    """Append ``line`` to the ledger in one ``write`` and fsync it (lines stay whole)."""
    global _fd
    data = (line.rstrip("\n") + "\n").encode()
    with _fd_lock:
        if _fd is None:
            _fd = os.open(
                os.environ["TORTURE_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
            )
        os.write(_fd, data)
        os.fsync(_fd)


def _stamp() -> str:
    return f"{time.monotonic_ns()} {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


def _nonce_of(payload: Any) -> str:
    if isinstance(payload, Mapping):
        if "nonce" in payload:
            return str(payload["nonce"])
        data = payload.get("data")
        if isinstance(data, Mapping) and "nonce" in data:
            return str(data["nonce"])
    return "?"


class TortureSteps(WorkflowType):
    """Three steps that log each run to the ledger; see the module docstring."""

    name = TYPE_NAME
    description = "Steps that record every run durably (torture suite)"

    async def _run(self, ctx: StepContext, index: int) -> Any:
        params = ctx.parameters
        seen = "-"
        wait = params.get("wait")
        if index == WAIT_STEP and wait:
            # Nothing before the wait: the step runs again from its start once the
            # signal arrives, and only that run counts.
            name = "approval" if wait == "approval" else SIGNAL_NAME
            seen = _nonce_of(ctx.wait_for_signal(name))
        run = secrets.token_hex(6)
        head = f"{ctx.execution_id} {index} {_node()} {os.getpid()} {run}"
        ledger_write(f"S {head} {_stamp()} {ctx.attempt} {seen}")
        outcome = "error"
        try:
            block = float(params.get("block", 0) or 0)
            if index == WAIT_STEP and block > 0:
                time.sleep(block)  # noqa: ASYNC251 - blocks the event loop on purpose, past the lease
            sleeps = params.get("sleeps") or []
            await anyio.sleep(float(sleeps[index]) if index < len(sleeps) else 0.0)
            outcome = "ok"
            return {"run": run, "node": _node(), "seen": seen}
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            ledger_write(f"E {head} {_stamp()} {outcome} {seen}")

    @step
    async def s0(self, ctx: StepContext) -> Any:
        return await self._run(ctx, 0)

    @step
    async def s1(self, ctx: StepContext) -> Any:
        return await self._run(ctx, 1)

    @step
    async def s2(self, ctx: StepContext) -> Any:
        return await self._run(ctx, 2)


@hookimpl
def abi_workflow_types(register: Callable[[type[WorkflowType]], None]) -> None:
    register(TortureSteps)


# -- fault injection ----------------------------------------------------------------------


def make_error(kind: str) -> Exception:
    """The exception a real driver raises for ``kind``."""
    if kind == "locked":
        import sqlite3

        return sqlite3.OperationalError("database is locked")
    if kind == "ioerr":
        import sqlite3

        return sqlite3.OperationalError("disk I/O error")
    if kind == "pg_admin":
        import psycopg

        return psycopg.OperationalError(
            "terminating connection due to administrator command (torture)"
        )
    if kind == "pg_closed":
        import psycopg

        return psycopg.OperationalError(
            "consuming input failed: server closed the connection unexpectedly (torture)"
        )
    raise ValueError(f"unknown fault error {kind!r}")


def _ids_in(value: Any, depth: int = 0) -> Iterable[str]:
    """Execution ids carried by a store call's argument (a write op, a record, an id)."""
    if isinstance(value, str):
        if value.startswith("exec_"):
            yield value
        return
    if depth > 6 or value is None or isinstance(value, int | float | bool | bytes | datetime):
        return
    if isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _ids_in(item, depth + 1)
        return
    if isinstance(value, Mapping):
        return
    fields = getattr(type(value), "__attrs_attrs__", None)
    names = [f.name for f in fields] if fields is not None else []
    for name in names:
        if name == "events":
            continue
        yield from _ids_in(getattr(value, name, None), depth + 1)


def _op_names(args: tuple[Any, ...]) -> set[str]:
    ops = args[0] if args and isinstance(args[0], list | tuple) else ()
    return {type(op).__name__ for op in ops}


class FaultStore:
    """A proxy around a real store that fails chosen calls (see the module docstring).

    ``faults`` is a list of ``{"method", "op", "nth", "mode", "error"}``: the ``nth``
    call (from 1) of ``method`` fails; with ``op`` (a write-op class name, for
    ``apply``) only calls carrying such an op count. ``mode`` ``before`` raises instead
    of calling, ``after`` calls and then raises. Everything else passes through.
    """

    def __init__(self, inner: Any, faults: list[dict[str, Any]]) -> None:
        self._inner = inner
        self._faults = [dict(f, index=i) for i, f in enumerate(faults)]
        self._methods = {f["method"] for f in faults}
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name not in self._methods or not callable(value):
            return value
        return self._wrap(name, value)

    def _due(self, name: str, args: tuple[Any, ...]) -> dict[str, Any] | None:
        hit = None
        ops = _op_names(args) if name == "apply" else set()
        with self._lock:
            for fault in self._faults:
                if fault["method"] != name or (fault.get("op") and fault["op"] not in ops):
                    continue
                count = self._counts.get(fault["index"], 0) + 1
                self._counts[fault["index"]] = count
                if count == fault["nth"] and hit is None:
                    hit = fault
        return hit

    def _fail(self, fault: dict[str, Any], name: str, args: tuple[Any, ...]) -> Exception:
        ids = sorted(set(_ids_in(args)))
        ledger_write(
            f"F {_node()} {os.getpid()} {fault['index']} {name} {fault.get('op') or '-'}"
            f" {fault['nth']} {fault['mode']} {fault['error']} {_stamp()}"
            f" {','.join(ids) or '-'}"
        )
        return make_error(fault["error"])

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            fault = self._due(name, args)
            if fault is not None and fault["mode"] == "before":
                raise self._fail(fault, name, args)
            result = fn(*args, **kwargs)
            if fault is not None:
                raise self._fail(fault, name, args)
            return result

        return call


@hookimpl(wrapper=True)
def abi_storage(url: str, options: Mapping[str, Any]) -> Generator[None, Any, Any]:
    """Wrap the store another plugin opens in a :class:`FaultStore` when faults are asked for."""
    store = yield
    spec = os.environ.get("TORTURE_FAULTS")
    if store is None or not spec:
        return store
    import json

    return FaultStore(store, json.loads(spec))
