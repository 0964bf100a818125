"""A request body's nesting is refused past MAX_JSON_DEPTH whether or not the adapter
walks it (``parse_json_body`` skips the walk when the body has too few brackets to nest
that deep: issue #18)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from abi_asgi import MAX_JSON_DEPTH, parse_json_body
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_engine.errors import InvalidRequest


def _nest(depth: int, kinds: list[bool], filler: str) -> Any:
    value: Any = filler
    for level in range(depth):
        value = {filler: value} if kinds[level % len(kinds)] else [value, filler]
    return value


@settings(max_examples=300, deadline=None)
@given(
    depth=st.integers(0, MAX_JSON_DEPTH + 8),
    kinds=st.lists(st.booleans(), min_size=1, max_size=8),
    filler=st.text(alphabet='ab{[]}"\\ é', max_size=6),
)
def test_refused_exactly_past_the_depth(depth: int, kinds: list[bool], filler: str) -> None:
    """Nested ``depth`` containers deep (brackets in strings too): accepted up to
    MAX_JSON_DEPTH, refused as INVALID_REQUEST naming the body past it."""
    body = json.dumps(_nest(depth, kinds, filler), ensure_ascii=False).encode()
    if depth <= MAX_JSON_DEPTH:
        assert parse_json_body(body) == _nest(depth, kinds, filler)
    else:
        with pytest.raises(InvalidRequest, match="nests deeper") as refused:
            parse_json_body(body)
        assert refused.value.details["field"] == "(body)"


def test_a_lone_surrogate_in_a_small_body_is_refused() -> None:
    """The walk for escapes still runs when the body is shallow."""
    with pytest.raises(InvalidRequest, match="invalid"):
        parse_json_body(b'{"parameters": {"i": "\\ud800"}}')
