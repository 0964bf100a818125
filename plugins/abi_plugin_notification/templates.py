"""Message templates: ``$name`` / ``${name}`` placeholders, rendered without ``eval``.

Placeholders follow :class:`string.Template`, extended with dotted paths into
nested objects (``${incident.id}``). Values are inserted as text (objects and
lists as JSON) and are never rendered again, so a parameter holding ``$x`` or
``${...}`` shows as it is. ``$$`` is a literal ``$``.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Mapping
from typing import Any

import attrs

__all__ = [
    "MAX_TEMPLATE_CHARS",
    "MessageTemplate",
    "MissingVariable",
    "TemplateError",
    "lookup",
    "parse_template",
    "render",
]

#: The longest template text accepted (subject or body), in characters.
MAX_TEMPLATE_CHARS = 20_000
_ID_LIKE = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


class TemplateError(ValueError):
    """A template is not well-formed (the message says where)."""


class MissingVariable(KeyError):
    """A placeholder names a value the parameters do not have."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no value for ${{{self.name}}}"


class _Template(string.Template):
    """``string.Template`` whose identifiers may be dotted paths (``incident.id``)."""

    idpattern = r"(?a:[_a-z][_a-z0-9]*(?:\.[_a-z0-9]+)*)"


@attrs.frozen(kw_only=True)
class MessageTemplate:
    """A template: an optional ``subject`` and a ``body``; ``source`` says where it came from."""

    body: str
    subject: str | None = None
    source: str = "inline"

    def variables(self) -> set[str]:
        """Every placeholder the subject and the body use."""
        found = set(_Template(self.body).get_identifiers())
        if self.subject is not None:
            found |= set(_Template(self.subject).get_identifiers())
        return found


def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise TemplateError(f"{where}: expected a string")
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"{where}: at most {MAX_TEMPLATE_CHARS} characters")
    if not _Template(text).is_valid():
        raise TemplateError(
            f"{where}: a '$' must start a placeholder such as $name or ${{name}} (write $$ for '$')"
        )
    return text


def parse_template(value: Any, source: str = "inline") -> MessageTemplate:
    """A :class:`MessageTemplate` from text (the body) or ``{"subject", "body"}``.

    :raises TemplateError: naming ``body`` or ``subject`` when malformed.
    """
    if isinstance(value, str):
        return MessageTemplate(body=_check_text(value, "body"), source=source)
    if not isinstance(value, Mapping):
        raise TemplateError("expected text or an object with 'body' and optional 'subject'")
    unknown = sorted(set(value) - {"body", "subject"})
    if unknown:
        raise TemplateError(f"{unknown[0]}: unknown field (a template has 'body' and 'subject')")
    if "body" not in value:
        raise TemplateError("body: required")
    subject = value.get("subject")
    return MessageTemplate(
        body=_check_text(value["body"], "body"),
        subject=None if subject is None else _check_text(subject, "subject"),
        source=source,
    )


def is_template_id(value: str) -> bool:
    """Whether a ``templates`` entry names a template (else it is inline text)."""
    return bool(_ID_LIKE.match(value))


def lookup(values: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path``; :class:`MissingVariable` when absent."""
    current: Any = values
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise MissingVariable(path)
    return current


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class _Values(Mapping[str, str]):
    """The mapping ``string.Template`` substitutes from: dotted lookups, text values."""

    def __init__(self, values: Mapping[str, Any], escape: Callable[[str], str]) -> None:
        self._values = values
        self._escape = escape

    def __getitem__(self, key: str) -> str:
        return self._escape(_text(lookup(self._values, key)))

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def render(text: str, values: Mapping[str, Any], escape: Callable[[str], str] = lambda s: s) -> str:
    """``text`` with each placeholder replaced by its value (through ``escape``).

    :raises MissingVariable: a placeholder has no value.
    """
    return _Template(text).substitute(_Values(values, escape))
