"""execute_many's all-or-nothing door, and the index its errors name (#18).

An item whose parameters JSON cannot hold refused the batch only after the others
were stored and handed to the runtime (they ran, the caller got an error); an error
met by an item inserted after a re-check (its workflow changed between the check and
the insert) named its place in the re-checked subset, not in the caller's list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from runtime_plugins.faults import Harness
from runtime_plugins.helpers import EngineFactory, new_workflow, started_on

from abi_engine import Engine
from abi_engine.errors import InvalidParameters, InvalidState
from abi_engine.ids import utcnow
from abi_engine.storage.records import InsertExecution, PauseWorkflow, WriteOp


def _stored(engine: Engine, workflow_id: str) -> int:
    page = engine.call(engine.executions.list, workflow_id=workflow_id, page_size=100)
    return len(page.items)


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), object(), {"deep": [1, {"x": b"bytes"}]}],
    ids=["nan", "inf", "object", "nested-bytes"],
)
def test_an_item_json_cannot_hold_refuses_the_batch_before_any_is_stored(
    make: EngineFactory, bad: Any
) -> None:
    engine = make()
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        items = [{"a": 1}, {"a": 2}, {"a": 3, "z": bad}, {"a": 4}]
        with pytest.raises(InvalidParameters) as refused:
            engine.call(engine.executions.execute_many, wf, items)
        assert refused.value.details == {"field": "parameters[2]", "index": 2}
        assert _stored(engine, wf) == 0
        assert len(engine.call(engine.executions.execute_many, wf, [{"a": 1}] * 3)) == 3
        assert _stored(engine, wf) == 3
    finally:
        engine.stop_blocking()
        engine.close()


class RefusedAfterRecheck(Harness):
    """Another node pauses the workflow once the first insertion batch committed (the
    rest of the first pass are not stored, and checked again); in the second pass, the
    store refuses the insertion at ``refuse`` (its place in that pass)."""

    def __init__(self, store: Any, items: int, refuse: int) -> None:
        super().__init__(store)
        self.workflow_id: str | None = None
        self.refused_at = items + refuse  # the ordinal of that insertion
        self.seen = 0

    def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
        if self.workflow_id is None:
            return self._store.apply(ops)
        results: list[Any] = []
        kept: list[WriteOp] = []
        slots: list[int | None] = []
        for op in ops:
            if isinstance(op, InsertExecution):
                self.seen += 1
                if self.seen - 1 == self.refused_at:
                    slots.append(None)
                    continue
            slots.append(len(kept))
            kept.append(op)
        applied = self._store.apply(kept)
        results = [False if slot is None else applied[slot] for slot in slots]
        if self.seen == len(ops) and any(isinstance(op, InsertExecution) for op in ops):
            pause = PauseWorkflow(workflow_id=self.workflow_id, paused=True, at=utcnow())
            assert self._store.apply([pause])  # after the first batch only
        if self.seen > self.refused_at:
            self.workflow_id = None
        return results


def test_an_error_after_a_recheck_names_the_callers_index(make: EngineFactory) -> None:
    """12 items, 5 per commit: 0-4 stored, then the pause; 5-11 are refused (None),
    checked again and inserted; the store refuses the 4th of those, the caller's 8."""
    store = RefusedAfterRecheck(make().store, items=12, refuse=3)
    with started_on(store) as engine:
        wf = engine.call(new_workflow, engine)
        engine.runtime.committer._max_batch = 5
        store.workflow_id = wf
        with pytest.raises(InvalidState) as refused:
            engine.call(engine.executions.execute_many, wf, [{"n": n} for n in range(12)])
        assert refused.value.details == {"index": 8}
        assert store.seen > 12 + 3
