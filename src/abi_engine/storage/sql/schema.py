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
MIGRATIONS: list[Migration] = []

MIGRATIONS.append(
    Migration(
        "m014_schedules",
        [
            # Never silent (#17): due times missed, failures in a row, the auto-pause limit.
            "ALTER TABLE schedules ADD COLUMN missed_count {bigint} NOT NULL DEFAULT 0",
            "ALTER TABLE schedules ADD COLUMN consecutive_failures {int} NOT NULL DEFAULT 0",
            "ALTER TABLE schedules ADD COLUMN max_consecutive_failures {int}",
            # Paused with a reason (#17): who, why, since when.
            "ALTER TABLE schedules ADD COLUMN paused_by TEXT",
            "ALTER TABLE schedules ADD COLUMN paused_reason TEXT",
            "ALTER TABLE schedules ADD COLUMN paused_at {bigint}",
            # How the next firing treats the due times passed while paused (one firing).
            "ALTER TABLE schedules ADD COLUMN resume_policy TEXT",
            # Bounds for every type: no due time after end_time, at most max_runs runs.
            "ALTER TABLE schedules ADD COLUMN end_time {bigint}",
            "ALTER TABLE schedules ADD COLUMN max_runs {bigint}",
            "ALTER TABLE schedules ADD COLUMN runs_count {bigint} NOT NULL DEFAULT 0",
            # Each due time's run delayed by a pseudo-random amount below it (0: none).
            "ALTER TABLE schedules ADD COLUMN jitter_seconds {double} NOT NULL DEFAULT 0",
            # Dates (in the schedule's zone) whose due times do not run: a JSON list.
            "ALTER TABLE schedules ADD COLUMN exclude_dates TEXT",
            # The logical due time of a scheduled execution (#17).
            "ALTER TABLE executions ADD COLUMN scheduled_for {bigint}",
        ],
    )
)
