"""Limits: how large each field of a request may be, and how much one user may hold.

**Field limits** are markers in the ``typing.Annotated`` types of the request
models (``name: Annotated[str, Text(min_length=1, max_length=200)]``). The
converter checks them when it structures a body (the error names the field and
the limit), and the OpenAPI document declares them (``maxLength``,
``pattern``, ``maximum``, ``maxProperties``...), both from the same object, so
the server and a client generated from the document agree. Free-form JSON
fields (``metadata``, ``configuration``, ``parameters``, payloads) are bounded
by :class:`Json`: the bytes of their compact UTF-8 JSON, how deeply they nest,
and how many keys their top-level object has.

**Resource limits** (:class:`Limits`, ``Engine(limits=...)``) bound what one
user may hold through the API (schedules, webhooks, live tokens, queued
executions; integrations engine-wide) and how large an execution's results,
a step's saved progress and a page of a list may be.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "DESCRIPTION",
    "IDEMPOTENCY_KEY",
    "LIST_PAGE",
    "METADATA",
    "NAME",
    "NO_NUL",
    "URL",
    "Choice",
    "Constraint",
    "Items",
    "Json",
    "Limits",
    "NestedValueError",
    "Number",
    "Text",
    "UniqueBy",
    "check_json_size",
    "json_size",
]

#: A pattern that every text matches: no U+0000 (NUL), which PostgreSQL cannot store.
NO_NUL = r"^[^\x00]*$"
_NUL = "NUL characters (U+0000) are not allowed"
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class Constraint:
    """A limit on one value: :meth:`check` enforces it, :meth:`json_schema` declares it."""

    def check(self, value: Any) -> None:
        """Raise ``ValueError`` (its message says which limit) when ``value`` breaks it."""
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema keywords that say the same."""
        raise NotImplementedError


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    """``pattern`` as JSON Schema (ECMA 262) reads it: a final ``$`` is the end of the
    text, never before a final newline as in Python."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


@attrs.frozen
class Text(Constraint):
    """A string of ``min_length`` to ``max_length`` characters (code points).

    ``pattern`` is searched, not matched whole (as JSON Schema does): anchor it
    with ``^...$`` when the whole string must match. ``hint`` says in words
    what the pattern asks for (used in error messages).
    """

    max_length: int
    min_length: int = 0
    pattern: str | None = None
    hint: str = ""

    def check(self, value: Any) -> None:
        if not isinstance(value, str):
            return
        if "\x00" in value:
            raise ValueError(_NUL)
        if len(value) > self.max_length:
            raise ValueError(f"at most {self.max_length} characters (got {len(value)})")
        if len(value) < self.min_length:
            raise ValueError(f"at least {self.min_length} character(s)")
        if self.pattern is not None and _compiled(self.pattern).search(value) is None:
            raise ValueError(self.hint or f"must match the pattern {self.pattern}")

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"maxLength": self.max_length}
        if self.min_length:
            schema["minLength"] = self.min_length
        # No text holds U+0000 (PostgreSQL cannot store it): the pattern says so when the
        # constraint's own pattern does not.
        schema["pattern"] = self.pattern if self.pattern is not None else NO_NUL
        return schema


@attrs.frozen
class Number(Constraint):
    """A number within bounds (``None``: unbounded on that side)."""

    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None

    def check(self, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"must be at least {self.minimum:g}")
        if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
            raise ValueError(f"must be more than {self.exclusive_minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"must be at most {self.maximum:g}")

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {}
        for key, value in (
            ("minimum", self.minimum),
            ("exclusiveMinimum", self.exclusive_minimum),
            ("maximum", self.maximum),
        ):
            if value is not None:
                schema[key] = int(value) if float(value).is_integer() else value
        return schema


@attrs.frozen
class Items(Constraint):
    """A list of ``min_items`` to ``max_items`` items."""

    max_items: int
    min_items: int = 0

    def check(self, value: Any) -> None:
        if not isinstance(value, list):
            return
        if len(value) > self.max_items:
            raise ValueError(f"at most {self.max_items} items (got {len(value)})")
        if len(value) < self.min_items:
            raise ValueError(f"at least {self.min_items} item(s)")

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"maxItems": self.max_items}
        if self.min_items:
            schema["minItems"] = self.min_items
        return schema


@attrs.frozen
class Choice(Constraint):
    """One of ``values`` (for choices known only at run time, where ``Literal`` cannot say)."""

    values: tuple[str, ...]

    def check(self, value: Any) -> None:
        if value not in self.values:
            raise ValueError("must be one of: " + ", ".join(self.values))

    def json_schema(self) -> dict[str, Any]:
        return {"enum": list(self.values)}


@attrs.frozen
class UniqueBy(Constraint):
    """A list whose items differ in ``key`` (JSON Schema cannot say it: documented in
    words and as ``x-unique-by``)."""

    key: str

    def check(self, value: Any) -> None:
        if not isinstance(value, list):
            return
        seen: set[Any] = set()
        for index, item in enumerate(value):
            found = getattr(item, self.key, None)
            if found in seen:
                raise ValueError(f"item {index} repeats the {self.key} {found!r}")
            seen.add(found)

    def json_schema(self) -> dict[str, Any]:
        return {"x-unique-by": self.key, "description": f"Each {self.key} at most once"}


def json_size(value: Any) -> int:
    """The bytes of ``value`` as compact UTF-8 JSON; ``ValueError`` when it is not JSON."""
    try:
        text = _encode(value)
        return len(text) if text.isascii() else len(text.encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"must be JSON ({exc})") from None


class NestedValueError(ValueError):
    """A value inside a free-form JSON field is refused; ``path`` says where
    (``steps[0].url``), so the error can name the exact field."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def _depth_and_keys(value: Any, max_depth: int, max_key_length: int) -> None:
    if type(value) is dict and _flat(value, max_key_length):
        return  # (the common case, checked without walking: an object of plain values)
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, Mapping):
            children: Any = [(v, f"{path}.{k}" if path else str(k)) for k, v in item.items()]
            for key in item:
                # the key length at the top level only, as the schema's propertyNames says
                # (the bytes bound every key below it)
                if depth == 1 and isinstance(key, str) and len(key) > max_key_length:
                    raise ValueError(
                        f"keys are at most {max_key_length} characters (one has {len(key)})"
                    )
                if isinstance(key, str) and "\x00" in key:
                    raise NestedValueError(_NUL, path) if path else ValueError(_NUL)
        elif isinstance(item, list | tuple):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(item)]
        else:
            if isinstance(item, str) and "\x00" in item:
                raise NestedValueError(_NUL, path) if path else ValueError(_NUL)
            continue
        if depth > max_depth:
            raise ValueError(f"nested at most {max_depth} levels deep")
        stack.extend((child, depth + 1, where) for child, where in children)


