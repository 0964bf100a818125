"""``api.json_bytes``: the JSON the adapter sends, by orjson when installed (#18).

Whatever the encoder, a client decodes the same value the json module's encoding
gives: any JSON value (non-ASCII text, lone surrogates, integers past 64 bits,
nesting) round-trips the same, and without orjson the bytes are the json
module's compact ASCII JSON exactly, as before.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abi_engine.api import operations

_reference = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # past 64 bits too (orjson refuses them: the json module's way)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()  # lone surrogates too
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(value=_VALUES)
def test_what_a_client_decodes_is_what_the_json_module_sent(value: Any) -> None:
    sent = operations.json_bytes(value)
    assert json.loads(sent) == json.loads(_reference(value))


@given(value=_VALUES)
def test_without_orjson_the_bytes_are_the_json_modules(value: Any) -> None:
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(operations, "_orjson_dumps", None)
        assert operations.json_bytes(value) == _reference(value).encode("ascii")


def test_orjson_is_used_when_installed() -> None:
    pytest.importorskip("orjson")
    assert operations.json_bytes({"é": "\u2028"}) == '{"é":"\u2028"}'.encode()
    # What orjson refuses takes the json module's way, not an error.
    assert operations.json_bytes({"big": 2**80}) == b'{"big":1208925819614629174706176}'
    assert json.loads(operations.json_bytes(["\ud800"])) == ["\ud800"]
    assert operations.json_bytes({1: 2}) == b'{"1":2}'
    assert operations.json_bytes([math.nan]) == b"[null]"  # (no answer holds one)
