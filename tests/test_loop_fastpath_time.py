"""Attack on #18's time conversions (from_ms/to_ms as additions to the epoch): for any
millisecond from year 2 to 9998, whatever zone the aware time is given in (UTC itself,
zones equal to UTC but not the ``UTC`` object, fixed offsets to the minute, named
zones), to_ms is the exact integer count of milliseconds since the epoch (integer
datetime arithmetic, no float), and from_ms gives that instant back, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from abi_engine.storage._codec import from_ms, to_ms

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LOW = (datetime(2, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)
HIGH = (datetime(9998, 12, 31, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)

ZONES = st.one_of(
    st.sampled_from(
        [
            UTC,
            timezone(timedelta(0)),
            ZoneInfo("UTC"),
            ZoneInfo("Asia/Kathmandu"),
            ZoneInfo("America/St_Johns"),
            ZoneInfo("Pacific/Kiritimati"),
        ]
    ),
    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m))),
)


@given(st.integers(LOW, HIGH), ZONES)
def test_any_millisecond_in_any_zone_is_exact(ms: int, zone: Any) -> None:
    instant = EPOCH + timedelta(milliseconds=ms)
    shown = instant.astimezone(zone)
    assert to_ms(shown) == ms
    back = from_ms(ms)
    assert back == shown
    assert back is not None
    assert back.tzinfo is UTC
    assert back.utcoffset() == timedelta(0)
    assert (back.year, back.microsecond % 1000) == (instant.year, 0)


@given(st.integers(LOW, HIGH), st.integers(0, 999), ZONES)
def test_a_time_between_milliseconds_is_the_nearest_one(ms: int, us: int, zone: Any) -> None:
    """Sub-millisecond times (not what the engine stores, which truncates) go to a
    neighbouring millisecond, the same whatever the zone it is given in."""
    instant = EPOCH + timedelta(milliseconds=ms, microseconds=us)
    got = to_ms(instant.astimezone(zone))
    assert got is not None
    assert got in (ms, ms + 1)
    assert got == to_ms(instant)
    if us < 499:
        assert got == ms
    if us > 501:
        assert got == ms + 1
