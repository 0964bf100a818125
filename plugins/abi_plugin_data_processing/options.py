"""Configuration pieces shared by the data types: where records come from, retries, ids, paths."""

from __future__ import annotations

import re
from typing import Any, Literal

import attrs

from abi_engine import RetryPolicy
from abi_plugin_data_processing.mapping import check_path, config_error

__all__ = [
    "Pagination",
    "RetryOptions",
    "SourceOptions",
    "check_integration",
    "check_max_pages",
    "check_pagination",
    "check_params",
    "check_remote_path",
    "check_source",
    "retry_policy",
]

_INTEGRATION_ID = re.compile(r"^int_[A-Za-z0-9_.\-]{1,120}$")
MAX_PAGES = 10_000
MAX_REMOTE_PATH = 1_000


@attrs.define(kw_only=True)
class Pagination:
    """How a listing is paged: by a cursor the answer carries, or by page number.

    ``cursor``: the answer's ``cursor_field`` (a dotted path) holds the next
    cursor, sent back as the query parameter ``cursor_param``; reading stops
    when it is missing, ``null`` or empty. ``page``: the query parameter
    ``page_param`` counts from ``start_page``, ``size_param`` (when set) sends
    ``page_size``; reading stops at a page with fewer than ``page_size`` records.
    """

    type: Literal["cursor", "page"]
    cursor_field: str = "next_cursor"
    cursor_param: str = "cursor"
    page_param: str = "page"
    size_param: str | None = None
    page_size: int = 100
    start_page: int = 1


@attrs.define(kw_only=True)
class RetryOptions:
    """How often a step that talks to a remote system is tried (see ``RetryPolicy``)."""

    attempts: int = 3
    backoff_seconds: float = 1.0
    backoff_multiplier: float = 2.0
    max_backoff_seconds: float = 60.0


@attrs.define(kw_only=True, slots=False)  # a mixin: slotted bases cannot be combined
class SourceOptions:
    """Where records are read from: an integration's listing, paged or not."""

    source_integration: str | None = None
    source_path: str = "/records"
    source_params: dict[str, Any] = attrs.Factory(dict)
    records_field: str | None = "records"
    pagination: Pagination | None = None
    max_pages: int = 100


def check_integration(value: Any, field: str) -> None:
    """Raise ``INVALID_WORKFLOW_CONFIG`` on ``field`` unless ``value`` is an ``int_...`` id."""
    if not isinstance(value, str) or not _INTEGRATION_ID.match(value):
        raise config_error(field, "expected an integration id like 'int_crm'")


def check_remote_path(value: Any, field: str, *, placeholder: bool = False) -> None:
    """A path under an integration's base URL: ``/records``, never a URL of its own.

    With ``placeholder`` the path must contain ``{key}`` (filled with the
    record's key, URL-encoded).
    """
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        raise config_error(field, "expected a path starting with '/' (e.g. '/records')")
    if len(value) > MAX_REMOTE_PATH or any(c.isspace() or ord(c) < 32 for c in value):
        raise config_error(field, "no spaces or control characters, at most 1000 characters")
    if "\\" in value or "/../" in f"{value}/" or "#" in value:
        raise config_error(field, "no '..' segments, backslashes or fragments")
    if placeholder and "{key}" not in value:
        raise config_error(field, "must contain '{key}' (the record's key)")
    if not placeholder and "{" in value:
        raise config_error(field, "no placeholders here")


def check_params(params: dict[str, Any], field: str) -> None:
    """Raise ``INVALID_WORKFLOW_CONFIG`` unless every query parameter value is a scalar."""
    for name, value in params.items():
        if not isinstance(value, str | int | float | bool):
            raise config_error(f"{field}.{name}", "expected a string, number or boolean")


def check_source(options: SourceOptions, prefix: str = "configuration") -> None:
    """Rules on the values of :class:`SourceOptions`."""
    if options.source_integration is not None:
        check_integration(options.source_integration, f"{prefix}.source_integration")
    check_remote_path(options.source_path, f"{prefix}.source_path")
    check_params(options.source_params, f"{prefix}.source_params")
    if options.records_field is not None:
        check_path(options.records_field, f"{prefix}.records_field")
    check_max_pages(options.max_pages, f"{prefix}.max_pages")
    check_pagination(options.pagination, f"{prefix}.pagination")


def check_max_pages(value: int, field: str) -> None:
    """Raise ``INVALID_WORKFLOW_CONFIG`` unless ``1 <= value <= MAX_PAGES``."""
    if not 1 <= value <= MAX_PAGES:
        raise config_error(field, f"must be between 1 and {MAX_PAGES}")


def check_pagination(pagination: Pagination | None, field: str) -> None:
    """Rules on the values of :class:`Pagination`."""
    if pagination is None:
        return
    check_path(pagination.cursor_field, f"{field}.cursor_field")
    for name in ("cursor_param", "page_param", "size_param"):
        value = getattr(pagination, name)
        if value is not None and (not value or len(value) > 100):
            raise config_error(f"{field}.{name}", "expected a query parameter name")
    if not 1 <= pagination.page_size <= 10_000:
        raise config_error(f"{field}.page_size", "must be between 1 and 10000")
    if not 0 <= pagination.start_page <= 1_000_000:
        raise config_error(f"{field}.start_page", "must be between 0 and 1000000")


def retry_policy(options: RetryOptions, field: str = "configuration.retry") -> RetryPolicy:
    """The engine's ``RetryPolicy`` for :class:`RetryOptions`, its values checked."""
    if not 1 <= options.attempts <= 20:
        raise config_error(f"{field}.attempts", "must be between 1 and 20")
    if not 0 <= options.backoff_seconds <= 3600:
        raise config_error(f"{field}.backoff_seconds", "must be between 0 and 3600")
    if not 1 <= options.backoff_multiplier <= 10:
        raise config_error(f"{field}.backoff_multiplier", "must be between 1 and 10")
    if not 0 <= options.max_backoff_seconds <= 3600:
        raise config_error(f"{field}.max_backoff_seconds", "must be between 0 and 3600")
    return RetryPolicy(
        attempts=options.attempts,
        backoff_seconds=options.backoff_seconds,
        backoff_multiplier=options.backoff_multiplier,
        max_backoff_seconds=options.max_backoff_seconds,
    )
