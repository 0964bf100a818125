"""Prefixed, time-sortable identifiers and the UTC clock."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta

__all__ = ["PREFIXES", "format_time", "new_id", "parse_time", "utcnow"]

PREFIXES = {
    "workflow": "wf_",
    "execution": "exec_",
    "schedule": "sched_",
    "webhook": "wh_",
    "user": "usr_",
    "integration": "int_",
    "delivery": "dlv_",
    "token": "tok_",
    "event": "evt_",
}

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


# Crockford's lower-case base32 digits are in ASCII order: ids sort like their values.
_PAIRS = [_ALPHABET[i >> 5] + _ALPHABET[i & 31] for i in range(1024)]
_SHIFTS = tuple(range(120, -1, -10))
# Crockford's digits to the digits int(..., 32) reads (0-9, then a-v).
_FROM_CROCKFORD = str.maketrans(_ALPHABET, "0123456789abcdefghijklmnopqrstuv")
_RANDOM_CHUNK = 10 * 256  # random bytes read from the OS at once (80 bits per id)
_random = b""
_random_at = _RANDOM_CHUNK
_last = 0
_last_lock = threading.Lock()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def new_id(prefix: str) -> str:
    """A new id: ``prefix`` + 26 base32 chars (48 bits of milliseconds, 80 random bits).

    Ids sort by creation time; within one process they are strictly
    increasing, even within a millisecond (the random part then counts up,
    as monotonic ULIDs do), so "newest first" lists never swap neighbours.
    The random bits come from ``os.urandom``, read in chunks.
    """
    return prefix + _digits(_reserve(1))


def new_id_block(prefix: str, count: int) -> str:
    """The first of ``count`` new ids that follow each other (see :func:`id_at`).

    One call instead of ``count``: the ids are the next ``count`` values from
    a new id's, so they are new, increasing and unique like :func:`new_id`'s.
    """
    return prefix + _digits(_reserve(max(1, count)))


def id_at(first: str, offset: int) -> str:
    """The id ``offset`` places after ``first`` in a block from :func:`new_id_block`."""
    if not offset:
        return first
    prefix, body = first[:-26], first[-26:]
    return prefix + _digits(_value(body) + offset)


def _reserve(count: int) -> int:
    """A new 128-bit id value, with the ``count - 1`` values after it kept for the caller."""
    global _last, _random, _random_at
    millis = time.time_ns() // 1_000_000
    with _last_lock:
        if _random_at >= _RANDOM_CHUNK:
            _random, _random_at = os.urandom(_RANDOM_CHUNK), 0
        value = millis << 80 | int.from_bytes(_random[_random_at : _random_at + 10], "big")
        _random_at += 10
        if value <= _last:
            value = _last + 1
        _last = value + count - 1
    return value


def _value(body: str) -> int:
    """The 128-bit value of 26 digits made by :func:`_digits`."""
    return int(body.translate(_FROM_CROCKFORD), 32) >> 2


def _digits(value: int) -> str:
    """The 26 Crockford base32 digits of a 128-bit ``value`` (as 130 bits, two zero bits last)."""
    value <<= 2  # read 10 bits (two digits) at a time
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def utcnow() -> datetime:
    """The current time, UTC, truncated to milliseconds (what the API shows)."""
    # The epoch plus whole milliseconds: half the cost of ``now(UTC).replace(...)``.
    return _EPOCH + _MS * (time.time_ns() // 1_000_000)


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with a ``Z`` suffix; milliseconds only when not zero."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # Written out, not strftime (which does not pad years below 1000) nor isoformat
    # (slower, and this runs for every timestamp of every answer and event).
    text = (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )
    if value.microsecond:
        return f"{text}.{value.microsecond // 1000:03d}Z"
    return text + "Z"


def parse_time(value: str) -> datetime:
    """Parse an RFC 3339 / ISO 8601 time; naive times are taken as UTC.

    :raises ValueError: when ``value`` is not a valid time.
    """
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
