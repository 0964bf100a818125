"""Ordered schema migrations of the PostgreSQL store.

The schema mirrors the SQLite one (:mod:`abi_engine.storage.migrations`) table
for table and column for column, so the same row types and codec serve both:
times are ``BIGINT`` epoch milliseconds, JSON documents are ``TEXT`` (kept
byte for byte: a webhook body is sent exactly as stored), flags are
``BOOLEAN``, positions are identity columns.

Each migration is a list of statements, applied once, in order, inside the
transaction that records it in ``schema_migrations``. The whole run holds a
transaction-level advisory lock, so two processes starting at once on a fresh
database do not race: the second waits, then finds every migration applied.
``M001`` to ``M011`` were written for PostgreSQL alone; the ones after them are
written once for every store (:mod:`abi_engine.storage.sql.schema`) and rendered
here in PostgreSQL's words. Never edit one that has shipped.
"""

from __future__ import annotations

import zlib
from typing import Any

from abi_engine.storage.sql import schema
from abi_engine.storage.sql.dialect import POSTGRES

__all__ = ["MIGRATIONS", "advisory_key", "migrate"]

_LIVE = "WHERE deleted_at IS NULL"

M001_CORE = [
    "CREATE TABLE users (id TEXT PRIMARY KEY, created_at BIGINT NOT NULL)",
    """CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        user_id TEXT NOT NULL REFERENCES users (id),
        scopes TEXT NOT NULL,
        name TEXT,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    )""",
    "CREATE UNIQUE INDEX idx_tokens_hash ON tokens (hash)",
    # Names and integration ids sort byte-wise (as in SQLite), whatever the database's locale.
    """CREATE TABLE workflows (
        id TEXT PRIMARY KEY,
        name TEXT COLLATE "C" NOT NULL,
        description TEXT,
        type TEXT NOT NULL,
        status TEXT NOT NULL,
        department TEXT,
        configuration TEXT NOT NULL,
        integrations TEXT,
        metadata TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        activated_at BIGINT,
        deactivated_at BIGINT,
        created_by TEXT,
        deleted_at BIGINT,
        runs_total BIGINT NOT NULL DEFAULT 0,
        runs_success BIGINT NOT NULL DEFAULT 0,
        runs_failed BIGINT NOT NULL DEFAULT 0,
        duration_total_ms BIGINT NOT NULL DEFAULT 0
    )""",
    # Partial indexes on live rows: one per sort key, one per filter with the default sort.
    *(
        f"CREATE INDEX idx_workflows_{name} ON workflows ({columns}) {_LIVE}"
        for name, columns in {
            "created": "created_at, id",
            "updated": "updated_at, id",
            "name": "name, id",
            "status": "status, created_at, id",
            "type": "type, created_at, id",
            "department": "department, created_at, id",
        }.items()
    ),
    """CREATE TABLE integrations (
        id TEXT COLLATE "C" PRIMARY KEY,
        provider TEXT NOT NULL,
        config TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )""",
    """CREATE TABLE events (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL,
        type TEXT NOT NULL,
        timestamp BIGINT NOT NULL,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX idx_events_type ON events (type, seq)",
]

M002_EXECUTIONS = [
    """CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        workflow_type TEXT NOT NULL,
        status TEXT NOT NULL,
        parameters TEXT NOT NULL,
        configuration TEXT NOT NULL,
        plan TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        started_at BIGINT,
        completed_at BIGINT,
        duration_ms BIGINT,
        result TEXT,
        error TEXT,
        callback_url TEXT,
        callback_secret TEXT,
        schedule_id TEXT,
        created_by TEXT,
        idempotency_key TEXT,
        priority INTEGER NOT NULL DEFAULT 1,
        timeout_at BIGINT,
        owner TEXT,
        lease_until BIGINT,
        waiting_for TEXT,
        wake_at BIGINT
    )""",
    "CREATE INDEX idx_executions_created ON executions (created_at, id)",
    "CREATE INDEX idx_executions_workflow ON executions (workflow_id, created_at, id)",
    "CREATE INDEX idx_executions_status ON executions (status, created_at, id)",
    "CREATE UNIQUE INDEX idx_executions_idempotency ON executions"
    " (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL",
    # The runtime's work list: only unfinished executions are in these indexes.
    "CREATE INDEX idx_executions_active ON executions (status, priority, created_at)"
    " WHERE status IN ('queued', 'running', 'waiting')",
    "CREATE INDEX idx_executions_owner ON executions (owner, lease_until)"
    " WHERE status IN ('queued', 'running')",
    "CREATE INDEX idx_executions_wake ON executions (wake_at) WHERE status = 'waiting'",
    """CREATE TABLE execution_steps (
        execution_id TEXT NOT NULL REFERENCES executions (id),
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at BIGINT,
        completed_at BIGINT,
        duration_ms BIGINT,
        attempts INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        error TEXT,
        PRIMARY KEY (execution_id, idx)
    )""",
    """CREATE TABLE execution_signals (
        execution_id TEXT NOT NULL REFERENCES executions (id),
        name TEXT NOT NULL,
        payload TEXT,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (execution_id, name)
    )""",
]

M003_SCHEDULES = [
    """CREATE TABLE schedules (
        id TEXT PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT,
        schedule_type TEXT NOT NULL,
        cron_expression TEXT,
        interval_value BIGINT,
        interval_unit TEXT,
        execution_time BIGINT,
        anchor_at BIGINT NOT NULL,
        timezone TEXT NOT NULL,
        parameters TEXT NOT NULL,
        enabled BOOLEAN NOT NULL,
        next_due BIGINT,
        last_execution_id TEXT,
        misfire_policy TEXT NOT NULL,
        misfire_grace_seconds DOUBLE PRECISION NOT NULL,
        catch_up_limit INTEGER NOT NULL,
        overlap_policy TEXT NOT NULL,
        pending_runs INTEGER NOT NULL DEFAULT 0,
        completed BOOLEAN NOT NULL DEFAULT FALSE,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        created_by TEXT
    )""",
    # The scheduler's tick reads only what is due: a range scan of this index.
    "CREATE INDEX idx_schedules_due ON schedules (next_due) WHERE next_due IS NOT NULL",
    "CREATE INDEX idx_schedules_created ON schedules (created_at, id)",
    "CREATE INDEX idx_schedules_workflow ON schedules (workflow_id, created_at, id)",
    "CREATE INDEX idx_schedules_enabled ON schedules (enabled, created_at, id)",
    "CREATE INDEX idx_schedules_pending ON schedules (last_execution_id) WHERE pending_runs > 0",
    """CREATE TABLE schedule_history (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        schedule_id TEXT NOT NULL,
        due_at BIGINT,
        recorded_at BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        execution_id TEXT,
        detail TEXT
    )""",
    "CREATE INDEX idx_schedule_history ON schedule_history (schedule_id, seq)",
]

M004_WEBHOOKS = [
    """CREATE TABLE webhooks (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        events TEXT NOT NULL,
        description TEXT,
        secret TEXT NOT NULL,
        previous_secret TEXT,
        previous_secret_until BIGINT,
        enabled BOOLEAN NOT NULL DEFAULT TRUE,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        created_by TEXT
    )""",
    "CREATE INDEX idx_webhooks_created ON webhooks (created_at, id)",
    """CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        target TEXT NOT NULL,
        webhook_id TEXT,
        execution_id TEXT,
        event_seq BIGINT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        status TEXT NOT NULL,
        tries INTEGER NOT NULL DEFAULT 0,
        attempt_count INTEGER NOT NULL DEFAULT 0,
        next_attempt_at BIGINT,
        lease_owner TEXT,
        lease_until BIGINT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )""",
    "CREATE UNIQUE INDEX idx_deliveries_event_target ON webhook_deliveries (event_seq, target)",
    "CREATE INDEX idx_deliveries_due ON webhook_deliveries (next_attempt_at)"
    " WHERE status = 'pending'",
    "CREATE INDEX idx_deliveries_webhook ON webhook_deliveries (webhook_id, event_seq)"
    " WHERE webhook_id IS NOT NULL",
    "CREATE INDEX idx_deliveries_execution ON webhook_deliveries (execution_id)"
    " WHERE execution_id IS NOT NULL",
    "CREATE INDEX idx_deliveries_owner ON webhook_deliveries (lease_owner)"
    " WHERE lease_owner IS NOT NULL",
    "CREATE INDEX idx_deliveries_updated ON webhook_deliveries (updated_at)",
    """CREATE TABLE webhook_attempts (
        delivery_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,
        status_code INTEGER,
        duration_ms BIGINT NOT NULL,
        error TEXT,
        response_body TEXT,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (delivery_id, attempt)
    )""",
    "CREATE TABLE webhook_cursor (name TEXT PRIMARY KEY, seq BIGINT NOT NULL)",
    "INSERT INTO webhook_cursor (name, seq) VALUES ('deliveries', 0)",
]

# Outbox rows may hold packed execution events by reference (storage/_refs.py, as
# SQLite's m005_events_by_reference); a delivery names its event by position and
# index within the row; the unused (type, seq) index goes.
M005_EVENTS_BY_REFERENCE = [
    "ALTER TABLE events ALTER COLUMN data DROP NOT NULL",
    "ALTER TABLE events ADD COLUMN refs TEXT",
    "ALTER TABLE events ADD CONSTRAINT events_data_or_refs"
    " CHECK (data IS NOT NULL OR refs IS NOT NULL)",
    "DROP INDEX idx_events_type",
    "ALTER TABLE webhook_deliveries ADD COLUMN event_index INTEGER NOT NULL DEFAULT 0",
    "DROP INDEX idx_deliveries_event_target",
    "CREATE UNIQUE INDEX idx_deliveries_event_target"
    " ON webhook_deliveries (event_seq, event_index, target)",
]

# A user's live tokens, newest first (GET /tokens), read from an index.
M006_TOKENS_BY_USER = [
    "CREATE INDEX idx_tokens_user ON tokens (user_id, created_at, id) WHERE revoked_at IS NULL",
]

# A token made by the self-service operation names its parent (NULL for older tokens and
# the command line's): revoking a token revokes its descendants, found from an index.
M007_TOKEN_LINEAGE = [
    "ALTER TABLE tokens ADD COLUMN parent_id TEXT REFERENCES tokens (id)",
    "CREATE INDEX idx_tokens_parent ON tokens (parent_id) WHERE parent_id IS NOT NULL",
]

# Claim tokens and schedule versions (as SQLite's m008_fencing): every ownership change
# of an execution is a compare-and-set on its claim token; a schedule write that read an
# older version loses and re-reads.
M008_FENCING = [
    "ALTER TABLE executions ADD COLUMN claim BIGINT",
    "ALTER TABLE schedules ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
]

# Delivery claim tokens, attempts numbered once, and the outbox positions during which each
# subscription was enabled with one list of event types (as SQLite's
# m009_webhook_claims_and_periods); an enabled subscription of before gets one open period
# from the last event older than its creation.
M009_WEBHOOK_CLAIMS_AND_PERIODS = [
    "ALTER TABLE webhook_deliveries ADD COLUMN claim BIGINT",
    "ALTER TABLE webhook_attempts ADD COLUMN claim BIGINT",
    "CREATE UNIQUE INDEX idx_attempts_claim ON webhook_attempts (delivery_id, claim)"
    " WHERE claim IS NOT NULL",
    """CREATE TABLE webhook_periods (
        webhook_id TEXT NOT NULL,
        after_seq BIGINT NOT NULL,
        until_seq BIGINT,
        events TEXT NOT NULL
    )""",
    "CREATE INDEX idx_webhook_periods ON webhook_periods (webhook_id, after_seq)",
    "INSERT INTO webhook_periods (webhook_id, after_seq, until_seq, events)"
    " SELECT w.id, coalesce((SELECT max(e.seq) FROM events e"
    " WHERE e.timestamp < w.created_at), 0), NULL, w.events FROM webhooks w WHERE w.enabled",
]

# Indexes of what one user holds, for the engine's limits per user (as SQLite's
# m010_owner_indexes): schedules and webhooks by creator, queued executions by creator.
M010_OWNER_INDEXES = [
    "CREATE INDEX idx_schedules_owner ON schedules (created_by)",
    "CREATE INDEX idx_webhooks_owner ON webhooks (created_by)",
    "CREATE INDEX idx_executions_queued_owner ON executions (created_by) WHERE status = 'queued'",
]

# Notification templates, failed firings of schedules, and the indexes of the execution
# filters by schedule and by creator (as SQLite's m011_templates_and_failures).
M011_TEMPLATES_AND_FAILURES = [
    """CREATE TABLE notification_templates (
        id TEXT COLLATE "C" PRIMARY KEY,
        subject TEXT,
        body TEXT NOT NULL,
        description TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )""",
    "ALTER TABLE schedules ADD COLUMN failed_firings INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE schedules ADD COLUMN last_failure TEXT",
    "CREATE INDEX idx_executions_schedule ON executions (schedule_id, created_at, id)"
    " WHERE schedule_id IS NOT NULL",
    "CREATE INDEX idx_executions_creator ON executions (created_by, created_at, id)"
    " WHERE created_by IS NOT NULL",
]

#: ``(name, statements)`` in order; the version of a migration is its position from 1.
MIGRATIONS: list[tuple[str, list[str]]] = [
    ("m001_core", M001_CORE),
    ("m002_executions", M002_EXECUTIONS),
    ("m003_schedules", M003_SCHEDULES),
    ("m004_webhooks", M004_WEBHOOKS),
    ("m005_events_by_reference", M005_EVENTS_BY_REFERENCE),
    ("m006_tokens_by_user", M006_TOKENS_BY_USER),
    ("m007_token_lineage", M007_TOKEN_LINEAGE),
    ("m008_fencing", M008_FENCING),
    ("m009_webhook_claims_and_periods", M009_WEBHOOK_CLAIMS_AND_PERIODS),
    ("m010_owner_indexes", M010_OWNER_INDEXES),
    ("m011_templates_and_failures", M011_TEMPLATES_AND_FAILURES),
    *((m.name, m.render(POSTGRES)) for m in schema.MIGRATIONS),
]


def advisory_key(purpose: str, schema: str) -> int:
    """A stable signed 64-bit advisory lock key for ``purpose`` in ``schema``."""
    text = f"abi_engine:{purpose}:{schema}".encode()
    value = (zlib.crc32(text) << 32) | zlib.crc32(text[::-1])
    return value - (1 << 64) if value >= 1 << 63 else value


def migrate(conn: Any, schema: str) -> int:
    """Apply pending migrations on ``conn`` (autocommit) in one locked transaction.

    Returns the schema version afterwards.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(?)", (advisory_key("migrate", schema),))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        current = int(row[0])
        for version, (name, statements) in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at)"
                " VALUES (?, ?, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
                (version, name),
            )
            current = version
        return current
