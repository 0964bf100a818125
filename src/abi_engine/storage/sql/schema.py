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
    """One schema change: ``name`` (``m012_...``) and its portable ``statements``;
    ``only``: the databases (:attr:`Dialect.name`) it changes, when not every one (the
    others record it as applied, with nothing to run)."""

    name: str
    statements: Sequence[str]
    only: frozenset[str] | None = None

    def render(self, dialect: Dialect) -> list[str]:
        """The statements in ``dialect``'s words (none where it does not apply)."""
        if self.only is not None and dialect.name not in self.only:
            return []
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
        name="m012_audit_retention",
        statements=[
            # The audit log: one row per change, chained by hash (abi_engine.audit).
            "CREATE TABLE audit_log ("
            " id {bigint} PRIMARY KEY,"
            " at {bigint} NOT NULL,"
            " actor TEXT NOT NULL,"
            " action TEXT NOT NULL,"
            " target_type TEXT NOT NULL,"
            " target_id TEXT,"
            " changes TEXT NOT NULL,"
            " prev_hash TEXT NOT NULL,"
            " hash TEXT NOT NULL)",
            "CREATE INDEX idx_audit_at ON audit_log (at)",
            "CREATE INDEX idx_audit_target ON audit_log (target_type, target_id, id)",
            "CREATE INDEX idx_audit_actor ON audit_log (actor, id)",
            "CREATE INDEX idx_audit_action ON audit_log (action, id)",
            # The chain's head: the last id and hash handed out, locked by each writer,
            # so concurrent writers (other processes too) append one after the other
            # and ids keep increasing after the oldest entries are pruned.
            "CREATE TABLE audit_head ("
            " id {int} PRIMARY KEY,"
            " last_id {bigint} NOT NULL,"
            " last_hash TEXT NOT NULL)",
            "INSERT INTO audit_head (id, last_id, last_hash) VALUES (1, 0, '')",
            # Per-workflow retention of finished executions, in days (NULL: keep them
            # all; workflows made before this migration keep theirs until one is set).
            "ALTER TABLE workflows ADD COLUMN retention_days {int}",
            "CREATE INDEX idx_executions_prune ON executions (workflow_id, completed_at)",
        ],
    )
)

MIGRATIONS.append(
    Migration(
        "m013_flow_control",
        [
            # Reruns (#16): the execution a rerun repeats; a step reused from it.
            "ALTER TABLE executions ADD COLUMN rerun_of TEXT",
            "CREATE INDEX idx_executions_rerun_of ON executions (rerun_of, created_at)"
            " WHERE rerun_of IS NOT NULL",
            "ALTER TABLE execution_steps ADD COLUMN reused_from TEXT",
            # Pause and resume (#16): asked of a running execution, it pauses at the
            # next step boundary; why and since when a queued execution waits.
            "ALTER TABLE executions ADD COLUMN pause_requested {bool} NOT NULL DEFAULT {false}",
            "ALTER TABLE executions ADD COLUMN queued_reason TEXT",
            "ALTER TABLE executions ADD COLUMN queued_since {bigint}",
            "ALTER TABLE workflows ADD COLUMN paused_at {bigint}",
            # Child workflows (#16): the execution whose step started this one.
            "ALTER TABLE executions ADD COLUMN parent_execution_id TEXT",
            "CREATE INDEX idx_executions_parent ON executions (parent_execution_id, created_at)"
            " WHERE parent_execution_id IS NOT NULL",
        ],
    )
)

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

MIGRATIONS.append(
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
    )
)

MIGRATIONS.append(
    # An execution's W3C trace context (traceparent), carried across runs and restarts (#15).
    Migration("m016_trace_context", ["ALTER TABLE executions ADD COLUMN trace_context TEXT"])
)

MIGRATIONS.append(
    Migration(
        "m017_concurrency",
        [
            # Concurrency limits (#16): per workflow, and per key (an expression over the
            # parameters, evaluated when an execution is inserted and kept on it).
            "ALTER TABLE workflows ADD COLUMN max_concurrency {int}",
            "ALTER TABLE workflows ADD COLUMN concurrency_key TEXT",
            "ALTER TABLE workflows ADD COLUMN concurrency_limit {int}",
            "ALTER TABLE executions ADD COLUMN concurrency_key TEXT",
            "CREATE INDEX idx_executions_slots ON executions"
            " (workflow_id, concurrency_key, status)",
            # Those waiting for a slot, by group, in the order they are granted.
            "CREATE INDEX idx_executions_blocked ON executions"
            " (workflow_id, status, concurrency_key, priority, created_at)"
            " WHERE queued_reason = 'concurrency_limit'",
            # Priorities (#16): a schedule's executions' priority, 0 to 9 (higher first).
            "ALTER TABLE schedules ADD COLUMN priority {int} NOT NULL DEFAULT 5",
        ],
    )
)

MIGRATIONS.append(
    Migration(
        "m018_schedules_rrule",
        [
            # Daylight-saving choices of cron schedules (#17): a gap's wall time shifted or
            # skipped; a fold's wall time at its first pass, its last, or both.
            "ALTER TABLE schedules ADD COLUMN on_gap TEXT NOT NULL DEFAULT 'shift'",
            "ALTER TABLE schedules ADD COLUMN on_fold TEXT NOT NULL DEFAULT 'first'",
            # schedule_type rrule: an RFC 5545 rule, and one of wall times left out.
            "ALTER TABLE schedules ADD COLUMN rrule TEXT",
            "ALTER TABLE schedules ADD COLUMN exclude_rrule TEXT",
        ],
    )
)

