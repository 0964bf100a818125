"""The synchronous door counted with callgrind (issue #18): instructions per execution.

One host thread, the engine under ``engine.start_blocking()`` (``benchmarks/_doors.py``'s
three-step workload), a warm-up of 100 executions, then ``count`` executions between two
markers (``zlib.crc32`` calls), so that start-up and warm-up are left out:

- ``async``: ``engine.call(partial(engine.executions.execute, wait=False), wf, {"i": i})``
  ``count`` times, then ``engine.call(engine.executions.wait, id)`` for each (the method
  of fix 12 in docs/performance.md);
- ``seq``: ``engine.call(engine.executions.execute, wf, {"i": i})`` (``wait=True``) one
  after the other.

Run it under callgrind::

    valgrind --tool=callgrind --dump-before='crc32*' \\
        --callgrind-out-file=cg.%p python benchmarks/door_sync_callgrind.py async 300

The third dump file (``cg.<pid>.3``) holds the executions: its ``totals:`` divided by
``count`` is the figure. The commits per execution print on stderr.

Usage: python benchmarks/door_sync_callgrind.py [async|seq] [count] [normal|full]
"""

from __future__ import annotations

import sys
import tempfile
import zlib
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _doors import DoorPlugin, committer_counts, expected

from abi_engine import Engine


def run(db: Path, mode: str, count: int, durability: str) -> None:
    engine = Engine(db, plugins=[DoorPlugin()], durability=durability)  # type: ignore[arg-type]
    try:
        engine.start_blocking()
        wf = engine.call(engine.workflows.create, {"name": "door", "type": "door_three"})
        engine.call(engine.workflows.activate, wf.id)
        submit = partial(engine.executions.execute, wait=False)
        for i in range(100):  # warm up: caches, connections
            engine.call(engine.executions.execute, wf.id, {"i": i})
        commits0, _ = committer_counts(engine)
        zlib.crc32(b"start")
        if mode == "seq":
            for i in range(count):
                ex = engine.call(engine.executions.execute, wf.id, {"i": i})
                assert ex.result == {"value": expected(i)}, ex
        else:
            ids = [engine.call(submit, wf.id, {"i": i}).execution_id for i in range(count)]
            for i, execution_id in enumerate(ids):
                ex = engine.call(engine.executions.wait, execution_id, 120)
                assert ex.result == {"value": expected(i)}, ex
        zlib.crc32(b"stop")
        commits, _ = committer_counts(engine)
        print(
            f"{count} executions, {(commits - commits0) / count:.2f} commits each", file=sys.stderr
        )
    finally:
        engine.close()


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "async"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    durability = sys.argv[3] if len(sys.argv) > 3 else "normal"
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp) / "callgrind.db", mode, count, durability)


if __name__ == "__main__":
    main()
