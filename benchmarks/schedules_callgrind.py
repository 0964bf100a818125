"""Schedule creates counted with callgrind (issue #17): instructions per create.

The ``--rrule`` mix of ``benchmarks/schedules.py`` (a quarter simple weekly rules, the
rest crons in five zones and intervals), created by 500 concurrent tasks as there:
500 creates to warm up, then ``count`` between two markers (``zlib.crc32`` calls), so
that start-up and warm-up are left out. Run it under callgrind::

    valgrind --tool=callgrind --dump-before='crc32*' \\
        --callgrind-out-file=cg.%p python benchmarks/schedules_callgrind.py 2000

The third dump file (``cg.<pid>.3``) holds the creates: its ``totals:`` divided by
``count`` is the figure (the bodies are those of indices ``offset`` on, as in the
middle of the 100,000 of the benchmark, so the caches miss as they do there).

Usage: python benchmarks/schedules_callgrind.py [count] [offset]
"""

from __future__ import annotations

import sys
import tempfile
import zlib
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
from schedules import WORKFLOW, ZONES, create_many, far_body

from abi_engine import Engine
from abi_engine.ids import utcnow


async def creates(db: Path, count: int, offset: int) -> None:
    engine = Engine(db)
    try:
        workflow = await engine.workflows.create(WORKFLOW)
        await engine.workflows.activate(workflow.id)
        async with engine:
            now = utcnow()
            hours = {zone: now.astimezone(ZoneInfo(zone)).hour for zone in ZONES}
            bodies = [far_body(i, hours, True) for i in range(offset, offset + 500 + count)]
            await create_many(engine, workflow.id, bodies[:500])
            commits = engine.runtime.committer.batches
            zlib.crc32(b"start")
            await create_many(engine, workflow.id, bodies[500:])
            zlib.crc32(b"stop")
            commits = engine.runtime.committer.batches - commits
            print(f"{count} creates in {commits} commits", file=sys.stderr)
    finally:
        engine.close()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    offset = int(sys.argv[2]) if len(sys.argv) > 2 else 40_000
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(creates, Path(tmp) / "callgrind.db", count, offset)


if __name__ == "__main__":
    main()
