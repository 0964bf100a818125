"""Logging: the engine's logger names and a JSON formatter (``serve --log-format json``).

The library only logs, through the standard :mod:`logging` module, to loggers
under ``abi_engine`` (``abi_engine.executor``, ``abi_engine.scheduler``,
``abi_engine.webhooks``, ``abi_engine.commit``, ...); it never configures
handlers, so a host application decides where lines go. Lines about one
execution, schedule or delivery carry its ids as ``extra`` fields
(``execution_id``, ``workflow_id``, ``schedule_id``, ``error``...), which
:class:`JsonFormatter` writes as keys of the line's object.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "configure_logging"]

# The attributes every LogRecord has: anything else was passed as ``extra``.
_STANDARD = frozenset(
    set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (RFC 3339, UTC), ``level``, ``logger``,
    ``message``, then the record's ``extra`` fields, and ``exception`` (the
    traceback's text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: int, log_format: str = "text") -> None:
    """Send log lines to stderr at ``level``: as text, or (``"json"``) as one JSON
    object per line.

    Text does what :func:`logging.basicConfig` does (nothing when the root logger
    has handlers already); JSON adds its handler to the root logger once, beside
    any there, and sets the root level.
    """
    if log_format != "json":
        logging.basicConfig(level=level, format="%(levelname)-9s %(name)s: %(message)s")
        return
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level)
