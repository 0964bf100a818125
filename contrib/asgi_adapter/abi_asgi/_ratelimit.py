"""Per-caller token buckets."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import attrs

__all__ = ["RateLimit", "RateLimiter"]


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class RateLimit:
    """How many requests one caller may make.

    Each caller (an access token, or a client address for requests without a
    valid token) has a bucket of ``burst`` requests that refills at
    ``requests_per_second``. A request finding the bucket empty is answered
    429 ``RATE_LIMIT_EXCEEDED`` with a ``Retry-After`` header.
    """

    requests_per_second: float = attrs.field(default=50.0, validator=_positive)
    burst: int = attrs.field(default=100, validator=_at_least_one)


class RateLimiter:
    """Token buckets by key, in memory, for one process.

    The table is bounded: past ``max_keys`` entries, buckets that have refilled
    completely (indistinguishable from new ones) are dropped, and if that is
    not enough the table starts over.
    """

    def __init__(
        self,
        limit: RateLimit,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = float(limit.requests_per_second)
        self.burst = float(limit.burst)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def acquire(self, key: str) -> int:
        """Take one request from ``key``'s bucket: 0 when allowed, else seconds to wait (>= 1)."""
        now = self._clock()
        found = self._buckets.get(key)
        if found is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            tokens = self.burst
        else:
            tokens, at = found
            tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def _prune(self, now: float) -> None:
        self._buckets = {
            key: (tokens, at)
            for key, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self.rate < self.burst
        }
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()
