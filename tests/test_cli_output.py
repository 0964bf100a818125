"""The command line's tables fit the terminal, and its progress bar counts."""

from __future__ import annotations

import io
import operator

from hypothesis import given, settings
from hypothesis import strategies as st

from abi_engine.cli._output import Progress, table

_cells = st.one_of(st.none(), st.integers(), st.text(max_size=60), st.booleans())


@settings(max_examples=200)
@given(
    rows=st.lists(st.tuples(_cells, _cells, _cells), max_size=6),
    width=st.integers(10, 200),
)
def test_tables_fit_the_width_when_the_headers_do(
    rows: list[tuple[object, ...]], width: int
) -> None:
    """Every line is at most the width, unless the headers alone are wider (columns never
    shrink below their header); each line is one line; a cell that fits is whole."""
    headers = ("ID", "A LONGER HEADER", "S")
    columns = [(h, operator.itemgetter(i)) for i, h in enumerate(headers)]
    text = table([dict(enumerate(r)) for r in rows], columns, width=width)
    lines = text.split("\n")
    assert len(lines) == len(rows) + 1
    least = sum(max(len(h), 6) for h in headers) + 2 * (len(headers) - 1)
    assert all(len(line) <= max(width, least) for line in lines)
    assert lines[0].split()[:1] == ["ID"]


def test_wide_terminals_show_cells_whole() -> None:
    """With room enough nothing is clipped; with less, long cells end with an ellipsis."""
    rows = [{"id": "exec_" + "x" * 30, "status": "completed"}]
    columns = [("ID", lambda r: r["id"]), ("STATUS", lambda r: r["status"])]
    assert rows[0]["id"] in table(rows, columns, width=200)
    narrow = table(rows, columns, width=24)
    assert "…" in narrow
    assert all(len(line) <= 24 for line in narrow.split("\n"))


def test_progress_counts_to_the_total() -> None:
    """Off a terminal the bar writes one line per update, ending at done/total."""
    out = io.StringIO()
    bar = Progress("pruning", 10, out=out)
    bar.advance(4)
    bar.advance(6)
    bar.finish()
    lines = out.getvalue().splitlines()
    assert lines[-1].endswith("10/10")
    assert "[" + "#" * 30 + "]" in lines[-1]
    assert len(lines) == 2
