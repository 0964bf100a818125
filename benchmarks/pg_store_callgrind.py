"""The PostgreSQL server's instructions per execution for the store alone (issue #18).

The hot batches of the door workload applied straight to a ``PostgresStore``, in
batches of ``--batch`` ops (50, the committer's usual size under load): the
executions' inserts, their claims, two checkpoints each, and their finishes with
the last step, in one fresh schema (never analyzed: as every ``door_postgres.py``
figure runs). Run it against a private PostgreSQL running under callgrind::

    initdb -D /tmp/pgcg/data (as the postgres user; port 5499, autovacuum off)
    valgrind --tool=callgrind --callgrind-out-file=/tmp/pgcg/cg/cg.%p postgres -D /tmp/pgcg/data
    python benchmarks/pg_store_callgrind.py --url postgresql://...:5499/db --count 1000
    python benchmarks/pg_store_callgrind.py --url postgresql://...:5499/db --count 0

Each run's store connections end with it, so each backend writes its own file
(``cg.<pid>``): the pids printed at the end name the run's backends; the figure is
the sum of their ``totals:`` for ``--count N`` minus the same for ``--count 0``,
divided by ``N`` (the schema's migrations and the pool's connections cancel out).

The engine's side (the client's instructions per execution, the store's Python and
psycopg) is counted by running this script itself under callgrind, with the server
outside it: the dump between the two ``zlib.adler32`` markers holds the batches only::

    valgrind --tool=callgrind --dump-before='adler32*' --callgrind-out-file=cg.%p \
        python benchmarks/pg_store_callgrind.py --url URL --count 300

(``cg.<pid>.3``, the third dump: each marker makes two, ``adler32`` and ``adler32_z``;
its ``totals:`` divided by ``--count``).

    python benchmarks/pg_store_callgrind.py --url URL [--count 1000] [--batch 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import psycopg
from door_postgres import Schema

from abi_engine.models import ExecutionStatus, StepStatus
from abi_engine.storage.postgres import PostgresStore
from abi_engine.storage.records import (
    CheckpointStep,
    ClaimExecution,
    ExecutionRecord,
    FinishExecution,
    InsertExecution,
    StepRecord,
)

NOW = datetime.now(UTC)


def _step(execution_id: str, index: int) -> StepRecord:
    return StepRecord(
        execution_id=execution_id,
        index=index,
        name=f"s{index}",
        status=StepStatus.COMPLETED,
        started_at=NOW,
        completed_at=NOW,
        duration_ms=1,
        attempts=1,
        result={"value": index},
    )


def _batches(ids: list[str]) -> list[list[object]]:
    lease = NOW + timedelta(hours=1)
    inserts = [
        InsertExecution(
            record=ExecutionRecord(
                id=i,
                workflow_id="wf_door",
                workflow_type="door_three",
                status=ExecutionStatus.QUEUED,
                parameters={"i": 1},
                plan=["a", "b", "result"],
                created_at=NOW,
                owner="node-a",
                claim=1,
                lease_until=lease,
            )
        )
        for i in ids
    ]
    claims = [
        ClaimExecution(
            execution_id=i, grant=1, token=2, owner="node-a", lease_until=lease, started_at=NOW
        )
        for i in ids
    ]
    first = [CheckpointStep(step=_step(i, 0), token=2) for i in ids]
    second = [CheckpointStep(step=_step(i, 1), token=2) for i in ids]
    finishes = [
        FinishExecution(
            execution_id=i,
            workflow_id="wf_door",
            status=ExecutionStatus.COMPLETED,
            completed_at=NOW,
            duration_ms=2,
            result={"value": 4},
            token=2,
            step=_step(i, 2),
        )
        for i in ids
    ]
    return [inserts, claims, first, second, finishes]  # type: ignore[list-item]


def run(url: str, count: int, batch: int) -> list[int]:
    """Apply the batches of ``count`` executions; the pids of the store's backends."""
    store = PostgresStore(url, min_size=1, max_size=2)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO workflows (id, name, type, status, configuration, created_at,"
                " updated_at) VALUES ('wf_door', 'door', 'door_three', 'active', '{}', 0, 0)"
            )
        plans = [
            _batches([f"ex_{n:08d}" for n in range(s, min(count, s + batch))])
            for s in range(0, count, batch)
        ]
        zlib.adler32(b"start")  # markers for the client's own count (see the docstring)
        for ops_of_kinds in plans:
            for ops in ops_of_kinds:
                results = store.apply(ops)  # type: ignore[arg-type]
                assert all(r is True for r in results), results
        zlib.adler32(b"stop")
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            ).fetchall()
        return [int(r[0]) for r in rows]
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=os.environ.get("ABI_ENGINE_TEST_POSTGRES_URL"))
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    if not args.url:
        parser.error("give --url postgresql://...")
    with Schema(args.url) as schema:
        pids = run(schema.url(), args.count, args.batch)
    print("backends:", " ".join(map(str, pids)))


if __name__ == "__main__":
    main()
