"""Ordered schema migrations of the SQLite store.

Each migration is a function of a :class:`sqlite_utils.Database`, applied once,
in order, inside the transaction that records it in ``schema_migrations``.
``m001`` to ``m011`` were written for SQLite alone; the ones after them are
written once for every store (:mod:`abi_engine.storage.sql.schema`) and
rendered here in SQLite's words. Never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

from abi_engine.storage.sql import schema
from abi_engine.storage.sql.dialect import SQLITE

__all__ = ["MIGRATIONS"]

Migration = Callable[[sqlite_utils.Database], None]

_LIVE = "WHERE deleted_at IS NULL"


def m001_core(db: sqlite_utils.Database) -> None:
    """Users, tokens, workflows, integrations and the event outbox."""
    db["users"].create({"id": str, "created_at": int}, pk="id")  # type: ignore[union-attr]
    db["tokens"].create(  # type: ignore[union-attr]
        {
            "id": str,
            "hash": str,
            "user_id": str,
            "scopes": str,
            "name": str,
            "created_at": int,
            "revoked_at": int,
        },
        pk="id",
        not_null={"hash", "user_id", "scopes", "created_at"},
        foreign_keys=[("user_id", "users", "id")],
    )
    db["tokens"].create_index(["hash"], unique=True)  # type: ignore[union-attr]
    db["workflows"].create(  # type: ignore[union-attr]
        {
            "id": str,
            "name": str,
            "description": str,
            "type": str,
            "status": str,
            "department": str,
            "configuration": str,
            "integrations": str,
            "metadata": str,
            "created_at": int,
            "updated_at": int,
            "activated_at": int,
            "deactivated_at": int,
            "created_by": str,
            "deleted_at": int,
            "runs_total": int,
            "runs_success": int,
            "runs_failed": int,
            "duration_total_ms": int,
        },
        pk="id",
        not_null={"name", "type", "status", "configuration", "created_at", "updated_at"},
        defaults={"runs_total": 0, "runs_success": 0, "runs_failed": 0, "duration_total_ms": 0},
    )
    # Partial indexes on live rows: one per sort key, and one per filter with the
    # default sort, so page 1 of a filtered list is an index range scan.
    for name, columns in {
        "created": "created_at, id",
        "updated": "updated_at, id",
        "name": "name, id",
        "status": "status, created_at, id",
        "type": "type, created_at, id",
        "department": "department, created_at, id",
    }.items():
        db.execute(f"CREATE INDEX idx_workflows_{name} ON workflows ({columns}) {_LIVE}")
    db["integrations"].create(  # type: ignore[union-attr]
        {"id": str, "provider": str, "config": str, "created_at": int, "updated_at": int},
        pk="id",
        not_null={"provider", "config", "created_at", "updated_at"},
    )
    db.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,"
        " type TEXT NOT NULL, timestamp INTEGER NOT NULL, data TEXT NOT NULL)"
    )
    db["events"].create_index(["type", "seq"])  # type: ignore[union-attr]


def m002_executions(db: sqlite_utils.Database) -> None:
    """Executions, their checkpointed steps and their signals."""
    db.execute(
        """CREATE TABLE executions (
            id TEXT PRIMARY KEY,
            workflow_id TEXT NOT NULL,
            workflow_type TEXT NOT NULL,
            status TEXT NOT NULL,
            parameters TEXT NOT NULL,
            configuration TEXT NOT NULL,
            plan TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            started_at INTEGER,
            completed_at INTEGER,
            duration_ms INTEGER,
            result TEXT,
            error TEXT,
            callback_url TEXT,
            callback_secret TEXT,
            schedule_id TEXT,
            created_by TEXT,
            idempotency_key TEXT,
            priority INTEGER NOT NULL DEFAULT 1,
            timeout_at INTEGER,
            owner TEXT,
            lease_until INTEGER,
            waiting_for TEXT,
            wake_at INTEGER
        )"""
    )
    db.execute("CREATE INDEX idx_executions_created ON executions (created_at, id)")
    db.execute("CREATE INDEX idx_executions_workflow ON executions (workflow_id, created_at, id)")
    db.execute("CREATE INDEX idx_executions_status ON executions (status, created_at, id)")
    db.execute(
        "CREATE UNIQUE INDEX idx_executions_idempotency ON executions"
        " (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL"
    )
    # The runtime's work list: only unfinished executions are in this index.
    db.execute(
        "CREATE INDEX idx_executions_active ON executions (status, lease_until)"
        " WHERE status IN ('queued', 'running', 'waiting')"
    )
    db.execute(
        "CREATE INDEX idx_executions_owner ON executions (owner, lease_until)"
        " WHERE status IN ('queued', 'running')"
    )
    db.execute("CREATE INDEX idx_executions_wake ON executions (wake_at) WHERE status = 'waiting'")
    db.execute(
        """CREATE TABLE execution_steps (
            execution_id TEXT NOT NULL REFERENCES executions (id),
            idx INTEGER NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            started_at INTEGER,
            completed_at INTEGER,
            duration_ms INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            result TEXT,
            error TEXT,
            PRIMARY KEY (execution_id, idx)
        ) WITHOUT ROWID"""
    )
    db.execute(
        """CREATE TABLE execution_signals (
            execution_id TEXT NOT NULL REFERENCES executions (id),
            name TEXT NOT NULL,
            payload TEXT,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (execution_id, name)
        ) WITHOUT ROWID"""
    )


def m003_schedules(db: sqlite_utils.Database) -> None:
    """Schedules (with their indexed next due time) and their firing history."""
    db.execute(
        """CREATE TABLE schedules (
            id TEXT PRIMARY KEY,
            workflow_id TEXT NOT NULL,
            name TEXT NOT NULL,
            description TEXT,
            schedule_type TEXT NOT NULL,
            cron_expression TEXT,
            interval_value INTEGER,
            interval_unit TEXT,
            execution_time INTEGER,
            anchor_at INTEGER NOT NULL,
            timezone TEXT NOT NULL,
            parameters TEXT NOT NULL,
            enabled INTEGER NOT NULL,
            next_due INTEGER,
            last_execution_id TEXT,
            misfire_policy TEXT NOT NULL,
            misfire_grace_seconds REAL NOT NULL,
            catch_up_limit INTEGER NOT NULL,
            overlap_policy TEXT NOT NULL,
            pending_runs INTEGER NOT NULL DEFAULT 0,
            completed INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            created_by TEXT
        )"""
    )
    # The scheduler's tick reads only what is due: a range scan of this index.
    db.execute("CREATE INDEX idx_schedules_due ON schedules (next_due) WHERE next_due IS NOT NULL")
    db.execute("CREATE INDEX idx_schedules_created ON schedules (created_at, id)")
    db.execute("CREATE INDEX idx_schedules_workflow ON schedules (workflow_id, created_at, id)")
    db.execute("CREATE INDEX idx_schedules_enabled ON schedules (enabled, created_at, id)")
    db.execute(
        "CREATE INDEX idx_schedules_pending ON schedules (last_execution_id) WHERE pending_runs > 0"
    )
    db.execute(
        """CREATE TABLE schedule_history (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            schedule_id TEXT NOT NULL,
            due_at INTEGER,
            recorded_at INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            execution_id TEXT,
            detail TEXT
        )"""
    )
    db.execute("CREATE INDEX idx_schedule_history ON schedule_history (schedule_id, seq)")


def m004_webhooks(db: sqlite_utils.Database) -> None:
    """Webhook subscriptions, their deliveries and attempts, and the outbox cursor.

    A delivery is one outbox event for one target (a webhook, or ``'callback'``
    for an execution's callback URL); the fan-out creates them in the
    transaction that advances ``webhook_cursor``, and workers claim the due
    ones under a lease.
    """
    db.execute(
        """CREATE TABLE webhooks (
            id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            events TEXT NOT NULL,
            description TEXT,
            secret TEXT NOT NULL,
            previous_secret TEXT,
            previous_secret_until INTEGER,
            enabled INTEGER NOT NULL DEFAULT 1,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            created_by TEXT
        )"""
    )
    db.execute("CREATE INDEX idx_webhooks_created ON webhooks (created_at, id)")
    db.execute(
        """CREATE TABLE webhook_deliveries (
            id TEXT PRIMARY KEY,
            target TEXT NOT NULL,
            webhook_id TEXT,
            execution_id TEXT,
            event_seq INTEGER NOT NULL,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            status TEXT NOT NULL,
            tries INTEGER NOT NULL DEFAULT 0,
            attempt_count INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER,
            lease_owner TEXT,
            lease_until INTEGER,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        )"""
    )
    db.execute(
        "CREATE UNIQUE INDEX idx_deliveries_event_target ON webhook_deliveries (event_seq, target)"
    )
    db.execute(
        "CREATE INDEX idx_deliveries_due ON webhook_deliveries (next_attempt_at)"
        " WHERE status = 'pending'"
    )
    db.execute(
        "CREATE INDEX idx_deliveries_webhook ON webhook_deliveries (webhook_id, event_seq)"
        " WHERE webhook_id IS NOT NULL"
    )
    db.execute(
        "CREATE INDEX idx_deliveries_execution ON webhook_deliveries (execution_id)"
        " WHERE execution_id IS NOT NULL"
    )
    db.execute(
        "CREATE INDEX idx_deliveries_owner ON webhook_deliveries (lease_owner)"
        " WHERE lease_owner IS NOT NULL"
    )
    db.execute("CREATE INDEX idx_deliveries_updated ON webhook_deliveries (updated_at)")
    db.execute(
        """CREATE TABLE webhook_attempts (
            delivery_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            status TEXT NOT NULL,
            status_code INTEGER,
            duration_ms INTEGER NOT NULL,
            error TEXT,
            response_body TEXT,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (delivery_id, attempt)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE TABLE webhook_cursor (name TEXT PRIMARY KEY, seq INTEGER NOT NULL)")
    db.execute("INSERT INTO webhook_cursor (name, seq) VALUES ('deliveries', 0)")


def m005_events_by_reference(db: sqlite_utils.Database) -> None:
    """Outbox rows may hold packed execution events by reference (``storage/_refs.py``).

    ``events`` is rebuilt (SQLite cannot relax ``NOT NULL``) keeping every row
    and its position; the ``AUTOINCREMENT`` counter carries over, so no
    position is ever reused; the unused ``(type, seq)`` index is not rebuilt.
    A delivery names its event by position and index within the row.
    """
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    last = row[0] if row else 0
    db.execute(
        "CREATE TABLE events_new (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,"
        " type TEXT NOT NULL, timestamp INTEGER NOT NULL, data TEXT, refs TEXT,"
        " CHECK (data IS NOT NULL OR refs IS NOT NULL))"
    )
    db.execute(
        "INSERT INTO events_new (seq, id, type, timestamp, data)"
        " SELECT seq, id, type, timestamp, data FROM events ORDER BY seq"
    )
    db.execute("DROP TABLE events")
    db.execute("ALTER TABLE events_new RENAME TO events")
    db.execute("DELETE FROM sqlite_sequence WHERE name = 'events'")
    db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (last,))
    db.execute("ALTER TABLE webhook_deliveries ADD COLUMN event_index INTEGER NOT NULL DEFAULT 0")
    db.execute("DROP INDEX idx_deliveries_event_target")
    db.execute(
        "CREATE UNIQUE INDEX idx_deliveries_event_target"
        " ON webhook_deliveries (event_seq, event_index, target)"
    )


def m006_tokens_by_user(db: sqlite_utils.Database) -> None:
    """A user's live tokens, newest first (``GET /tokens``), read from an index."""
    db.execute(
        "CREATE INDEX idx_tokens_user ON tokens (user_id, created_at, id) WHERE revoked_at IS NULL"
    )


def m007_token_lineage(db: sqlite_utils.Database) -> None:
    """Token lineage: a token made by the self-service operation names its parent.

    Revoking a token revokes its descendants, found from an index.
    ``parent_id`` is ``NULL`` for the tokens made before, and for those made by
    the command line or ``engine.tokens.create_token``.
    """
    db.execute("ALTER TABLE tokens ADD COLUMN parent_id TEXT REFERENCES tokens (id)")
    db.execute("CREATE INDEX idx_tokens_parent ON tokens (parent_id) WHERE parent_id IS NOT NULL")


def m008_fencing(db: sqlite_utils.Database) -> None:
    """Claim tokens and schedule versions: every ownership change is a compare-and-set.

    ``executions.claim`` is the fencing token of the claim that holds the
    execution (``NULL`` until one does; kept after it waits or ends, so a
    retried write recognises its own effect). ``schedules.version`` counts
    writes of a schedule's definition and due time; a write that read an
    older version loses and re-reads.
    """
    db.execute("ALTER TABLE executions ADD COLUMN claim INTEGER")
    db.execute("ALTER TABLE schedules ADD COLUMN version INTEGER NOT NULL DEFAULT 0")


def m009_webhook_claims_and_periods(db: sqlite_utils.Database) -> None:
    """Delivery claim tokens, attempts numbered once, and when each subscription listened.

    ``webhook_deliveries.claim`` is the fencing token of the lease that holds a
    delivery (``NULL`` while unleased): recording an attempt moves the delivery
    on only while that claim still holds it. ``webhook_attempts.claim`` names
    the claim an attempt was made under, unique per delivery, so a retried
    record recognises its own attempt. ``webhook_periods`` keeps, per
    subscription, the outbox positions during which it was enabled with one
    list of event types (``after_seq < seq <= until_seq``; ``until_seq`` is
    ``NULL`` while the period lasts): the fan-out sends an event to the
    subscriptions that asked for it when it happened. An enabled subscription
    of before gets one open period from the last event older than its
    creation.
    """
    db.execute("ALTER TABLE webhook_deliveries ADD COLUMN claim INTEGER")
    db.execute("ALTER TABLE webhook_attempts ADD COLUMN claim INTEGER")
    db.execute(
        "CREATE UNIQUE INDEX idx_attempts_claim ON webhook_attempts (delivery_id, claim)"
        " WHERE claim IS NOT NULL"
    )
    db.execute(
        """CREATE TABLE webhook_periods (
            webhook_id TEXT NOT NULL,
            after_seq INTEGER NOT NULL,
            until_seq INTEGER,
            events TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX idx_webhook_periods ON webhook_periods (webhook_id, after_seq)")
    db.execute(
        "INSERT INTO webhook_periods (webhook_id, after_seq, until_seq, events)"
        " SELECT w.id, coalesce((SELECT max(e.seq) FROM events e"
        " WHERE e.timestamp < w.created_at), 0), NULL, w.events FROM webhooks w"
        " WHERE w.enabled = 1"
    )


def m010_owner_indexes(db: sqlite_utils.Database) -> None:
    """Indexes of what one user holds, for the engine's limits per user.

    Schedules and webhooks by creator (``created_by``), and queued executions
    by creator (a partial index: only ``queued`` rows are in it).
    """
    db.execute("CREATE INDEX idx_schedules_owner ON schedules (created_by)")
    db.execute("CREATE INDEX idx_webhooks_owner ON webhooks (created_by)")
    db.execute(
        "CREATE INDEX idx_executions_queued_owner ON executions (created_by)"
        " WHERE status = 'queued'"
    )


def m011_templates_and_failures(db: sqlite_utils.Database) -> None:
    """Notification templates, failed firings of schedules, execution filters.

    ``notification_templates`` holds the templates managed over the API (by
    id; ``subject`` may be ``NULL``). ``schedules.failed_firings`` counts the
    due times at which the schedule could not start an execution, and
    ``schedules.last_failure`` keeps the last such failure (JSON: ``at``,
    ``due_at``, ``code``, ``message``). Two indexes serve the listing of
    executions by schedule and by creator, newest first.
    """
    db.execute(
        """CREATE TABLE notification_templates (
            id TEXT PRIMARY KEY,
            subject TEXT,
            body TEXT NOT NULL,
            description TEXT,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        )"""
    )
    db.execute("ALTER TABLE schedules ADD COLUMN failed_firings INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE schedules ADD COLUMN last_failure TEXT")
    db.execute(
        "CREATE INDEX idx_executions_schedule ON executions (schedule_id, created_at, id)"
        " WHERE schedule_id IS NOT NULL"
    )
    db.execute(
        "CREATE INDEX idx_executions_creator ON executions (created_by, created_at, id)"
        " WHERE created_by IS NOT NULL"
    )


MIGRATIONS: list[Migration] = [
    m001_core,
    m002_executions,
    m003_schedules,
    m004_webhooks,
    m005_events_by_reference,
    m006_tokens_by_user,
    m007_token_lineage,
    m008_fencing,
    m009_webhook_claims_and_periods,
    m010_owner_indexes,
    m011_templates_and_failures,
    *(m.applier(SQLITE) for m in schema.MIGRATIONS),
]
