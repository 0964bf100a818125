"""The Progress record: what a step finished survives the JSON it is kept as."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from abi_plugin_data_processing.remote import _decode, _encode

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
