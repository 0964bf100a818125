"""What differs between the SQL of two databases, as data: a :class:`Dialect`.

The shared SQL (``storage/sql/``) is written once, with ``?`` placeholders,
and asks its store's dialect for the few fragments that differ:

- **placeholder**: the shared text always says ``?``; a driver that wants
  another mark (psycopg's ``%s``) gets :meth:`Dialect.sql` of the text, done
  by the backend's cursor (``storage/postgres.py``);
- **row locks**: :meth:`Dialect.lock` ends a ``SELECT`` of rows read before a
  write that depends on them, :meth:`Dialect.claim` one that takes work from a
  list other processes take from too (both empty where a write transaction
  already holds the whole database, as SQLite's ``BEGIN IMMEDIATE`` does);
- **upserts**: :meth:`Dialect.upsert` (replace a row by its key), and
  :attr:`Dialect.upsert_inserted` (whether one inserted);
- **lists of values**: :meth:`Dialect.any_of` (``IN (?, ...)`` or one array
  parameter, :meth:`Dialect.array` its value); many rows in one statement:
  :func:`write_rows` (an ``unnest`` of one array per column, or ``executemany``);
- **the clock of leases**: :attr:`Dialect.clock`;
- **column types in the DDL** of the migrations written once: :attr:`Dialect.types`;
- **typed parameters, functions, operators**: :meth:`Dialect.param`,
  :attr:`Dialect.greatest`, :attr:`Dialect.null_safe_eq`.

How a transaction begins, waits and retries is the store's own
(``storage/sqlite.py``, ``storage/postgres.py``): connections and transactions
are not SQL text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import attrs

__all__ = [
    "CHUNK",
    "NEXT_VERSION",
    "POSTGRES",
    "SQLITE",
    "Conn",
    "Dialect",
    "array_literal",
    "chunks",
    "write_rows",
]

T = TypeVar("T")

#: A connection of the backend (``sqlite3.Connection``, the PostgreSQL store's
#: ``QmarkConnection``): ``execute`` and ``executemany`` return cursors.
Conn = Any

#: Values one statement takes in an ``IN`` list (SQLite's old limit was 999 parameters).
CHUNK = 500


@attrs.frozen(kw_only=True, cache_hash=True)
class Dialect:
    """The SQL fragments one database spells its own way.

    :param name: the database's name (``"sqlite"``, ``"postgresql"``).
    :param placeholder: the driver's parameter mark (the shared SQL says ``?``).
    :param row_locks: whether a transaction locks the rows it reads
        (:meth:`lock`, :meth:`claim`); without, a write transaction holds the
        whole database.
    :param greatest: the scalar function of the larger of two values.
    :param null_safe_eq: the comparison for which ``NULL`` equals ``NULL``.
    :param clock: the database's clock in epoch ms, by which leases are set and
        judged (hosts whose clocks disagree still agree on leases); ``None``:
        the hosts' clocks (one host).
    :param types: what the portable DDL of ``storage/sql/schema.py`` names in
        braces (``{bigint}``, ``{serial}``...), in this database's words.
    :param arrays: whether a list of values goes as one array parameter (its value:
        :meth:`array`).
    :param array_mark: the parameter mark of an array (PostgreSQL: ``%s``, a text
        parameter holding the array's literal, :func:`array_literal`, cast by the
        SQL: ``%s::text[]``).
    :param replace_into: whether :meth:`upsert` of whole rows says ``INSERT OR REPLACE``.
    :param key_lock: a statement taking a transaction-level lock on a signed 64-bit
        key (``None``: a write transaction already excludes every other).
    :param upsert_inserted: appended to an upsert, makes it return one row whose one
        value is whether it inserted (``""``: the database cannot tell; the store
        looks for the row first).
    """

    name: str
    placeholder: str = "?"
    row_locks: bool = False
    greatest: str = "max"
    null_safe_eq: str = "IS"
    clock: str | None = None
    types: Mapping[str, str] = attrs.field(factory=dict, eq=False)
    arrays: bool = False
    array_mark: str = "?"
    replace_into: bool = False
    upsert_inserted: str = ""
    key_lock: str | None = None

    def sql(self, text: str) -> str:
        """``text`` (with ``?`` placeholders) in the driver's own marks.

        Only ``?`` changes: SQL written for the driver (``%s``) still reads the
        same, and the shared SQL passes a literal ``%`` as a parameter, never in
        its text (psycopg would read it as a mark).
        """
        if self.placeholder == "?":
            return text
        return _translate(text, self.placeholder)

    def lock(self, mode: str = "UPDATE", of: str | None = None) -> str:
        """The end of a ``SELECT`` whose rows a later statement of the transaction
        depends on (``mode``: ``UPDATE``, ``SHARE``...; ``of``: the table alias)."""
        if not self.row_locks:
            return ""
        return f" FOR {mode}" + (f" OF {of}" if of else "")

    def claim(self, of: str | None = None) -> str:
        """The end of a ``SELECT`` that takes rows from a work list other processes
        take from too: rows being taken elsewhere are skipped, not waited for."""
        return f"{self.lock(of=of)} SKIP LOCKED" if self.row_locks else ""

    def param(self, sql_type: str) -> str:
        """A placeholder whose value has ``sql_type`` even when it is ``NULL``."""
        return f"?::{sql_type}" if self.arrays else "?"

    def any_of(
        self, column: str, values: Sequence[Any], sql_type: str = "text"
    ) -> tuple[str, tuple[Any, ...]]:
        """A condition that ``column`` is one of ``values``, and its parameters.

        With no values the condition holds for no row.
        """
        if self.arrays:
            return f"{column} = ANY({self.array_mark}::{sql_type}[])", (
                self.array(values, sql_type),
            )
        if not values:
            return f"{column} IN (NULL)", ()
        return f"{column} IN ({', '.join('?' * len(values))})", tuple(values)

    def array(self, values: Sequence[Any], sql_type: str) -> Any:
        """The parameter value of ``values`` as one array of ``sql_type`` (``text``,
        ``int``, ``bigint``), for :attr:`array_mark` cast to ``sql_type[]``."""
        return array_literal(values, sql_type)

    def upsert(
        self,
        table: str,
        columns: Sequence[str],
        key: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> str:
        """An insert of ``columns`` that, on a row of the same ``key``, sets ``update``
        from the new values instead (``None``: every column, the whole row replaced)."""
        marks = ", ".join("?" * len(columns))
        names = ", ".join(columns)
        if update is None and self.replace_into:
            return f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})"
        changed = [c for c in columns if c not in key] if update is None else update
        sets = ", ".join(f"{c} = excluded.{c}" for c in changed)
        return (
            f"INSERT INTO {table} ({names}) VALUES ({marks})"
            f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"
        )


def write_rows(
    d: Dialect,
    conn: Conn,
    rows: Sequence[Sequence[Any]],
    *,
    each: str,
    together: str,
    types: Sequence[str],
) -> None:
    """Write ``rows``: where lists go as arrays, in one statement, ``together``, whose
    ``{rows}`` reads as a table of them (``unnest`` of one array per column, of
    ``types``); elsewhere ``executemany(each)``. Nothing for no rows.

    One statement instead of one per row: one parse, one plan and one network
    message for the batch, and the driver's per-row work is gone.
    """
    if not rows:
        return
    if not d.arrays:
        conn.executemany(each, rows)
        return
    table = "unnest(" + ", ".join(f"{d.array_mark}::{t}[]" for t in types) + ")"
    conn.execute(together.replace("{rows}", table), columns(d, rows, types))


def columns(d: Dialect, rows: Sequence[Sequence[Any]], types: Sequence[str]) -> list[Any]:
    """The parameters of ``rows`` as one array per column (of ``types``)."""
    return [d.array(column, t) for column, t in zip(zip(*rows, strict=True), types, strict=True)]


def array_literal(values: Sequence[Any], sql_type: str) -> str:
    """``values`` as PostgreSQL's text form of an array (``{"a","b \\" c",NULL}``, ``{1,NULL}``).

    psycopg dumps a list value by value in Python (its binary dumper packs each one
    with ``struct``, its text dumper quotes each one with a regular expression): for
    the arrays of a batch, most of the worker thread's CPU. Here the list is written
    by the ``json`` module's C encoder, whose text PostgreSQL reads as an array
    literal: strings double-quoted with only ``"`` and ``\\`` escaped, as an array
    literal escapes them, ``null`` unquoted for ``None``, integers in decimal. The one
    difference, JSON's escapes of control characters (``\\n``: PostgreSQL would read
    an ``n``), sends a text column holding one to :func:`_quoted` instead.
    """
    if sql_type not in _ARRAY_TYPES:
        raise ValueError(f"no array literal for type {sql_type!r}")
    text = _to_json(values)
    if sql_type == "text":
        if _JSON_ESCAPE.search(text):
            return _quoted(values)
    elif _NOT_DIGITS.search(text):  # a bool (``true``), a float (``1.0``): as numbers
        return "{" + ",".join(["NULL" if v is None else str(int(v)) for v in values]) + "}"
    return "{" + text[1:-1] + "}"


def _quoted(values: Sequence[str | None]) -> str:
    """A text array's literal, quoted value by value (any character but U+0000)."""
    quoted = [
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    ]
    return "{" + ",".join(quoted) + "}"