_SCALARS = frozenset({int, float, bool, type(None)})


def _flat(value: dict[Any, Any], max_key_length: int) -> bool:
    """``value`` has short string keys and numbers, booleans, nulls or strings as values,
    without U+0000 anywhere: nothing for :func:`_depth_and_keys` to refuse."""
    for key, item in value.items():
        if type(key) is not str or len(key) > max_key_length or "\x00" in key:
            return False
        if type(item) not in _SCALARS and (type(item) is not str or "\x00" in item):
            return False
    return True


@attrs.frozen
class Json(Constraint):
    """A free-form JSON value: at most ``max_bytes`` of compact UTF-8 JSON, arrays and
    objects nested at most ``max_depth`` levels (the value itself is level 1), and,
    when it is an object, keys of at most ``max_key_length`` characters and at most
    ``max_keys`` keys at its top level; no U+0000 in any string or key."""

    max_bytes: int
    max_depth: int = 16
    max_keys: int | None = None
    max_key_length: int = 256

    def check(self, value: Any) -> None:
        check_json_size(value, self.max_bytes)
        if self.max_keys is not None and isinstance(value, Mapping) and len(value) > self.max_keys:
            raise ValueError(f"at most {self.max_keys} keys (got {len(value)})")
        _depth_and_keys(value, self.max_depth, self.max_key_length)

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "description": (
                f"Free-form JSON, no U+0000 in any string or key: at most {self.max_bytes} bytes"
                " (compact UTF-8 JSON),"
                f" nested at most {self.max_depth} levels, top-level keys of at most"
                f" {self.max_key_length} characters"
                + (f", at most {self.max_keys} keys" if self.max_keys is not None else "")
            ),
            "x-max-bytes": self.max_bytes,
            "x-max-depth": self.max_depth,
            "propertyNames": {"maxLength": self.max_key_length},
        }
        if self.max_keys is not None:
            schema["maxProperties"] = self.max_keys
        return schema


