"""Request text made safe to log: one line, bounded."""

from __future__ import annotations

__all__ = ["loggable"]

#: The most characters of a request's text a log line carries.
MAX_LOGGED = 200


def loggable(text: object) -> str:
    """``text`` for a log line: control and other non-printable characters escaped
    (a percent-decoded path may hold a line break that would forge a log line),
    cut at :data:`MAX_LOGGED` characters."""
    value = str(text)
    if not value.isprintable():
        value = "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)
    if len(value) > MAX_LOGGED:
        value = value[:MAX_LOGGED] + "..."
    return value
