"""The Progress record: what a step finished survives the JSON it is kept as."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abi_plugin_data_processing.remote import Progress, _decode, _encode

_atoms = st.one_of(st.integers(), st.text(max_size=8))
_keys = st.one_of(_atoms, st.tuples(st.sampled_from(["create", "update", "delete"]), st.text()))
_outcomes = st.one_of(
    st.none(),
    st.fixed_dictionaries({"index": st.integers(0, 99), "status": st.sampled_from(["written"])}),
)


@given(st.dictionaries(_keys, _outcomes, max_size=20))
def test_encoded_progress_decodes_to_the_same_record(memo: dict[Any, Any]) -> None:
    """decode(encode(record)) is the record: int, text and (operation, key) tuple keys alike."""
    assert _decode(json.loads(json.dumps(_encode(memo)))) == memo


def test_progress_of_another_shape_is_ignored() -> None:
    """What is not a progress record (a first run, a foreign value) reads as nothing done."""
    assert _decode(None) == {}
    assert _decode({"done": "x"}) == {}
    assert _decode({"done": [[1, "a"], "junk", [2]]}) == {1: "a"}


class _Step:
    """What Progress uses of a step context: ids, the kept progress, save_progress."""

    def __init__(self) -> None:
        self.execution_id = "exec_1"
        self.step_name = "apply"
        self.progress: Any = None
        self.saves: list[int] = []  # entries written by each save

    async def save_progress(self, value: Any) -> None:
        self.saves.append(len(value["done"]))
        self.progress = json.loads(json.dumps(value))


@pytest.mark.anyio
async def test_growth_keeps_the_bytes_written_proportional_to_the_items() -> None:
    """With growth 0.1, saves space out as the record grows: entries written stay about 11 n."""
    progress, step = Progress(every=50, interval_seconds=3600, growth=0.1), _Step()
    for item in range(10_000):
        await progress.record(step, item, None)  # type: ignore[arg-type]
    assert sum(step.saves) <= 11 * 10_000  # about 94,000 here, not n^2 / 100 = 1,000,000
    assert 30 <= len(step.saves) <= 120
    previous = 0
    for size in step.saves:  # never more than 50, or a tenth of those done, left unsaved
        assert size - previous <= max(50, math.ceil(size * 0.1))
        previous = size


@pytest.mark.anyio
async def test_without_growth_every_item_is_saved() -> None:
    """every=1 and no growth (data_processing's batches): each item is kept at once."""
    progress, step = Progress(every=1), _Step()
    for item in range(20):
        await progress.record(step, item, {"index": item})  # type: ignore[arg-type]
    assert step.saves == list(range(1, 21))
    assert Progress().done(step)[19] == {"index": 19}  # type: ignore[arg-type]
