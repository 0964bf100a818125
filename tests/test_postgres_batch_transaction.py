"""A batch on PostgreSQL is the extended protocol's implicit transaction (#18).

A pipelined batch (``PostgresStore._write_batch``) sends no ``BEGIN`` or ``COMMIT``:
its statements, up to the ``Sync`` that ends the pipeline, are one transaction,
committed by that ``Sync`` (two statements fewer a batch). It stays all or nothing: a
server error aborts it (nothing of it is stored), and so does an exception raised by
the batch's own code after some of its writes were sent (``ABANDON``, without which
the ``Sync`` would commit them); its row locks are held until it ends.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from abi_engine.models import ExecutionStatus
from abi_engine.storage import postgres
from abi_engine.storage.postgres import PostgresStore
from abi_engine.storage.records import ClaimExecution, ExecutionRecord, InsertExecution

pytestmark = [pytest.mark.external_service, pytest.mark.postgresql_only]

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _insert(store: PostgresStore, execution_id: str) -> None:
    record = ExecutionRecord(
        id=execution_id,
        workflow_id="wf_t",
        workflow_type="t",
        status=ExecutionStatus.QUEUED,
        created_at=T0,
        owner="n",
        claim=1,
        lease_until=T0 + timedelta(days=3650),
    )
    assert store.apply([InsertExecution(record=record)]) == [True]


def _claim(execution_id: str) -> ClaimExecution:
    return ClaimExecution(
        execution_id=execution_id,
        grant=1,
        token=2,
        owner="n",
        lease_until=T0 + timedelta(days=3650),
        started_at=T0,
    )


@pytest.fixture
def store(make_store: Any) -> PostgresStore:
    s = make_store()
    assert isinstance(s, PostgresStore)
    s.write(
        lambda conn: conn.execute(
            "INSERT INTO workflows (id, name, type, status, configuration, created_at,"
            " updated_at) VALUES ('wf_t', 'w', 't', 'active', '{}', 0, 0)"
        )
    )
    return s


def test_a_batch_sends_no_begin_or_commit(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    execute = postgres.QmarkCursor.execute

    def spy(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query).split()[0].upper())
        return execute(self, query, *args, **kwargs)

    _insert(store, "ex_1")
    monkeypatch.setattr(postgres.QmarkCursor, "execute", spy)
    assert store.apply([_claim("ex_1")]) == [True]
    assert sent
    assert "BEGIN" not in sent
    assert "COMMIT" not in sent
    got = store.get_execution("ex_1")
    assert got is not None
    assert got.status is ExecutionStatus.RUNNING  # committed


def test_an_exception_of_the_batch_code_stores_none_of_its_writes(store: PostgresStore) -> None:
    _insert(store, "ex_1")
    before = store.get_execution("ex_1")

    def half(conn: Any) -> None:
        conn.execute("UPDATE executions SET status = 'running', claim = 7 WHERE id = 'ex_1'")
        conn.execute("SELECT 1").fetchall()  # the update reached the server and ran
        raise RuntimeError("the batch's code fails")

    with pytest.raises(RuntimeError):
        store._write_batch(half)
    assert store.get_execution("ex_1") == before
    assert store.apply([_claim("ex_1")]) == [True]  # the connection is fine for the next


def test_a_server_error_in_a_batch_stores_none_of_its_writes(store: PostgresStore) -> None:
    _insert(store, "ex_1")
    before = store.get_execution("ex_1")

    def failing(conn: Any) -> None:
        conn.execute("UPDATE executions SET status = 'running', claim = 7 WHERE id = 'ex_1'")
        conn.execute("SELECT 1 / 0").fetchall()

    with pytest.raises(psycopg.errors.DivisionByZero):
        store._write_batch(failing)
    assert store.get_execution("ex_1") == before


def test_a_batch_holds_its_row_locks_until_it_ends(store: PostgresStore) -> None:
    """Another transaction's update of a row the batch locked waits for the batch's end."""
    _insert(store, "ex_1")
    locked, release, order = threading.Event(), threading.Event(), []

    def batch(conn: Any) -> None:
        conn.execute("SELECT id FROM executions WHERE id = 'ex_1' FOR UPDATE").fetchall()
        locked.set()
        assert release.wait(30)
        conn.execute("UPDATE executions SET claim = 5, status = 'running' WHERE id = 'ex_1'")
        order.append("batch")

    def other() -> None:
        assert locked.wait(30)
        store.write(
            lambda c: c.execute("UPDATE executions SET claim = claim + 1 WHERE id = 'ex_1'")
        )
        order.append("other")

    thread = threading.Thread(target=other)
    thread.start()
    runner = threading.Thread(target=store._write_batch, args=(batch,))
    runner.start()
    assert locked.wait(30)
    thread.join(1.5)  # the other update waits on the lock: still running
    assert thread.is_alive()
    release.set()
    runner.join(30)
    thread.join(30)
    assert order == ["batch", "other"]
    with store._read() as conn:
        row = conn.execute("SELECT claim FROM executions WHERE id = 'ex_1'").fetchone()
    assert row == (6,)  # applied after the batch's 5
