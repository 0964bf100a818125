"""Storage: schema and migrations, workflow CRUD, the outbox, pagination and concurrency.

Tests taking the ``store`` / ``make_store`` fixtures run against every storage
backend; the ones opening :class:`SQLiteStore` directly check SQLite specifics
(WAL, indexes, query plans, migrations table).
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abi_engine import Engine, Workflow, WorkflowStatus
from abi_engine.events import Event, ExecutionEventRef
from abi_engine.ids import new_id, utcnow
from abi_engine.models import Integration, Scope, Token
from abi_engine.storage import SQLiteStore, Store, WorkflowQuery
from abi_engine.storage._codec import to_ms
from abi_engine.storage.base import TokenLimitReached
from abi_engine.storage.migrations import MIGRATIONS

NewWorkflow = Callable[..., Workflow]
StoreFactory = Callable[..., Store]

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _event(workflow: Workflow, kind: str = "created") -> Event:
    return Event(type=f"workflow.{kind}", data={"id": workflow.id})


def _count(store: Store, **filters: Any) -> int:
    return store.list_workflows(WorkflowQuery(page_size=1, **filters))[1]


# -- schema and migrations (SQLite) ---------------------------------------------------------


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    conn.close()
    return {r[0] for r in rows}


def test_migrations_applied_once_and_idempotent(db_path: Path) -> None:
    """A new file gets every migration once; reopening applies nothing again."""
    store = SQLiteStore(db_path)
    assert store.schema_version() == len(MIGRATIONS)
    store.close()
    conn = sqlite3.connect(db_path)
    first = conn.execute("SELECT version, name, applied_at FROM schema_migrations").fetchall()
    conn.close()
    assert [row[0] for row in first] == list(range(1, len(MIGRATIONS) + 1))
    assert [row[1] for row in first] == [m.__name__ for m in MIGRATIONS]
    for _ in range(2):
        again = SQLiteStore(db_path)
        assert again.schema_version() == len(MIGRATIONS)
        again.close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT version, name, applied_at FROM schema_migrations").fetchall() == (
        first
    )
    conn.close()
    assert {"workflows", "integrations", "users", "tokens", "events"} <= _tables(db_path)


def test_failed_migration_leaves_nothing(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails is rolled back whole: no table, no version recorded."""
    SQLiteStore(db_path).close()

    def m999_broken(db: Any) -> None:
        db.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("migration failed")

    monkeypatch.setattr("abi_engine.storage.sqlite.MIGRATIONS", [*MIGRATIONS, m999_broken])
    with pytest.raises(RuntimeError, match="migration failed"):
        SQLiteStore(db_path)
    monkeypatch.undo()
    assert "half_done" not in _tables(db_path)
    store = SQLiteStore(db_path)
    assert store.schema_version() == len(MIGRATIONS)
    store.close()


