"""Identifiers and time: prefixes, time-sortable ids, uniqueness, RFC 3339 formatting."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abi_engine.ids import PREFIXES, format_time, new_id, parse_time, utcnow

ID_BODY = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}$")  # Crockford base32, lower case, no i l o u

SEED_PREFIXES = {
    "workflow": "wf_",
    "execution": "exec_",
    "schedule": "sched_",
    "webhook": "wh_",
    "user": "usr_",
    "integration": "int_",
}


def test_seed_prefixes() -> None:
    """The prefixes of the seed's ids are the ones the contract names."""
    for kind, prefix in SEED_PREFIXES.items():
        assert PREFIXES[kind] == prefix


@pytest.mark.parametrize("prefix", sorted(set(PREFIXES.values())))
def test_new_id_shape(prefix: str) -> None:
    """An id is its prefix plus 26 lower-case Crockford base32 characters."""
    value = new_id(prefix)
    assert value.startswith(prefix)
    assert ID_BODY.match(value.removeprefix(prefix))


def test_ids_sort_by_creation_time() -> None:
    """Ids made in successive milliseconds sort in the order they were made."""
    made = []
    for _ in range(20):
        made.append(new_id("wf_"))
        time.sleep(0.002)
    assert sorted(made) == made


def test_ids_are_unique() -> None:
    """100,000 ids made in a tight loop (same milliseconds) never collide."""
    ids = [new_id("exec_") for _ in range(100_000)]
    assert len(set(ids)) == len(ids)


def test_utcnow_is_utc_and_millisecond_precise() -> None:
    """utcnow() is timezone-aware UTC, truncated to milliseconds, and current."""
    now = utcnow()
    assert now.tzinfo is UTC
    assert now.microsecond % 1000 == 0
    assert abs(datetime.now(UTC) - now) < timedelta(seconds=5)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2023, 5, 1, 12, 0, tzinfo=UTC), "2023-05-01T12:00:00Z"),
        (datetime(2023, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC), "2023-05-01T12:00:00.250Z"),
        (datetime(2023, 5, 1, 12, 0, 0, 999_999, tzinfo=UTC), "2023-05-01T12:00:00.999Z"),
        (datetime(2023, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))), "2023-05-01T12:00:00Z"),
        (datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC), "0999-01-02T03:04:05Z"),
    ],
)
def test_format_time(value: datetime, text: str) -> None:
    """Times render as RFC 3339 UTC with Z, milliseconds only when not zero, years padded."""
    assert format_time(value) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-05-01T12:00:00Z", datetime(2023, 5, 1, 12, tzinfo=UTC)),
        ("2023-05-01T12:00:00z", datetime(2023, 5, 1, 12, tzinfo=UTC)),
        ("2023-05-01T14:00:00+02:00", datetime(2023, 5, 1, 12, tzinfo=UTC)),
        ("2023-05-01T12:00:00", datetime(2023, 5, 1, 12, tzinfo=UTC)),
        ("2023-05-01T12:00:00.5Z", datetime(2023, 5, 1, 12, 0, 0, 500_000, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    """parse_time accepts Z, offsets (converted to UTC) and naive times (taken as UTC)."""
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize("bad", ["", "yesterday", "2023-13-01T00:00:00Z", 1_700_000_000, None])
def test_parse_time_rejects_garbage(bad: object) -> None:
    """Anything that is not an RFC 3339 string raises ValueError."""
    with pytest.raises(ValueError):  # noqa: PT011 - parse_time's contract is a plain ValueError
        parse_time(bad)  # type: ignore[arg-type]


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.timezones(),
    )
)
def test_format_parse_round_trip(value: datetime) -> None:
    """format_time then parse_time gives the same instant, to the millisecond, always with Z."""
    text = format_time(value)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", text)
    expected = value.astimezone(UTC)
    expected = expected.replace(microsecond=expected.microsecond // 1000 * 1000)
    assert parse_time(text) == expected


def test_ids_strictly_increase_within_a_millisecond() -> None:
    """Many ids made in the same millisecond still sort in the order they were made."""
    made = [new_id("wf_") for _ in range(5000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_digits_match_a_plain_base32_encoder(value: int) -> None:
    """The fast encoder gives the digits a bit-by-bit Crockford encoder gives, so order is kept."""
    from abi_engine.ids import _ALPHABET, _digits

    shifted = value << 2
    plain = "".join(_ALPHABET[(shifted >> (5 * i)) & 31] for i in range(25, -1, -1))
    assert _digits(value) == plain
    if value < 2**128 - 1:
        assert _digits(value) < _digits(value + 1)


@given(st.integers(min_value=0, max_value=2**127), st.integers(min_value=0, max_value=5000))
def test_id_values_round_trip_and_blocks_count_up(value: int, offset: int) -> None:
    """Digits decode to their value; id_at(first, k) is the k-th id after first."""
    from abi_engine.ids import _digits, _value, id_at

    assert _value(_digits(value)) == value
    first = "evt_" + _digits(value)
    assert id_at(first, offset) == "evt_" + _digits(value + offset)


def test_id_blocks_are_new_and_increasing() -> None:
    """A block's ids sort after earlier ids and before later ones, and never repeat."""
    from abi_engine.ids import id_at, new_id_block

    before = new_id("evt_")
    first = new_id_block("evt_", 50)
    after = new_id("evt_")
    block = [id_at(first, k) for k in range(50)]
    assert before < block[0]
    assert block == sorted(block)
    assert len(set(block)) == 50
    assert block[-1] < after
