"""Schema changes written once, for every store.

A migration after ``m011`` is a :class:`Migration`: a name and statements in
portable DDL, where what the databases spell differently is a name of
:attr:`~abi_engine.storage.sql.dialect.Dialect.types` in braces: ``{int}``,
``{bigint}`` (times in epoch ms, counters), ``{bool}``, ``{double}``,
``{true}``/``{false}`` (defaults of flags), ``{sorted_text}`` (text that sorts
byte-wise), ``{serial}`` (a position: the type and primary key of an
increasing id), ``{without_rowid}`` (after a table with a composite key).
Literal braces are doubled. Each store's runner applies the rendering for its
database, in order after the migrations written per database
(``storage/migrations.py``, ``storage/postgres_migrations.py``, which ``m001``
to ``m011`` stay as they shipped).

Append new migrations to :data:`MIGRATIONS`; never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from abi_engine.storage.sql.dialect import Dialect

__all__ = ["MIGRATIONS", "Migration"]


@attrs.frozen
class Migration:
    """One schema change: ``name`` (``m012_...``) and its portable ``statements``."""

    name: str
    statements: Sequence[str]

    def render(self, dialect: Dialect) -> list[str]:
        """The statements in ``dialect``'s words."""
        return [s.format_map(dialect.types) for s in self.statements]

    def applier(self, dialect: Dialect) -> Callable[[Any], None]:
        """A function running the statements on a database object with ``execute``
        (a ``sqlite_utils.Database``), named after the migration."""
        statements = self.render(dialect)

        def apply(db: Any) -> None:
            for statement in statements:
                db.execute(statement)

        apply.__name__ = apply.__qualname__ = self.name
        return apply


#: The migrations after ``m011``, for every store, in order.
MIGRATIONS: list[Migration] = [
    Migration(
        "m015_triggers_signals",
        [
            # The correlation a waiting execution waits on ("<signal name>#<key>").
            "ALTER TABLE executions ADD COLUMN waiting_key TEXT",
            "CREATE INDEX executions_waiting_key ON executions (waiting_key)"
            " WHERE waiting_key IS NOT NULL",
            # Signals addressed by correlation key: kept until a wait takes them
            # (execution_id NULL) or delivered (kept a day, so a retry finds them).
            """CREATE TABLE correlated_signals (
                seq {serial},
                id TEXT NOT NULL UNIQUE,
                correlation TEXT NOT NULL,
                name TEXT NOT NULL,
                correlation_key TEXT NOT NULL,
                payload TEXT,
                created_at {bigint} NOT NULL,
                expires_at {bigint} NOT NULL,
                execution_id TEXT,
                delivered_at {bigint}
            )""",
            "CREATE INDEX correlated_signals_kept ON correlated_signals"
            " (correlation, execution_id, seq)",
            # Signed inbound triggers (their signature rule and mapping in config, JSON).
            """CREATE TABLE triggers (
                id {sorted_text} PRIMARY KEY,
                workflow_id TEXT NOT NULL,
                secret TEXT NOT NULL,
                config TEXT NOT NULL,
                created_by TEXT,
                created_at {bigint} NOT NULL,
                updated_at {bigint} NOT NULL
            )""",
        ],
    ),
]
