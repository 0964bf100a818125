"""Many rows in one statement on PostgreSQL: each column goes as one text parameter, the
array's literal built by ``array_literal`` (issue #18: psycopg dumps a list value by
value in Python, 2-3x the CPU of the literal for a batch's arrays).

The literal must read back as exactly the values, whatever they hold (quotes,
backslashes, braces, commas, the word NULL, empty strings, any Unicode): checked
against the server by a property test, and end to end through a batch of every
hot kind of op on both backends.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_engine.ids import new_id
from abi_engine.models import ExecutionStatus, StepStatus
from abi_engine.storage import Store
from abi_engine.storage.postgres import PostgresStore, QmarkCursor
from abi_engine.storage.records import (
    CheckpointStep,
    ClaimExecution,
    ExecutionRecord,
    FinishExecution,
    InsertExecution,
    StepRecord,
)
from abi_engine.storage.sql.dialect import POSTGRES, array_literal

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = T0 + timedelta(days=3650)

#: Text PostgreSQL can hold: no U+0000 (refused as a bad request), no lone surrogates;
#: often the characters JSON or an array literal escape or read specially.
_TEXT = st.text(
    st.one_of(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        st.sampled_from('"\\{},\n\t\x01\x1f\x7f nNuUlL'),
    )
)
_TRICKY = ["", "NULL", "null", " a b ", '"', "\\", '\\"', "{a,b}", "a,b", "{}", "é😀", "\n\t\r"]


def test_array_literals_are_json_arrays_in_braces_unless_a_control_character_needs_quoting() -> (
    None
):
    assert array_literal(["a", None, 'x"y', ""], "text") == '{"a",null,"x\\"y",""}'
    assert array_literal([1, None, -(2**63)], "bigint") == "{1,null,-9223372036854775808}"
    assert array_literal((), "int") == "{}"
    assert array_literal([True, None, 3.0], "int") == "{1,NULL,3}"  # numbers, as binary sent them
    # JSON would write "\n", which PostgreSQL reads as "n": quoted value by value instead.
    assert array_literal(["a\nb", None, "c\\"], "text") == '{"a\nb",NULL,"c\\\\"}'
    with pytest.raises(ValueError, match="jsonb"):
        array_literal(["{}"], "jsonb")


@pytest.fixture(scope="module")
def pg(postgres_server: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        yield conn


@pytest.mark.external_service
@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(st.one_of(st.none(), _TEXT, st.sampled_from(_TRICKY)), max_size=20),
    numbers=st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=20),
    small=st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), max_size=20),
)
def test_array_literals_read_back_as_their_values(
    pg: psycopg.Connection[Any], texts: list[Any], numbers: list[Any], small: list[Any]
) -> None:
    row = pg.execute(
        "SELECT %s::text[], %s::bigint[], %s::int[]",
        (
            POSTGRES.array(texts, "text"),
            POSTGRES.array(numbers, "bigint"),
            POSTGRES.array(small, "int"),
        ),
    ).fetchone()
    assert row == (texts, numbers, small)


def _batch_ops(names: list[str]) -> tuple[list[ExecutionRecord], list[Any]]:
    """Executions whose text columns hold ``names``, and a claim, a checkpoint and a
    finish of each (values holding the same text)."""
    records = [
        ExecutionRecord(
            id=new_id("exec_"),
            workflow_id="wf_arrays",
            workflow_type=name or "t",
            status=ExecutionStatus.QUEUED,
            created_at=T0,
            parameters={"name": name},
            owner="n",
            claim=10,
            lease_until=LEASE,
            created_by=name,
        )
        for name in names
    ]
    ops: list[Any] = []
    for r, name in zip(records, names, strict=True):
        step = StepRecord(
            execution_id=r.id,
            index=0,
            name=name,
            status=StepStatus.COMPLETED,
            completed_at=T0,
            result={"v": name},
        )
        ops.append(
            (
                ClaimExecution(
                    execution_id=r.id,
                    grant=10,
                    token=20,
                    owner=name,
                    lease_until=LEASE,
                    started_at=T0,
                ),
                CheckpointStep(step=step, token=20),
                FinishExecution(
                    execution_id=r.id,
                    workflow_id=r.workflow_id,
                    status=ExecutionStatus.COMPLETED,
                    completed_at=T0 + timedelta(seconds=1),
                    duration_ms=1000,
                    result={"value": name},
                    token=20,
                    step=attrs.evolve(step, index=1),
                ),
            )
        )
    return records, ops


def test_a_batch_of_tricky_text_stores_it_exactly(store: Store) -> None:
    """Inserts, claims, checkpoints and finishes whose text is every awkward case, in
    batches: stored and read back unchanged."""
    names = [*_TRICKY, "plain"]
    records, ops = _batch_ops(names)
    assert store.apply([InsertExecution(record=r) for r in records]) == [True] * len(names)
    for kind in range(3):
        assert store.apply([each[kind] for each in ops]) == [True] * len(names)
    for r, name in zip(records, names, strict=True):
        got = store.get_execution(r.id)
        assert got is not None
        assert (got.workflow_type, got.created_by, got.parameters) == (
            name or "t",
            name,
            {"name": name},
        )
        assert (got.status, got.result) == (ExecutionStatus.COMPLETED, {"value": name})
        steps = store.get_steps(r.id)
        assert [(s.index, s.name, s.result) for s in steps] == [
            (0, name, {"v": name}),
            (1, name, {"v": name}),
        ]


def test_a_postgres_batch_sends_each_column_as_one_text_parameter(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The multi-row statements of a batch (``unnest`` of one array per column) and its
    ``= ANY(...)`` lists get one ``str`` per column, not a list psycopg would dump
    value by value."""
    if not isinstance(store, PostgresStore):
        pytest.skip("PostgreSQL's arrays")
    sent: list[tuple[str, Any]] = []
    execute = QmarkCursor.execute

    def spy(self: QmarkCursor, query: Any, params: Any = None, **kwargs: Any) -> QmarkCursor:
        sent.append((str(query), params))
        return execute(self, query, params, **kwargs)

    monkeypatch.setattr(QmarkCursor, "execute", spy)
    records, ops = _batch_ops(["a", "b", "c"])
    assert store.apply([InsertExecution(record=r) for r in records]) == [True] * 3
    for kind in range(3):
        assert store.apply([each[kind] for each in ops]) == [True] * 3
    many = [(query, params) for query, params in sent if "unnest(" in query]
    kinds = {" ".join(re.findall(r"^(INSERT|UPDATE)(?: INTO)? (\w+)", q)[0]) for q, _ in many}
    assert kinds == {"INSERT executions", "UPDATE executions", "INSERT execution_steps"}
    for _, params in many:
        assert params
        assert all(isinstance(p, str) and p.startswith("{") for p in params), params
    lists = [p for _, params in sent for p in params or () if isinstance(p, list | tuple)]
    assert lists == []
