"""The synchronous door's batch mode counted with callgrind (issue #18).

One thread, as ``door_sync.py --modes normal:batch``: one ``execute_many`` of
``count`` executions through ``engine.call``, then a ``wait`` call for each.
Fifty executions warm up first (leases of an hour, so that no claim runs out under
callgrind's slowness); the measured part lies between two markers
(``zlib.crc32`` calls), so that start-up and warm-up are left out. Run it under
callgrind::

    valgrind --tool=callgrind --dump-before='crc32*' \\
        --callgrind-out-file=cg.%p python benchmarks/door_batch_callgrind.py 300

The third dump file (``cg.<pid>.3``) holds the measured part, every thread of
the process (the caller and the engine's loop): its ``totals:`` divided by
``count`` is the figure. ``--mode one`` measures ``execute(wait=False)`` per
call instead of one ``execute_many``.

Usage: python benchmarks/door_batch_callgrind.py [count] [durability] [--mode batch|one]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zlib
from functools import partial
from pathlib import Path

from _doors import DoorPlugin, committer_counts, expected

from abi_engine import Engine, RuntimeSettings


def measure(db: Path, count: int, durability: str, mode: str) -> None:
    # A long lease: under callgrind (~50x slower) on a loaded machine a heartbeat can
    # come late, and a run that loses its claim to recovery counts what it need not.
    settings = RuntimeSettings(lease_seconds=3600)
    engine = Engine(db, plugins=[DoorPlugin()], durability=durability, runtime=settings)  # type: ignore[arg-type]
    engine.start_blocking()
    try:
        wf = engine.call(engine.workflows.create, {"name": "door", "type": "door_three"})
        engine.call(engine.workflows.activate, wf.id)
        for i in range(50):
            engine.call(engine.executions.execute, wf.id, {"i": i})
        commits0, _ = committer_counts(engine)
        zlib.crc32(b"start")
        if mode == "batch":
            params = [{"i": i} for i in range(count)]
            ids = [
                a.execution_id for a in engine.call(engine.executions.execute_many, wf.id, params)
            ]
        else:
            submit = partial(engine.executions.execute, wait=False)
            ids = [engine.call(submit, wf.id, {"i": i}).execution_id for i in range(count)]
        for i, execution_id in enumerate(ids):
            ex = engine.call(engine.executions.wait, execution_id, 120)
            assert ex.result == {"value": expected(i)}, ex
        zlib.crc32(b"stop")
        commits, _ = committer_counts(engine)
        print(f"{count} executions in {commits - commits0} commits", file=sys.stderr)
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", type=int, nargs="?", default=300)
    parser.add_argument("durability", nargs="?", default="normal")
    parser.add_argument("--mode", choices=["batch", "one"], default="batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure(Path(tmp) / "callgrind.db", args.count, args.durability, args.mode)


if __name__ == "__main__":
    main()
