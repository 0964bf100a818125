"""Conversions between model values and column values (shared by backends)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["dumps", "from_ms", "loads", "to_ms"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(value: datetime | None) -> int | None:
    """A UTC datetime as integer epoch milliseconds (sortable, compact)."""
    if value is None:
        return None
    if value.tzinfo is UTC and not value.microsecond % 1000:  # (what utcnow makes: exact)
        return (value - _EPOCH) // _MS
    seconds = value.timestamp()
    return int(seconds * 1000 + (0.5 if seconds >= 0 else -0.5))


def from_ms(value: int | None) -> datetime | None:
    """Epoch milliseconds as a UTC datetime (an addition: no time zone round trip)."""
    if value is None:
        return None
    return _EPOCH + _MS * int(value)


# One encoder, built once: json.dumps() with non-default arguments builds a new
# encoder on every call, which costs more than encoding a small document.
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_encode = _encoder.encode
_decoder = json.JSONDecoder()
_decode = _decoder.decode
_scan = _decoder.scan_once  # type: ignore[attr-defined]


def _c_encoder() -> Any:
    """The C encoder ``_encoder.encode`` makes at every call, made once (``None``
    without the C accelerator)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    e = _encoder
    return make(
        {},  # (the markers of circular references: empty again after each document)
        e.default,
        json.encoder.encode_basestring,
        e.indent,
        e.key_separator,
        e.item_separator,
        e.sort_keys,
        e.skipkeys,
        e.allow_nan,
    )


_HAS_C = getattr(json.encoder, "c_make_encoder", None) is not None
#: One C encoder per thread (its markers are its own).
_local = threading.local()


def dumps(value: Any) -> str:
    """Compact JSON text; raises ``ValueError``/``TypeError`` for what JSON cannot hold."""
    if not _HAS_C or isinstance(value, str):
        return _encode(value)
    try:
        iterencode = _local.iterencode
    except AttributeError:
        iterencode = _local.iterencode = _c_encoder()
    try:
        return "".join(iterencode(value, 0))
    except BaseException:
        _local.iterencode = _c_encoder()  # its markers may still hold what it was inside
        raise


def loads(value: str | None) -> Any:
    if value is None:
        return None
    try:  # what this module wrote: no whitespace around (else decode() says what is wrong)
        parsed, end = _scan(value, 0)
    except StopIteration:
        return _decode(value)
    return parsed if end == len(value) else _decode(value)
