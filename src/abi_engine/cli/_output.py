"""How the command line prints: tables that fit the terminal, JSON, a progress bar."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

__all__ = ["Column", "Progress", "print_json", "table"]

#: A column: its header and how a row gives its cell.
Column = tuple[str, Callable[[Mapping[str, Any]], Any]]

_GAP = 2
_MIN = 6  # the narrowest a column is shrunk to (or its header's width, if wider)


def print_json(data: Any, out: TextIO | None = None) -> None:
    """``data`` as indented JSON on stdout."""
    print(json.dumps(data, indent=2, ensure_ascii=False), file=out or sys.stdout)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return " ".join(str(value).split())  # one line


def _fit(widths: list[int], least: list[int], width: int) -> list[int]:
    """Shrink the widest columns that can shrink (never below ``least``), one character
    at a time, until the row fits ``width``."""
    widths = list(widths)
    while sum(widths) + _GAP * (len(widths) - 1) > width:
        can = [i for i, w in enumerate(widths) if w > least[i]]
        if not can:
            break
        widest = max(can, key=widths.__getitem__)
        widths[widest] -= 1
    return widths


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], width: int | None = None
) -> str:
    """``rows`` as a text table of ``columns`` no wider than ``width`` (default: the
    terminal's, ``shutil.get_terminal_size``); cells too long end with ``…``."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    cells = [[_cell(get(row)) for _, get in columns] for row in rows]
    headers = [header for header, _ in columns]
    natural = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    least = [min(n, max(len(h), _MIN)) for n, h in zip(natural, headers, strict=True)]
    widths = _fit(natural, least, width)
    lines = []
    for line in [headers, *cells]:
        text = (" " * _GAP).join(
            _clip(cell, w).ljust(w) for cell, w in zip(line, widths, strict=True)
        )
        lines.append(text.rstrip())
    return "\n".join(lines)


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, one line per update
    otherwise (so logs keep each step)."""

    def __init__(self, label: str, total: int, out: TextIO | None = None) -> None:
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.out = out or sys.stderr
        self._tty = self.out.isatty()

    def advance(self, count: int) -> None:
        self.done += count
        bar_width = 30
        share = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = round(bar_width * share)
        bar = "#" * filled + "-" * (bar_width - filled)
        text = f"{self.label} [{bar}] {self.done}/{self.total}"
        if self._tty:
            self.out.write("\r" + text)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        if self._tty:
            self.out.write("\n")
            self.out.flush()
