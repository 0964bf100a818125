"""Conversions between model values and column values (shared by backends)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

__all__ = ["dumps", "from_ms", "loads", "to_ms"]


def to_ms(value: datetime | None) -> int | None:
    """A UTC datetime as integer epoch milliseconds (sortable, compact)."""
    if value is None:
        return None
    seconds = value.timestamp()
    return int(seconds * 1000 + (0.5 if seconds >= 0 else -0.5))


def from_ms(value: int | None) -> datetime | None:
    if value is None:
        return None
    seconds, ms = divmod(int(value), 1000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=ms * 1000)


# One encoder, built once: json.dumps() with non-default arguments builds a new
# encoder on every call, which costs more than encoding a small document.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_decode = json.JSONDecoder().decode


def dumps(value: Any) -> str:
    """Compact JSON text; raises ``ValueError``/``TypeError`` for what JSON cannot hold."""
    return _encode(value)


def loads(value: str | None) -> Any:
    return None if value is None else _decode(value)