_ARRAY_TYPES = frozenset({"text", "int", "bigint", "smallint"})
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
#: A backslash escaping anything but ``"`` or ``\\`` (from the first one on: an escaped
#: backslash followed by a letter matches too, and is quoted the slow way, correctly).
_JSON_ESCAPE = re.compile(r'\\[^"\\]')
#: In a list of integers' JSON, anything but digits, signs, commas and ``null``.
_NOT_DIGITS = re.compile(r"[^-0-9,nul\[\]]")


def chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """``values`` in runs of at most :data:`CHUNK`, for ``IN`` lists."""
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


@lru_cache(maxsize=1024)
def _translate(text: str, placeholder: str) -> str:
    return text.replace("?", placeholder)


#: SQLite: one writer at a time (``BEGIN IMMEDIATE``), so no row locks.
SQLITE = Dialect(
    name="sqlite",
    replace_into=True,
    types={
        "int": "INTEGER",
        "bigint": "INTEGER",
        "bool": "INTEGER",
        "double": "REAL",
        "true": "1",
        "false": "0",
        "sorted_text": "TEXT",  # SQLite compares text byte-wise
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "without_rowid": " WITHOUT ROWID",
    },
)

#: PostgreSQL at READ COMMITTED: rows are locked, work lists skip locked rows.
POSTGRES = Dialect(
    name="postgresql",
    placeholder="%s",
    row_locks=True,
    greatest="greatest",
    null_safe_eq="IS NOT DISTINCT FROM",
    clock="(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    arrays=True,
    array_mark="%s",
    upsert_inserted=" RETURNING (xmax = 0)",  # no previous version: the row was inserted
    key_lock="SELECT pg_advisory_xact_lock(?)",
    types={
        "int": "INTEGER",
        "bigint": "BIGINT",
        "bool": "BOOLEAN",
        "double": "DOUBLE PRECISION",
        "true": "TRUE",
        "false": "FALSE",
        "sorted_text": 'TEXT COLLATE "C"',  # byte-wise, as in SQLite, whatever the locale
        "serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "without_rowid": "",
    },
)


#: A workflow's new ``updated_at`` (its version, which caches compare): the given time
#: (two ``?``), or one millisecond past the stored one when that is not earlier, so
#: two changes in one millisecond, from any process, still make two versions.
NEXT_VERSION = "CASE WHEN ? > updated_at THEN ? ELSE updated_at + 1 END"