MIGRATIONS.append(
    Migration(
        "m019_rate_limits_debounce",
        [
            # Rate limits (#16): per workflow, N starts per period, per key (an expression
            # over the parameters, kept on the execution with the time it was granted).
            "ALTER TABLE workflows ADD COLUMN rate_limit_key TEXT",
            "ALTER TABLE workflows ADD COLUMN rate_limit {int}",
            "ALTER TABLE workflows ADD COLUMN rate_period_ms {bigint}",
            "ALTER TABLE executions ADD COLUMN rate_key TEXT",
            "ALTER TABLE executions ADD COLUMN rate_granted_at {bigint}",
            "CREATE INDEX idx_executions_rate ON executions"
            " (workflow_id, rate_key, rate_granted_at) WHERE rate_granted_at IS NOT NULL",
            # Debounce (#16): of executions with one key, only the last of a burst runs.
            "ALTER TABLE workflows ADD COLUMN debounce_key TEXT",
            "ALTER TABLE workflows ADD COLUMN debounce_ms {bigint}",
            "ALTER TABLE executions ADD COLUMN debounce_key TEXT",
            "ALTER TABLE executions ADD COLUMN debounced_by TEXT",
            "CREATE INDEX idx_executions_debounce ON executions"
            " (workflow_id, debounce_key) WHERE queued_reason = 'debounce'",
            # When a queued execution held by a rate limit or a debounce may be granted.
            "ALTER TABLE executions ADD COLUMN not_before {bigint}",
            "CREATE INDEX idx_executions_not_before ON executions (not_before)"
            " WHERE not_before IS NOT NULL",
        ],
    )
)

MIGRATIONS.append(
    Migration(
        "m020_backfill_runs",
        [
            # A schedule's backfill as a durable job (#17): its due times listed once,
            # the position reached, its counters, and the process holding it (a lease).
            "CREATE TABLE schedule_backfills ("
            " id TEXT PRIMARY KEY, schedule_id TEXT NOT NULL, status TEXT NOT NULL,"
            " start_at {bigint} NOT NULL, end_at {bigint} NOT NULL, max_runs {int} NOT NULL,"
            " overlap_policy TEXT NOT NULL, due_times TEXT NOT NULL,"
            " position {int} NOT NULL DEFAULT 0, started {int} NOT NULL DEFAULT 0,"
            " skipped {int} NOT NULL DEFAULT 0, failed {int} NOT NULL DEFAULT 0,"
            " truncated {bool} NOT NULL DEFAULT {false}, last_error TEXT, created_by TEXT,"
            " created_at {bigint} NOT NULL, updated_at {bigint} NOT NULL, finished_at {bigint},"
            " owner TEXT, lease_until {bigint})",
            "CREATE INDEX idx_backfills_schedule ON schedule_backfills (schedule_id)",
            "CREATE INDEX idx_backfills_running ON schedule_backfills (status, lease_until)",
        ],
    )
)

MIGRATIONS.append(
    Migration(
        "m021_backfill_total",
        [
            # How many due times a backfill has (#17), so that a listed one is counted
            # without decoding them; filled for the existing ones from their JSON array
            # of integers (compact: one comma between two due times).
            "ALTER TABLE schedule_backfills ADD COLUMN total {int} NOT NULL DEFAULT 0",
            "UPDATE schedule_backfills SET total = CASE WHEN due_times IN ('[]', 'null') THEN 0"
            " ELSE length(due_times) - length(replace(due_times, ',', '')) + 1 END",
        ],
    )
)

MIGRATIONS.append(
    Migration(
        "m022_lean_execution_indexes",
        [
            # Fewer index entries per execution (#18). Its insert, claim and finish each
            # write a new row version (status is indexed: never a HOT update), and each
            # version gets an entry in every index whose condition it meets.
            # The unfinished executions by status (queued, running, waiting) and by owner:
            # no plan reads either for what the status index (status, created_at, id)
            # does not give as well, the range of queued and running rows. SQLite cannot
            # read the first (no query names its three statuses); the poller's claim
            # read every entry of the second, its lease conditions being ORed.
            "DROP INDEX idx_executions_active",
            "DROP INDEX idx_executions_owner",
            # Retention reads finished executions by completion time: only they have one.
            "DROP INDEX idx_executions_prune",
            "CREATE INDEX idx_executions_prune ON executions (workflow_id, completed_at)"
            " WHERE completed_at IS NOT NULL",
            # The quota counts a user's queued executions: those without a creator (the
            # embedded engine's) need no entry.
            "DROP INDEX idx_executions_queued_owner",
            "CREATE INDEX idx_executions_queued_owner ON executions (created_by)"
            " WHERE status = 'queued' AND created_by IS NOT NULL",
        ],
    )
)

MIGRATIONS.append(
    Migration(
        "m023_pg_speed",
        [
            # PostgreSQL checks a foreign key with a query per inserted row (13 % of the
            # server's instructions for a three-step execution, #18). A step row is only
            # written for an execution its transaction has read and locked: a checkpoint
            # or finish applies only to an execution running under its claim, read
            # FOR UPDATE first; a rerun's reused steps only once its own insert applied.
            # Executions are only deleted by retention, which locks them and deletes their
            # steps first in the same transaction. SQLite keeps its key (it would need the
            # table rebuilt to drop it, and its check is an in-process index probe).
            "ALTER TABLE execution_steps DROP CONSTRAINT IF EXISTS"
            " execution_steps_execution_id_fkey",
        ],
        only=frozenset({"postgresql"}),
    )
)