def test_events_migration_keeps_rows_and_positions(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """m005 rebuilds the outbox: every event keeps its position and data; no position is reused."""
    from abi_engine.storage.migrations import m005_events_by_reference

    index = MIGRATIONS.index(m005_events_by_reference)
    monkeypatch.setattr("abi_engine.storage.sqlite.MIGRATIONS", MIGRATIONS[:index])
    old = SQLiteStore(db_path)
    events = [Event(type="workflow.created", data={"id": f"wf_{n}"}) for n in range(5)]
    old.write(  # as the code of schema 4 wrote them
        lambda conn: conn.executemany(
            "INSERT INTO events (id, type, timestamp, data) VALUES (?, ?, ?, ?)",
            [(e.id, e.type, to_ms(e.timestamp), json.dumps(e.data)) for e in events],
        )
    )
    old.write(lambda conn: conn.execute("DELETE FROM events WHERE seq = 5"))
    old.close()
    monkeypatch.undo()
    store = SQLiteStore(db_path)
    try:
        assert store.schema_version() == len(MIGRATIONS)
        kept = store.events_after(0)
        assert [(s.seq, s.event) for s in kept] == list(enumerate(events[:4], start=1))
        ref = ExecutionEventRef.new("execution.completed", "exec_x")
        store.insert_events([ref])
        (stored,) = store.events_after(4)
        assert stored.seq == 6  # 5 was used (then deleted): never given out again
        assert stored.event == ref._replace(id=stored.event.id)
        assert stored.event.id is not None
        assert stored.event.id > events[-1].id
    finally:
        store.close()


def test_wal_and_synchronous(db_path: Path, tmp_path: Path) -> None:
    """Files are in WAL mode; durability "normal" is synchronous=NORMAL, "full" is FULL."""
    normal = SQLiteStore(db_path)
    full = SQLiteStore(tmp_path / "full.db", durability="full")
    try:
        conn = sqlite3.connect(db_path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
        assert normal.db.execute("PRAGMA synchronous").fetchone()[0] == 1
        assert full.db.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert normal.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        # The writer waits for another process a few ms at a time (SQLiteStore.transaction
        # retries up to 60 s off the loop: tests/test_sqlite_other_writer.py); readers wait.
        assert normal.db.execute("PRAGMA busy_timeout").fetchone()[0] == 5
        with normal._read() as reader:
            assert reader.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    finally:
        normal.close()
        full.close()


def test_queued_quota_reads_the_partial_index(db_path: Path) -> None:
    """Counting a user's queued executions (every execute_async over REST) reads the
    partial index of queued rows, not every execution the user ever started: SQLite
    without statistics would pick idx_executions_creator (issue #18)."""
    store = SQLiteStore(db_path)
    statements: list[str] = []
    try:
        with store._read() as conn:
            conn.set_trace_callback(statements.append)
            try:
                assert store.count_owned("queued_executions", "usr_a", 1000) == 0
            finally:
                conn.set_trace_callback(None)
        (sql,) = [s for s in statements if "FROM executions" in s]
        plan = " | ".join(row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "USING INDEX idx_executions_queued_owner" in plan, plan
    finally:
        store.close()


def test_workflow_indexes_exist(db_path: Path) -> None:
    """Workflows are indexed on each filter and sort column, on live rows."""
    SQLiteStore(db_path).close()
    conn = sqlite3.connect(db_path)
    leading = {}
    for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'workflows'"
    ):
        columns = [row[2] for row in conn.execute(f"PRAGMA index_info('{name}')")]
        if columns:
            leading[columns[0]] = name
    conn.close()
    for column in ("status", "type", "department", "created_at", "updated_at", "name"):
        assert column in leading, f"no index leads with workflows.{column}"


@pytest.fixture
def traced_sql(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL statement run by connections opened from now on (values inlined)."""
    statements: list[str] = []
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    return statements


@pytest.mark.parametrize(
    "filters",
    [
        {"status": WorkflowStatus.ACTIVE},
        {"type": "t1"},
        {"department": "sales"},
        {"sort_by": "name", "sort_order": "asc"},
        {"sort_by": "updated_at"},
    ],
    ids=["status", "type", "department", "sort-name", "sort-updated"],
)
def test_list_query_plan_uses_an_index(
    db_path: Path, traced_sql: list[str], new_workflow: NewWorkflow, filters: dict[str, Any]
) -> None:
    """The SQL of page 1 of a filtered or sorted list is an index search, never a full scan."""
    store = SQLiteStore(db_path)
    try:
        for i in range(60):
            store.insert_workflow(
                new_workflow(
                    name=f"w{i}",
                    type=f"t{i % 3}",
                    department=["sales", "ops", None][i % 3],
                    status=WorkflowStatus.ACTIVE if i % 2 else WorkflowStatus.INACTIVE,
                )
            )
        traced_sql.clear()
        items, total = store.list_workflows(WorkflowQuery(page=1, page_size=10, **filters))
        assert items
        assert total > 0
        selects = [s for s in traced_sql if s.lstrip().upper().startswith("SELECT")]
        assert len(selects) >= 2
        conn = sqlite3.connect(db_path)
        for sql in selects:
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            assert any("INDEX idx_workflows" in step for step in plan), (sql, plan)
            assert not any(step == "SCAN workflows" for step in plan), (sql, plan)
            assert not any("TEMP B-TREE" in step for step in plan), (sql, plan)
        conn.close()
    finally:
        store.close()


def test_a_users_token_list_reads_an_index(db_path: Path, traced_sql: list[str]) -> None:
    """Page 1 of one user's live tokens is a search of idx_tokens_user, not a scan or a sort."""
    store = SQLiteStore(db_path)
    try:
        for u in range(4):
            store.ensure_user(f"usr_{u}", T0)
        for i in range(40):
            token = Token(
                id=new_id("tok_"),
                user_id=f"usr_{i % 4}",
                scopes=frozenset(Scope),
                created_at=T0 + timedelta(seconds=i),
            )
            store.insert_token(token, f"hash{i}")
        traced_sql.clear()
        items, total = store.list_user_tokens("usr_1", 1, 5)
        assert (len(items), total) == (5, 10)
        assert [t.created_at for t in items] == sorted((t.created_at for t in items), reverse=True)
        selects = [s for s in traced_sql if s.lstrip().upper().startswith("SELECT")]
        assert len(selects) == 2
        conn = sqlite3.connect(db_path)
        for sql in selects:
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            assert any("idx_tokens_user" in step for step in plan), (sql, plan)
            assert not any("TEMP B-TREE" in step for step in plan), (sql, plan)
        conn.close()
    finally:
        store.close()


def test_token_lineage_migration_keeps_tokens(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """m007 on a schema-6 file keeps every token (roots, parent_id NULL) and its revocation."""
    from abi_engine.storage.migrations import m007_token_lineage

    index = MIGRATIONS.index(m007_token_lineage)
    monkeypatch.setattr("abi_engine.storage.sqlite.MIGRATIONS", MIGRATIONS[:index])
    old = SQLiteStore(db_path)
    assert old.schema_version() == 6
    old.ensure_user("usr_a", T0)
    ids = [new_id("tok_") for _ in range(3)]
    old.write(  # as the code of schema 6 wrote them
        lambda conn: conn.executemany(
            "INSERT INTO tokens (id, hash, user_id, scopes, name, created_at, revoked_at)"
            " VALUES (?, ?, 'usr_a', '[\"workflows:read\"]', ?, ?, ?)",
            [
                (token_id, f"h-{token_id}", f"t{n}", to_ms(T0) + n, to_ms(T0) if n == 2 else None)
                for n, token_id in enumerate(ids)
            ],
        )
    )
    old.close()
    monkeypatch.undo()
    store = SQLiteStore(db_path)
    try:
        assert store.schema_version() == len(MIGRATIONS) >= 7
        kept = store.list_tokens("usr_a")
        assert [(t.id, t.name, t.parent_id) for t in kept] == [
            (ids[1], "t1", None),
            (ids[0], "t0", None),
        ]
        assert store.get_token(f"h-{ids[2]}") is None  # still revoked
        child = _mint(store, "usr_a", kept[1], offset=9)
        assert store.revoke_token(ids[0], T0) == [ids[0], child.id]
        assert [t.id for t in store.list_tokens()] == [ids[1]]
    finally:
        store.close()


def test_revoking_a_token_tree_reads_the_parent_index(db_path: Path, traced_sql: list[str]) -> None:
    """The cascade finds each generation's children from idx_tokens_parent, never by a scan."""
    store = SQLiteStore(db_path)
    try:
        roots = parents = [_mint(store, "usr_a", offset=i) for i in range(10)]
        for generation in range(3):
            parents = [_mint(store, "usr_a", p, offset=generation) for p in parents]
        traced_sql.clear()
        assert len(store.revoke_token(roots[0].id, T0)) == 4
        walks = [s for s in traced_sql if s.lstrip().upper().startswith("WITH RECURSIVE")]
        assert len(walks) == 1  # the update, returning the ids
        conn = sqlite3.connect(db_path)
        for sql in walks:
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            assert sum("INDEX idx_tokens_parent" in step for step in plan) == 2, (sql, plan)
            assert not any(step in ("SCAN tokens", "SCAN t") for step in plan), (sql, plan)
        conn.close()
    finally:
        store.close()


# -- workflows --------------------------------------------------------------------------------


def test_insert_get_round_trip(store: Store, new_workflow: NewWorkflow) -> None:
    """A stored workflow reads back equal, with zeroed stats and pending integrations."""
    wf = new_workflow(
        name="Feedback",
        description="d",
        department="cs",
        integrations=["int_a", "int_b"],
        configuration={"nested": {"list": [1, 2.5, None, "é"]}},
        created_by="usr_x",
    )
    store.insert_workflow(wf)
    got = store.get_workflow(wf.id)
    assert got == wf
    assert got is not wf
    assert store.get_workflow("wf_missing") is None


def test_update_workflow(store: Store, new_workflow: NewWorkflow) -> None:
    """update_workflow replaces mutable fields, department follows metadata; missing -> False."""
    wf = new_workflow(department="sales")
    store.insert_workflow(wf)
    later = wf.created_at + timedelta(seconds=5)
    wf.name = "renamed"
    wf.metadata = {"department": "ops", "priority": "high"}
    wf.status = WorkflowStatus.ACTIVE
    wf.activated_at = later
    wf.updated_at = later
    assert store.update_workflow(wf) is True
    assert store.get_workflow(wf.id) == wf
    assert _count(store, department="ops") == 1
    assert _count(store, department="sales") == 0
    ghost = new_workflow()
    assert store.update_workflow(ghost) is False
    assert store.get_workflow(ghost.id) is None


def test_delete_workflow(store: Store, new_workflow: NewWorkflow) -> None:
    """A deleted workflow is gone from get and list; deleting again returns False."""
    keep, drop = new_workflow(name="keep"), new_workflow(name="drop")
    store.insert_workflow(keep)
    store.insert_workflow(drop)
    assert store.delete_workflow(drop.id, utcnow()) is True
    assert store.get_workflow(drop.id) is None
    assert store.delete_workflow(drop.id, utcnow()) is False
    assert store.update_workflow(drop) is False
    items, total = store.list_workflows(WorkflowQuery())
    assert [w.id for w in items] == [keep.id]
    assert total == 1


def test_list_filters_and_sorts(store: Store, new_workflow: NewWorkflow) -> None:
    """Filters combine; sort keys and orders apply; ties break by id."""
    rows = [
        new_workflow(
            name=name,
            type=wtype,
            department=dept,
            status=status,
            created_at=T0 + timedelta(minutes=i),
        )
        for i, (name, wtype, dept, status) in enumerate(
            [
                ("b", "x", "sales", WorkflowStatus.ACTIVE),
                ("a", "x", "ops", WorkflowStatus.INACTIVE),
                ("d", "y", "sales", WorkflowStatus.ACTIVE),
                ("c", "y", None, WorkflowStatus.INACTIVE),
            ]
        )
    ]
    for wf in rows:
        store.insert_workflow(wf)

    def names(**kw: Any) -> list[str]:
        return [w.name for w in store.list_workflows(WorkflowQuery(**kw))[0]]

    assert names() == ["c", "d", "a", "b"]
    assert names(sort_order="asc") == ["b", "a", "d", "c"]
    assert names(sort_by="name", sort_order="asc") == ["a", "b", "c", "d"]
    assert names(status=WorkflowStatus.ACTIVE) == ["d", "b"]
    assert names(type="y") == ["c", "d"]
    assert names(department="sales") == ["d", "b"]
    assert names(department="sales", type="x", status=WorkflowStatus.ACTIVE) == ["b"]
    assert names(department="nobody") == []
    assert names(page=2, page_size=3) == ["b"]
    assert store.list_workflows(WorkflowQuery(page=5, page_size=3)) == ([], 4)


# -- events: the outbox -------------------------------------------------------------------------


def test_events_written_with_the_change(store: Store, new_workflow: NewWorkflow) -> None:
    """insert/update/delete write their events to the outbox, in order, with increasing seq."""
    wf = new_workflow()
    store.insert_workflow(wf, [_event(wf, "created")])
    store.update_workflow(wf, [_event(wf, "updated")])
    store.delete_workflow(wf.id, utcnow(), [_event(wf, "deleted")])
    stored = store.events_after(0)
    assert [s.event.type for s in stored] == [
        "workflow.created",
        "workflow.updated",
        "workflow.deleted",
    ]
    assert [s.seq for s in stored] == sorted({s.seq for s in stored})
    assert [s.event.type for s in store.events_after(stored[0].seq)] == [
        "workflow.updated",
        "workflow.deleted",
    ]
    assert len(store.events_after(0, limit=1)) == 1
    assert stored[0].event.data == {"id": wf.id}


def test_failing_write_leaves_neither_change_nor_event(
    store: Store, new_workflow: NewWorkflow
) -> None:
    """When the outbox write fails, the workflow change is rolled back too (and vice versa)."""
    wf = new_workflow()
    unserializable = Event(type="workflow.created", data={"bad": object()})
    with pytest.raises(TypeError):
        store.insert_workflow(wf, [unserializable])
    assert store.get_workflow(wf.id) is None
    assert store.events_after(0) == []

    store.insert_workflow(wf, [_event(wf)])
    duplicate = new_workflow(id=wf.id, name="dup")
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        store.insert_workflow(duplicate, [_event(duplicate)])
    assert len(store.events_after(0)) == 1
    assert store.get_workflow(wf.id) == wf

    wf.name = "changed"
    with pytest.raises(TypeError):
        store.update_workflow(wf, [unserializable])
    got = store.get_workflow(wf.id)
    assert got is not None
    assert got.name != "changed"
    assert store.update_workflow(new_workflow(), [_event(wf)]) is False
    assert len(store.events_after(0)) == 1


def test_insert_events_alone(store: Store) -> None:
    """insert_events appends events that events_after returns oldest first."""
    events = [Event(type="schedule.triggered", data={"n": i}) for i in range(5)]
    store.insert_events(events)
    assert [s.event for s in store.events_after(0)] == events


# -- users, tokens, integrations -------------------------------------------------------------


def test_users_and_tokens(store: Store) -> None:
    """ensure_user is idempotent; tokens are found by hash only, with their scopes."""
    first = store.ensure_user("usr_a", T0)
    again = store.ensure_user("usr_a", T0 + timedelta(days=1))
    assert again == first
    token = Token(
        id=new_id("tok_"),
        user_id="usr_a",
        scopes=frozenset({Scope.WORKFLOWS_READ}),
        created_at=T0,
        name="ci",
    )
    store.insert_token(token, "hash-1")
    assert store.get_token("hash-1") == token
    assert store.get_token("hash-2") is None


def test_user_tokens_page_and_owned_revocation(store: Store) -> None:
    """list_user_tokens pages one user's live tokens newest first; revoke with user_id spares others'."""
    for user in ("usr_a", "usr_b"):
        store.ensure_user(user, T0)
    mine = []
    for n in range(5):
        token = Token(
            id=new_id("tok_"),
            user_id="usr_a",
            scopes=frozenset({Scope.WORKFLOWS_READ}),
            created_at=T0 + timedelta(seconds=n),
            name=f"t{n}",
        )
        store.insert_token(token, f"hash-a{n}")
        mine.append(token)
    theirs = Token(id=new_id("tok_"), user_id="usr_b", scopes=frozenset(Scope), created_at=T0)
    store.insert_token(theirs, "hash-b")
    newest_first = [t.id for t in reversed(mine)]

    items, total = store.list_user_tokens("usr_a", 1, 2)
    assert (total, [t.id for t in items]) == (5, newest_first[:2])
    assert items[0] == mine[-1]
    items, total = store.list_user_tokens("usr_a", 3, 2)
    assert (total, [t.id for t in items]) == (5, newest_first[4:])
    assert store.list_user_tokens("usr_a", 4, 2) == ([], 5)
    assert store.list_user_tokens("usr_nobody", 1, 10) == ([], 0)

    assert store.revoke_token(theirs.id, T0, "usr_a") == []  # another user's: untouched
    assert store.get_token("hash-b") == theirs
    assert store.revoke_token(mine[0].id, T0, "usr_a") == [mine[0].id]
    assert store.revoke_token(mine[0].id, T0, "usr_a") == []  # already revoked
    assert store.get_token("hash-a0") is None
    items, total = store.list_user_tokens("usr_a", 1, 10)
    assert (total, [t.id for t in items]) == (4, newest_first[:4])
    assert store.revoke_token(theirs.id, T0) == [theirs.id]  # without user_id: any user's
    assert store.list_user_tokens("usr_b", 1, 10) == ([], 0)


def _mint(store: Store, user: str, parent: Token | None = None, *, offset: int = 0) -> Token:
    """Store a token of ``user`` (created from ``parent`` when given); its hash is ``h-<id>``."""
    store.ensure_user(user, T0)
    token = Token(
        id=new_id("tok_"),
        user_id=user,
        scopes=frozenset({Scope.WORKFLOWS_READ}),
        created_at=T0 + timedelta(seconds=offset),
        parent_id=None if parent is None else parent.id,
    )
    assert store.insert_token(token, f"h-{token.id}") is True
    return token


def _live(store: Store, *tokens: Token) -> list[bool]:
    return [store.get_token(f"h-{t.id}") is not None for t in tokens]


def test_token_lineage_is_stored_and_listed(store: Store) -> None:
    """parent_id round-trips through get_token, list_tokens and list_user_tokens (None for roots)."""
    root = _mint(store, "usr_a")
    child = _mint(store, "usr_a", root, offset=1)
    assert store.get_token(f"h-{root.id}") == root
    assert store.get_token(f"h-{child.id}") == child
    assert child.parent_id == root.id
    assert store.list_tokens("usr_a") == [child, root]
    assert store.list_user_tokens("usr_a", 1, 10) == ([child, root], 2)


def test_revocation_cascades_over_generations(store: Store) -> None:
    """Revoking a token revokes its live descendants, three generations deep, and nothing else."""
    root = _mint(store, "usr_a")
    child = _mint(store, "usr_a", root, offset=1)
    sibling = _mint(store, "usr_a", root, offset=2)
    grandchild = _mint(store, "usr_a", child, offset=3)
    great = _mint(store, "usr_a", grandchild, offset=4)
    cousin = _mint(store, "usr_a", sibling, offset=5)
    other_root = _mint(store, "usr_a", offset=6)
    other_child = _mint(store, "usr_a", other_root, offset=7)
    theirs = _mint(store, "usr_b")
    their_child = _mint(store, "usr_b", theirs, offset=1)
    bystanders = (root, sibling, cousin, other_root, other_child, theirs, their_child)

    revoked = store.revoke_token(child.id, T0, "usr_a")
    assert revoked[0] == child.id
    assert sorted(revoked[1:]) == sorted([grandchild.id, great.id])
    assert _live(store, child, grandchild, great) == [False] * 3
    assert _live(store, *bystanders) == [True] * len(bystanders)
    assert store.revoke_token(theirs.id, T0, "usr_a") == []  # another user's tree: untouched
    assert _live(store, theirs, their_child) == [True, True]

    # The child's subtree is already revoked: revoking the root counts only what was live.
    revoked = store.revoke_token(root.id, T0)
    assert revoked[0] == root.id
    assert sorted(revoked[1:]) == sorted([sibling.id, cousin.id])
    assert _live(store, root, sibling, cousin) == [False] * 3
    assert _live(store, other_root, other_child, theirs, their_child) == [True] * 4
    assert store.revoke_token(root.id, T0) == []  # already revoked: nothing more to do
    assert store.revoke_token(grandchild.id, T0) == []
    assert [t.id for t in store.list_tokens("usr_a")] == [other_child.id, other_root.id]


def test_a_revoked_or_foreign_parent_mints_nothing(store: Store) -> None:
    """insert_token refuses a child of a revoked, unknown or other user's token; nothing is stored."""
    root = _mint(store, "usr_a")
    theirs = _mint(store, "usr_b")
    early = _mint(store, "usr_a", root, offset=1)  # minted just before the revocation
    assert store.revoke_token(root.id, T0) == [root.id, early.id]
    for user, parent_id in (
        ("usr_a", root.id),
        ("usr_a", theirs.id),
        ("usr_a", "tok_00000000000000000000000000"),
    ):
        late = Token(
            id=new_id("tok_"),
            user_id=user,
            scopes=frozenset({Scope.WORKFLOWS_READ}),
            created_at=T0,
            parent_id=parent_id,
        )
        assert store.insert_token(late, f"h-{late.id}") is False
        assert store.get_token(f"h-{late.id}") is None
    assert [t.id for t in store.list_tokens("usr_a")] == []
    assert _live(store, theirs) == [True]


def _child(user: str, parent: Token) -> Token:
    return Token(
        id=new_id("tok_"),
        user_id=user,
        scopes=frozenset({Scope.WORKFLOWS_READ}),
        created_at=T0,
        parent_id=parent.id,
    )


def test_insert_token_max_live_counts_the_users_live_tokens(store: Store) -> None:
    """max_live refuses a token when the user holds that many live ones (every live token
    counts, revoked ones do not, nor other users'); a revoked parent is still just False."""
    root = _mint(store, "usr_a")
    _mint(store, "usr_a")  # a second root (the CLI's kind) counts too
    _mint(store, "usr_b")
    first = _child("usr_a", root)
    assert store.insert_token(first, f"h-{first.id}", max_live=3) is True
    late = _child("usr_a", root)
    with pytest.raises(TokenLimitReached) as refused:
        store.insert_token(late, f"h-{late.id}", max_live=3)
    assert refused.value.limit == 3
    assert store.get_token(f"h-{late.id}") is None
    assert store.revoke_token(first.id, T0) == [first.id]
    assert store.insert_token(late, f"h-{late.id}", max_live=3) is True
    again = _child("usr_a", root)
    with pytest.raises(TokenLimitReached):
        store.insert_token(again, f"h-{again.id}", max_live=3)
    assert store.insert_token(_child("usr_a", root), "h-x") is True  # no max_live: no limit
    assert len(store.revoke_token(root.id, T0)) == 3  # root, late and the uncapped child
    orphan = _child("usr_a", root)
    assert store.insert_token(orphan, f"h-{orphan.id}", max_live=1) is False  # 1 live, dead parent


def test_concurrent_capped_mints_do_not_overshoot(make_store: Callable[..., Store]) -> None:
    """Mints racing from several stores on one database never pass max_live together."""
    first = make_store()
    root = _mint(first, "usr_a")
    stores = [first, *(make_store(same=True) for _ in range(5))]
    start = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def mint(s: Store) -> None:
        token = _child("usr_a", root)
        start.wait(10)
        try:
            outcomes.append(str(s.insert_token(token, f"h-{token.id}", max_live=3)))
        except TokenLimitReached:
            outcomes.append("full")

    threads = [threading.Thread(target=mint, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["True", "True"] + ["full"] * 4
    assert len(first.list_tokens("usr_a")) == 3


def test_integrations_crud(store: Store) -> None:
    """put creates then replaces; list is by id; delete removes; existing ids are reported."""

    def conn(cid: str, provider: str = "http") -> Integration:
        return Integration(
            id=cid, provider=provider, config={"base_url": cid}, created_at=T0, updated_at=T0
        )

    assert store.put_integration(conn("int_b")) is True
    assert store.put_integration(conn("int_a")) is True
    assert store.put_integration(conn("int_b", provider="other")) is False
    got = store.get_integration("int_b")
    assert got is not None
    assert got.provider == "other"
    items, total = store.list_integrations(1, 10)
    assert [i.id for i in items] == ["int_a", "int_b"]
    assert total == 2
    assert [i.id for i in store.list_integrations(2, 1)[0]] == ["int_b"]
    assert store.existing_integration_ids(["int_a", "int_z", "int_a"]) == {"int_a"}
    assert store.existing_integration_ids([]) == set()
    assert store.delete_integration("int_a") is True
    assert store.delete_integration("int_a") is False
    assert store.get_integration("int_a") is None


# -- pagination property ----------------------------------------------------------------------

WORKFLOW_ROWS = st.lists(
    st.tuples(
        st.text(alphabet="abAB é", min_size=0, max_size=3),  # name (ties likely)
        st.sampled_from(["t1", "t2"]),  # type
        st.sampled_from([None, "sales", "ops"]),  # department
        st.sampled_from(list(WorkflowStatus)),
        st.integers(min_value=0, max_value=20),  # created_at offset, seconds (ties likely)
        st.integers(min_value=0, max_value=20),  # updated_at offset
    ),
    max_size=30,
)
QUERIES = st.fixed_dictionaries(
    {
        "page_size": st.integers(min_value=1, max_value=8),
        "sort_by": st.sampled_from(["created_at", "updated_at", "name"]),
        "sort_order": st.sampled_from(["asc", "desc"]),
        "status": st.none() | st.sampled_from(list(WorkflowStatus)),
        "type": st.none() | st.sampled_from(["t1", "t2", "t3"]),
        "department": st.none() | st.sampled_from(["sales", "ops", "nobody"]),
    }
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # state reset per example
@given(rows=WORKFLOW_ROWS, query=QUERIES)
def test_pages_concatenate_to_the_filtered_sorted_list(
    store: Store, new_workflow: NewWorkflow, rows: list[tuple[Any, ...]], query: dict[str, Any]
) -> None:
    """All pages together are the full filtered, sorted list: no duplicates, no misses."""
    for old in store.list_workflows(WorkflowQuery(page_size=100))[0]:
        store.delete_workflow(old.id, utcnow())
    workflows = []
    for name, wtype, dept, status, created, updated in rows:
        wf = new_workflow(
            name=name,
            type=wtype,
            department=dept,
            status=status,
            created_at=T0 + timedelta(seconds=created),
            updated_at=T0 + timedelta(seconds=updated),
        )
        store.insert_workflow(wf)
        workflows.append(wf)

    def keep(wf: Workflow) -> bool:
        return (
            (query["status"] is None or wf.status is query["status"])
            and (query["type"] is None or wf.type == query["type"])
            and (
                query["department"] is None or wf.metadata.get("department") == query["department"]
            )
        )

    expected = sorted(
        (wf for wf in workflows if keep(wf)),
        key=lambda wf: (getattr(wf, query["sort_by"]), wf.id),
        reverse=query["sort_order"] == "desc",
    )
    size = query["page_size"]
    pages_expected = math.ceil(len(expected) / size)
    seen: list[str] = []
    page = 1
    while True:
        items, total = store.list_workflows(WorkflowQuery(page=page, **query))
        assert total == len(expected)
        if not items:
            break
        assert len(items) <= size
        seen.extend(w.id for w in items)
        page += 1
    assert page - 1 == pages_expected
    assert seen == [wf.id for wf in expected]
    assert len(set(seen)) == len(seen)


# -- concurrency -----------------------------------------------------------------------------------


def _run_threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    errors: list[BaseException] = []

    def guard(fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guard, args=(fn,)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def _writer(store: Store, new_workflow: NewWorkflow, n: int, tag: str) -> Callable[[], None]:
    def write() -> None:
        for i in range(n):
            wf = new_workflow(name=f"{tag}-{i}", type=tag)
            store.insert_workflow(wf, [_event(wf)])
            if i % 10 == 0:
                wf.name += "!"
                assert store.update_workflow(wf, [_event(wf, "updated")])

    return write


def _reader(store: Store, done: threading.Event) -> Callable[[], None]:
    def read() -> None:
        while not done.is_set():
            items, _ = store.list_workflows(WorkflowQuery(page_size=20))
            for wf in items[:3]:
                store.get_workflow(wf.id)
            store.events_after(0, limit=50)

    return read


def test_threads_write_and_read_concurrently(store: Store, new_workflow: NewWorkflow) -> None:
    """8 writer threads x 200 writes plus 3 readers: no 'database is locked', nothing lost."""
    done = threading.Event()
    writers = [_writer(store, new_workflow, 200, f"w{n}") for n in range(8)]

    def writers_then_stop() -> None:
        errors = _run_threads(writers)
        done.set()
        if errors:
            raise errors[0]

    errors = _run_threads([writers_then_stop] + [_reader(store, done) for _ in range(3)])
    assert errors == []
    assert _count(store) == 1600
    assert len(store.events_after(0, limit=10_000)) == 1600 + 8 * 20


def test_two_stores_on_one_file(make_store: StoreFactory, new_workflow: NewWorkflow) -> None:
    """Two store instances on one database (as two processes would) write concurrently."""
    first = make_store()
    second = make_store(same=True)
    done = threading.Event()
    writers = [
        _writer(s, new_workflow, 150, f"{i}{n}")
        for i, s in enumerate((first, second))
        for n in range(3)
    ]

    def writers_then_stop() -> None:
        errors = _run_threads(writers)
        done.set()
        if errors:
            raise errors[0]

    errors = _run_threads([writers_then_stop, _reader(first, done), _reader(second, done)])
    assert errors == []
    assert _count(first) == _count(second) == 900


@pytest.mark.anyio
async def test_anyio_tasks_write_and_read(engine: Engine, new_workflow: NewWorkflow) -> None:
    """Many anyio tasks creating and listing through the engine and in worker threads never fail."""
    store = engine.store

    async def create_via_service(n: int) -> None:
        for i in range(10):
            await engine.workflows.create(
                {
                    "name": f"task{n}-{i}",
                    "type": "custom",
                    "configuration": {"steps": [{"name": "s", "action": "delay", "seconds": 0}]},
                    "metadata": {"department": f"d{n % 3}"},
                }
            )
            await engine.workflows.list(department=f"d{n % 3}")

    async def write_in_thread(n: int) -> None:
        for i in range(20):
            wf = new_workflow(name=f"thread{n}-{i}")
            await anyio.to_thread.run_sync(store.insert_workflow, wf, [_event(wf)])
            await anyio.to_thread.run_sync(store.list_workflows, WorkflowQuery(page_size=5))

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(create_via_service, n)
        for n in range(10):
            tg.start_soon(write_in_thread, n)
    page = await engine.workflows.list(page_size=1)
    assert page.pagination.total_items == 20 * 10 + 10 * 20
    assert len(store.events_after(0, limit=1000)) == 400


_CHILD = textwrap.dedent(
    """
    import sys
    from abi_engine.events import Event
    from abi_engine.ids import new_id, utcnow
    from abi_engine.models import Workflow
    from abi_engine.storage import SQLiteStore, WorkflowQuery

    store = SQLiteStore(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(int(sys.argv[2])):
        now = utcnow()
        wf = Workflow(id=new_id("wf_"), name=f"child-{i}", type="child",
                      created_at=now, updated_at=now)
        store.insert_workflow(wf, [Event(type="workflow.created", data={"id": wf.id})])
        store.list_workflows(WorkflowQuery(type="parent"))
    store.close()
    print("done", flush=True)
    """
)


@pytest.mark.slow
def test_second_process_writes_concurrently(db_path: Path, new_workflow: NewWorkflow) -> None:
    """A real second process writing the same file at the same time: both finish, nothing lost."""
    n = 400
    store = SQLiteStore(db_path)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db_path), str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.flush()
        started = time.monotonic()
        for i in range(n):
            wf = new_workflow(name=f"parent-{i}", type="parent")
            store.insert_workflow(wf, [_event(wf)])
            store.list_workflows(WorkflowQuery(type="child"))
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert "locked" not in err
        assert out.strip() == "done"
        assert time.monotonic() - started < 120
        assert _count(store, type="parent") == n
        assert _count(store, type="child") == n
        assert len(store.events_after(0, limit=10 * n)) == 2 * n
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        store.close()


_OPENER = textwrap.dedent(
    """
    import sys, time
    from abi_engine.storage import SQLiteStore

    start_at = float(sys.argv[2])
    while time.time() < start_at:
        pass
    store = SQLiteStore(sys.argv[1])
    print(store.schema_version(), flush=True)
    store.close()
    """
)


@pytest.mark.slow
def test_processes_opening_a_fresh_file_at_once(tmp_path: Path) -> None:
    """Six processes opening one new file at the same instant all succeed (WAL switch waits, never 'locked')."""
    procs_per_round, rounds = 6, 6
    for round_no in range(rounds):
        db = tmp_path / f"fresh-{round_no}.db"
        start_at = time.time() + 1.5
        children = [
            subprocess.Popen(
                [sys.executable, "-c", _OPENER, str(db), str(start_at)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(procs_per_round)
        ]
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            assert out.strip() == str(len(MIGRATIONS))


@given(st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=12), st.integers(1, 40))
def test_fan_out_takes_whole_rows_up_to_the_limit(row_sizes: list[int], limit: int) -> None:
    """whole_rows keeps rows whole and stops at the first row reaching the limit."""
    from abi_engine.storage._refs import OutboxEntry, whole_rows

    entries = [
        OutboxEntry(seq, k, f"evt_{seq}_{k}", "execution.completed", 0, None)
        for seq, size in enumerate(row_sizes, start=1)
        for k in range(size)
    ]
    taken = whole_rows(entries, limit)
    rows_taken = {e.seq for e in taken}
    assert taken == [e for e in entries if e.seq in rows_taken]  # a prefix of whole rows
    assert rows_taken == set(range(1, len(rows_taken) + 1))
    if len(taken) < len(entries):
        assert len(taken) >= limit
        last_row = max(rows_taken)
        assert len(taken) - row_sizes[last_row - 1] < limit  # the last row brought it there
    else:
        assert len(taken) == len(entries)


def test_pruning_keeps_what_deliveries_still_need(store: Store) -> None:
    """Old finished deliveries and the old events no delivery needs go; pending ones stay."""
    from abi_engine.models_webhooks import DeliveryStatus
    from abi_engine.storage.records_webhooks import AttemptOutcome, WebhookRecord

    old = datetime(2021, 1, 1, tzinfo=UTC)
    store.insert_webhook(
        WebhookRecord(
            id="wh_prune",
            url="https://example.com/",
            events=["workflow.created"],
            secret="whsec_" + "a" * 32,
            created_at=old,
            updated_at=old,
        )
    )
    events = [
        Event(type="workflow.created", data={"n": n}, timestamp=old + timedelta(minutes=n))
        for n in range(4)
    ]
    store.insert_events(events)
    assert store.fan_out(old, 100, ()) == 4
    jobs = store.claim_deliveries("node", old, old + timedelta(minutes=5), 10)
    assert len(jobs) == 4
    outcomes = [
        AttemptOutcome(
            delivery_id=job.id,
            attempt=1,
            status=DeliveryStatus.SUCCEEDED,
            status_code=200,
            duration_ms=1,
            error=None,
            response_body="",
            created_at=old,
            delivery_status=DeliveryStatus.SUCCEEDED,
        )
        for job in jobs
        if job.event_id != events[3].id  # the last one stays pending
    ]
    assert store.record_attempts("node", outcomes) == 3
    later = [Event(type="workflow.created", data={"n": 9}, timestamp=old)]  # not fanned out
    store.insert_events(later)
    now = utcnow()
    assert store.prune_deliveries(now) == 3
    left = store.events_after(0, limit=100)
    assert [s.event.id for s in left] == [events[3].id, later[0].id]
    page, total = store.list_deliveries("wh_prune", 1, 10)
    assert total == 1
    assert page[0].event_id == events[3].id
    store.insert_events([Event(type="workflow.created", data={"n": 10})])
    newest = store.events_after(0, limit=100)[-1]
    assert newest.seq > max(s.seq for s in left)  # positions are never reused