def check_json_size(value: Any, max_bytes: int) -> int:
    """The JSON size of ``value``; ``ValueError`` when it is larger than ``max_bytes``.

    Strings are measured first, without encoding anything, so a value of many
    megabytes is refused before a second copy of it is made.
    """
    if isinstance(value, str) and len(value) > max_bytes:
        raise ValueError(f"at most {max_bytes} bytes of JSON (got more than {len(value)})")
    size = json_size(value)
    if size > max_bytes:
        raise ValueError(f"at most {max_bytes} bytes of JSON (got {size})")
    return size


# -- the field limits of the request models -------------------------------------------------

#: A name: 1 to 200 characters, not only spaces.
NAME = Text(
    min_length=1,
    max_length=200,
    pattern=r"^[^\x00]*[^\s\x00][^\x00]*$",
    hint="must not be blank",
)
#: A description: at most 5,000 characters.
DESCRIPTION = Text(max_length=5_000)
#: ``metadata`` of a workflow: 8 KiB of JSON, 64 keys, 8 levels.
METADATA = Json(max_bytes=8_192, max_keys=64, max_depth=8, max_key_length=128)
#: An outbound URL (webhooks, callbacks): http(s), printable ASCII (RFC 3986: encode
#: anything else), a host name or IPv4 address without credentials, a valid port.
URL = Text(
    min_length=1,
    max_length=2_048,
    pattern=(
        r"^[Hh][Tt][Tt][Pp][Ss]?://"
        # a host name: labels of letters, digits, '_' and inner '-', the last (the top
        # level) beginning with a letter; or an IPv4 address in dotted decimal
        r"((([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
        r"[A-Za-z]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?)"
        r"|((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9]))"
        r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
        r"([/?#][!-~]*)?$"
    ),
    hint=(
        "must be an http(s) URL of printable ASCII characters with a host name or IPv4"
        " address (no credentials, a port from 1 to 65535)"
    ),
)
#: An idempotency key (body field or ``Idempotency-Key`` header): 1 to 255 characters.
IDEMPOTENCY_KEY = Text(min_length=1, max_length=255)
#: The bound of one page of a list answer (``Limits.max_page_bytes`` by default).
LIST_PAGE = 1_048_576


@attrs.define(kw_only=True)
class Limits:
    """What one user may hold, and how large results and pages may be (``Engine(limits=)``).

    Counts (``None``: no limit) apply to what a user does through the API
    (REST and ``abi.workflows``), not to the host's own calls on the engine's
    services:

    - ``max_schedules_per_user`` (1,000): schedules created by one user;
    - ``max_webhooks_per_user`` (100): webhook subscriptions created by one user;
    - ``max_integrations`` (1,000): integration connections, engine-wide
      (connections belong to the engine, not to a user; replacing one is
      always allowed);
    - ``max_tokens_per_user`` (100): live access tokens a user may hold when
      minting one over REST (``POST /api/v1/tokens``);
    - ``max_queued_executions_per_user`` (1,000): asynchronous executions of
      one user waiting in the queue (``queued``) at once.

    A request over a count answers 409 ``INVALID_STATE`` whose ``details``
    name the limit (``details.limit``) and its value. The check is made before
    the insert: requests of one user racing each other may pass it together,
    so a count can go over by at most the number of that user's requests in
    flight at that moment.

    Sizes apply to every execution, however started:

    - ``max_result_bytes`` (1 MiB): the JSON of one step's result (the last
      step's is the execution's result); a larger one fails that step with
      ``ResultTooLarge``, stored like any step error;
    - ``max_progress_bytes`` (256 KiB): the JSON a step saves with
      ``ctx.save_progress``; a larger one raises ``ValueError`` in the step;
    - ``max_page_bytes`` (1 MiB): the JSON of one page of a list answer; a
      page that would be larger is answered with a smaller page size (see the
      REST reference's *Pagination*).
    """

    max_schedules_per_user: int | None = attrs.field(default=1_000)
    max_webhooks_per_user: int | None = attrs.field(default=100)
    max_integrations: int | None = attrs.field(default=1_000)
    max_tokens_per_user: int | None = attrs.field(default=100)
    max_queued_executions_per_user: int | None = attrs.field(default=1_000)
    max_result_bytes: int = attrs.field(default=1_048_576, validator=attrs.validators.ge(1))
    max_progress_bytes: int = attrs.field(default=262_144, validator=attrs.validators.ge(1))
    max_page_bytes: int = attrs.field(default=LIST_PAGE, validator=attrs.validators.ge(1))
