"""The column conversions of storage/_codec.py, made cheaper for the hot path (#18),
give what the plain library calls give: times as epoch milliseconds both ways, and JSON
text both ways (compact, no NaN, errors as before)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abi_engine.ids import utcnow
from abi_engine.storage._codec import dumps, from_ms, loads, to_ms

MIN_MS = -62135596800000  # 0001-01-01
MAX_MS = 253402300799999  # 9999-12-31 23:59:59.999


def _plain_from_ms(value: int) -> datetime:
    seconds, ms = divmod(value, 1000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=ms * 1000)


def _plain_to_ms(value: datetime) -> int:
    seconds = value.timestamp()
    return int(seconds * 1000 + (0.5 if seconds >= 0 else -0.5))


@given(st.integers(MIN_MS, MAX_MS))
def test_milliseconds_round_trip_as_the_library_does(ms: int) -> None:
    value = from_ms(ms)
    assert value == _plain_from_ms(ms)
    assert value is not None
    assert value.tzinfo is UTC
    assert to_ms(value) == ms


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]),
)
def test_to_ms_of_any_aware_time_rounds_as_before(value: datetime, zone: Any) -> None:
    assert to_ms(value.astimezone(zone)) == _plain_to_ms(value)


def test_utcnow_is_whole_milliseconds_in_utc() -> None:
    now = utcnow()
    assert now.tzinfo is UTC
    assert now.microsecond % 1000 == 0
    assert abs((datetime.now(UTC) - now).total_seconds()) < 5
    assert from_ms(to_ms(now)) == now
    assert to_ms(None) is None
    assert from_ms(None) is None


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(_JSON)
def test_json_text_is_what_the_library_writes_and_reads(value: Any) -> None:
    text = dumps(value)
    assert text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert loads(text) == json.loads(text)
    spaced = json.dumps(value, indent=1)
    assert loads(spaced) == json.loads(spaced)


@pytest.mark.parametrize("bad", [math.nan, {"a": math.inf}, {"a": {1, 2}}, object()])
def test_what_json_cannot_hold_is_refused_and_the_encoder_recovers(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        dumps(bad)
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        dumps({"x": loop})
    assert dumps({"x": [1, "é"]}) == '{"x":[1,"é"]}'  # nothing left over from the failure


@pytest.mark.parametrize("text", ["", " ", "nul", '{"a":1}x', '{"a":1', "[1,]"])
def test_bad_json_text_is_refused_as_before(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        loads(text)
