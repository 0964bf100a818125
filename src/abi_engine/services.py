"""Helpers shared by the engine's services."""

from __future__ import annotations

from typing import Any, TypeVar

from abi_engine.errors import InvalidRequest
from abi_engine.storage.aio import AsyncStore
from abi_engine.storage.base import Store

__all__ = ["MAX_PAGE_SIZE", "Service", "check_flag", "check_int", "check_page"]

T = TypeVar("T")

MAX_PAGE_SIZE = 100
MAX_PAGE = 10_000_000


def _as_int(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise InvalidRequest(f"'{field}' must be an integer", {"field": field})
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdecimal():
        try:  # "+-5" and 5000-digit strings pass the check above but not int()
            return int(value.strip())
        except ValueError:
            pass
    raise InvalidRequest(f"'{field}' must be an integer", {"field": field})


def check_int(value: Any, field: str, low: int, high: int) -> int:
    """An integer from ``low`` to ``high`` (digit strings accepted); ``InvalidRequest``
    naming ``field`` otherwise."""
    number = _as_int(value, field)
    if not low <= number <= high:
        raise InvalidRequest(f"'{field}' must be between {low} and {high}", {"field": field})
    return number


def check_page(page: Any, page_size: Any) -> tuple[int, int]:
    """Validate ``page`` (from 1) and ``page_size`` (1..100); accept digit strings."""
    page_i = _as_int(page, "page")
    size_i = _as_int(page_size, "page_size")
    if not 1 <= page_i <= MAX_PAGE:
        raise InvalidRequest(f"'page' must be between 1 and {MAX_PAGE}", {"field": "page"})
    if not 1 <= size_i <= MAX_PAGE_SIZE:
        raise InvalidRequest(
            f"'page_size' must be between 1 and {MAX_PAGE_SIZE}", {"field": "page_size"}
        )
    return page_i, size_i


class Service:
    """Base of the engine's services: ``self._store``, the store awaitable.

    Every call reads ``await self._store.get_workflow(workflow_id)``; it runs
    inline or in a worker thread as the store needs
    (:class:`~abi_engine.storage.aio.AsyncStore`).
    """

    def __init__(self, store: Store) -> None:
        self._store = AsyncStore(store)


def check_flag(value: Any, field: str) -> bool | None:
    """A boolean filter: ``True``/``False``, or its query-string form (``true``, ``false``,
    ``1``, ``0``, any case); ``None`` when not given; ``InvalidRequest`` naming ``field``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise InvalidRequest(f"'{field}' must be true or false", {"field": field})
