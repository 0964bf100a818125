"""The SQL store both backends are (events, users and tokens, workflows, integrations
here; executions, schedules, webhooks and templates mixed in from their modules).

:class:`SQLStore` issues every statement once, in the shared SQL (``?``
placeholders, :mod:`~abi_engine.storage.sql.dialect` for what differs). A
backend subclasses it and provides the connections and transactions:

- ``_read()``: a context manager giving a connection for reads;
- ``write(fn)``: ``fn(conn)`` run in one write transaction, its result returned
  (a backend may run ``fn`` again after a deadlock: ``fn`` has no effect outside
  the transaction);
- connections whose ``execute`` and ``executemany`` return cursors
  (``fetchone``, ``fetchall``, ``rowcount``, iteration), as ``sqlite3`` does;
- ``_insert_executions(conn, records)``: how its driver inserts a batch of
  execution rows and tells inserted, refused and already there apart
  (:meth:`~abi_engine.storage.sql.executions.ExecutionsMixin._insert_executions`);

and overrides the hooks where its database needs more than the shared SQL:
:meth:`SQLStore._lock_outbox`, :meth:`SQLStore._lock_subscriptions`,
:meth:`SQLStore._hold_subscriptions`, :meth:`SQLStore._lock_user_tokens` (each
nothing where write transactions are serialized, as on SQLite).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ClassVar, Literal, TypeVar

from abi_engine.events import Event, ExecutionEventRef, OutboxEvent, resolve
from abi_engine.models import Integration, Token, User, Workflow
from abi_engine.storage._codec import dumps, from_ms, loads, to_ms
from abi_engine.storage._refs import PACKED_TYPE, pack, unpack
from abi_engine.storage._rows import (
    _TOKEN_COLUMNS,
    _WORKFLOW_COLUMNS,
    _concurrency,
    _department,
    _row_to_token,
    _row_to_workflow,
    _shaping,
    _token_tree,
)
from abi_engine.storage.base import (
    OWNED_ROWS,
    OwnedKind,
    StoredEvent,
    TokenLimitReached,
    WorkflowQuery,
)
from abi_engine.storage.sql.audit import AuditMixin
from abi_engine.storage.sql.backfills import BackfillsMixin
from abi_engine.storage.sql.dialect import NEXT_VERSION, Conn, Dialect
from abi_engine.storage.sql.executions import ExecutionsMixin
from abi_engine.storage.sql.retention import RetentionMixin
from abi_engine.storage.sql.schedules import SchedulesMixin
from abi_engine.storage.sql.templates import TemplatesMixin
from abi_engine.storage.sql.triggers import TriggersMixin
from abi_engine.storage.sql.webhooks import WebhooksMixin, subscribed_types

__all__ = ["SQLStore"]

T = TypeVar("T")


_INTEGRATION_COLUMNS = "id, provider, config, created_at, updated_at"


def _integration(row: Sequence[Any]) -> Integration:
    return Integration(
        id=row[0],
        provider=row[1],
        config=loads(row[2]),
        created_at=from_ms(row[3]),  # type: ignore[arg-type]
        updated_at=from_ms(row[4]),  # type: ignore[arg-type]
    )


def _total(row: Sequence[Any] | None) -> int:
    return int(row[0]) if row else 0


class SQLStore(
    ExecutionsMixin,
    SchedulesMixin,
    WebhooksMixin,
    TemplatesMixin,
    AuditMixin,
    RetentionMixin,
    TriggersMixin,
    BackfillsMixin,
):
    """The shared part of the SQL stores (see the module's docstring)."""

    #: The SQL fragments of the backend's database.
    dialect: ClassVar[Dialect]

    # Provided by the backend.
    _read: Callable[[], AbstractContextManager[Conn]]
    write: Callable[[Callable[[Conn], Any]], Any]

    # -- hooks -------------------------------------------------------------------------

    def _lock_outbox(self, conn: Conn) -> None:
        """Called just before events are inserted (the transaction's last statement)."""

    def _event_types(self, conn: Conn) -> set[str]:
        """The subscribed event types, for deciding which deferred events are written
        (no subscription change commits between this read and the events' commit)."""
        self._hold_subscriptions(conn)
        return subscribed_types(conn)

    def _lock_subscriptions(self, conn: Conn) -> None:
        """Called first by a change of subscriptions: wait for the transactions that
        hold them (:meth:`_hold_subscriptions`), and hold off new ones, until commit."""

    def _hold_subscriptions(self, conn: Conn) -> None:
        """No change of subscriptions commits until this transaction does."""

    @staticmethod
    def _lock_user_tokens(
        conn: Conn, user_id: str, mode: Literal["SHARE", "NO KEY UPDATE"]
    ) -> None:
        """Hold off the user's other token changes (``SHARE``: a mint from a token;
        ``NO KEY UPDATE``: a revocation or a capped mint) until this commits."""

    # -- schema --------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._read() as conn:
            return _total(conn.execute("SELECT max(version) FROM schema_migrations").fetchone())

    # -- events --------------------------------------------------------------------------

    def _insert_events(self, conn: Conn, events: Sequence[OutboxEvent]) -> None:
        """Append ``events`` to the outbox (deferred ones only when subscribed to)."""
        if not events:
            return
        rows: list[tuple[Any, ...]] = []
        refs: list[ExecutionEventRef] = []
        for e in resolve(events, lambda: self._event_types(conn)):
            if isinstance(e, ExecutionEventRef):
                refs.append(e)
            else:
                rows.append((e.id, e.type, to_ms(e.timestamp), dumps(e.data), None))
        if refs:  # one row for all of them (storage/_refs.py)
            first, at, text = pack(refs)
            rows.append((first, PACKED_TYPE, at, None, text))
        if not rows:  # only deferred events, none wanted: no outbox position to take
            return
        self._lock_outbox(conn)
        conn.executemany(
            "INSERT INTO events (id, type, timestamp, data, refs) VALUES (?, ?, ?, ?, ?)", rows
        )

    def insert_events(self, events: Sequence[OutboxEvent]) -> None:
        if events:
            self.write(lambda conn: self._insert_events(conn, events))

    def events_after(self, seq: int, limit: int = 100) -> list[StoredEvent]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT seq, id, type, timestamp, data, refs FROM events"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        found: list[StoredEvent] = []
        for position, event_id, kind, timestamp, data, refs in rows:
            if refs is not None:
                found.extend(StoredEvent(seq=position, event=r) for r in unpack(event_id, refs))
            else:
                at = from_ms(timestamp)
                assert at is not None
                event = Event(id=event_id, type=kind, timestamp=at, data=loads(data))
                found.append(StoredEvent(seq=position, event=event))
        return found

    # -- users and tokens ----------------------------------------------------------------

    def ensure_user(self, user_id: str, created_at: datetime) -> User:
        # Read first: a known user costs no write (and no commit a caller's next write
        # would have to follow: see storage/_waiting.py).
        with self._read() as conn:
            known = conn.execute("SELECT created_at FROM users WHERE id = ?", (user_id,)).fetchone()
        if known is not None:
            return User(id=user_id, created_at=from_ms(known[0]))  # type: ignore[arg-type]

        def run(conn: Conn) -> Any:
            conn.execute(
                "INSERT INTO users (id, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (user_id, to_ms(created_at)),
            )
            return conn.execute("SELECT created_at FROM users WHERE id = ?", (user_id,)).fetchone()

        row = self.write(run)
        return User(id=user_id, created_at=from_ms(row[0]))  # type: ignore[arg-type]

    def insert_token(self, token: Token, token_hash: str, *, max_live: int | None = None) -> bool:
        values = (
            token.id,
            token_hash,
            token.user_id,
            dumps(sorted(token.scopes)),
            token.name,
            to_ms(token.created_at),
            token.parent_id,
        )
        sql = "INSERT INTO tokens (id, hash, user_id, scopes, name, created_at, parent_id)"

        def run(conn: Conn) -> bool:
            if max_live is not None:
                # Counting: mints of this user wait for each other (and for revocations),
                # so two cannot both see room for one more.
                self._lock_user_tokens(conn, token.user_id, "NO KEY UPDATE")
                _check_live_tokens(conn, token, max_live)
            if token.parent_id is None:
                conn.execute(sql + " VALUES (?, ?, ?, ?, ?, ?, ?)", values)
                return True
            # Held until commit: a revocation of this user's tokens waits for this insert,
            # then sees the child; one that committed first is seen by the next statement.
            if max_live is None:
                self._lock_user_tokens(conn, token.user_id, "SHARE")
            cursor = conn.execute(
                sql + " SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM tokens"
                " WHERE id = ? AND user_id = ? AND revoked_at IS NULL)",
                (*values, token.parent_id, token.user_id),
            )
            return bool(cursor.rowcount > 0)

        return bool(self.write(run))

    def get_token(self, token_hash: str) -> Token | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE hash = ? AND revoked_at IS NULL",
                (token_hash,),
            ).fetchone()
        return None if row is None else _row_to_token(row)

    def list_tokens(self, user_id: str | None = None) -> list[Token]:
        where, args = (
            ("WHERE revoked_at IS NULL", ())
            if user_id is None
            else ("WHERE revoked_at IS NULL AND user_id = ?", (user_id,))
        )
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens {where} ORDER BY created_at DESC, id DESC",
                args,
            ).fetchall()
        return [_row_to_token(row) for row in rows]

    def list_user_tokens(self, user_id: str, page: int, page_size: int) -> tuple[list[Token], int]:
        live = "WHERE revoked_at IS NULL AND user_id = ?"
        with self._read() as conn:
            total = conn.execute(f"SELECT count(*) FROM tokens {live}", (user_id,)).fetchone()
            rows = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens {live}"
                " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                (user_id, page_size, (page - 1) * page_size),
            ).fetchall()
        return [_row_to_token(row) for row in rows], _total(total)

    def revoke_token(
        self, token_id: str, revoked_at: datetime, user_id: str | None = None
    ) -> list[str]:
        at = to_ms(revoked_at)

        def run(conn: Conn) -> list[str]:
            row = conn.execute("SELECT user_id FROM tokens WHERE id = ?", (token_id,)).fetchone()
            if row is None or (user_id is not None and row[0] != user_id):
                return []
            self._lock_user_tokens(conn, row[0], "NO KEY UPDATE")
            cursor = conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (at, token_id),
            )
            if cursor.rowcount == 0:
                return []
            rows = conn.execute(
                f"{_token_tree('?')} UPDATE tokens SET revoked_at = ?"
                " WHERE revoked_at IS NULL AND id IN (SELECT id FROM tree) RETURNING id",
                (token_id, at),
            ).fetchall()
            return [token_id, *sorted(r[0] for r in rows)]

        return list(self.write(run))

    # -- workflows -----------------------------------------------------------------------

    def insert_workflow(self, workflow: Workflow, events: Sequence[Event] = ()) -> None:
        def run(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO workflows (id, name, description, type, status, department,"
                " configuration, integrations, metadata, created_at, updated_at,"
                " activated_at, deactivated_at, created_by, retention_days, max_concurrency,"
                " concurrency_key, concurrency_limit, rate_limit_key, rate_limit,"
                " rate_period_ms, debounce_key, debounce_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    workflow.id,
                    workflow.name,
                    workflow.description,
                    workflow.type,
                    workflow.status.value,
                    _department(workflow.metadata),
                    dumps(workflow.configuration),
                    dumps([{"id": i.id, "required": i.required} for i in workflow.integrations]),
                    dumps(workflow.metadata),
                    to_ms(workflow.created_at),
                    to_ms(workflow.updated_at),
                    to_ms(workflow.activated_at),
                    to_ms(workflow.deactivated_at),
                    workflow.created_by,
                    workflow.retention_days,
                    *_concurrency(workflow),
                    *_shaping(workflow),
                ),
            )
            self._insert_events(conn, events)

        self.write(run)

    def get_workflow(self, workflow_id: str) -> Workflow | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE id = ? AND deleted_at IS NULL",
                (workflow_id,),
            ).fetchone()
        return None if row is None else _row_to_workflow(row)

    def workflow_version(self, workflow_id: str) -> datetime | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT updated_at FROM workflows WHERE id = ? AND deleted_at IS NULL",
                (workflow_id,),
            ).fetchone()
        return None if row is None else from_ms(row[0])

    def workflow_paused_at(self, workflow_id: str) -> datetime | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT paused_at FROM workflows WHERE id = ? AND deleted_at IS NULL",
                (workflow_id,),
            ).fetchone()
        return None if row is None else from_ms(row[0])

    def update_workflow(self, workflow: Workflow, events: Sequence[Event] = ()) -> bool:
        def run(conn: Conn) -> bool:
            cursor = conn.execute(
                "UPDATE workflows SET name = ?, description = ?, status = ?, department = ?,"
                " configuration = ?, integrations = ?, metadata = ?,"
                f" updated_at = {NEXT_VERSION}, activated_at = ?, deactivated_at = ?,"
                " retention_days = ?, max_concurrency = ?, concurrency_key = ?,"
                " concurrency_limit = ?, rate_limit_key = ?, rate_limit = ?,"
                " rate_period_ms = ?, debounce_key = ?, debounce_ms = ?"
                " WHERE id = ? AND deleted_at IS NULL",
                (
                    workflow.name,
                    workflow.description,
                    workflow.status.value,
                    _department(workflow.metadata),
                    dumps(workflow.configuration),
                    dumps([{"id": i.id, "required": i.required} for i in workflow.integrations]),
                    dumps(workflow.metadata),
                    to_ms(workflow.updated_at),
                    to_ms(workflow.updated_at),
                    to_ms(workflow.activated_at),
                    to_ms(workflow.deactivated_at),
                    workflow.retention_days,
                    *_concurrency(workflow),
                    *_shaping(workflow),
                    workflow.id,
                ),
            )
            if cursor.rowcount == 0:
                return False
            self._insert_events(conn, events)
            return True

        return bool(self.write(run))

    def delete_workflow(
        self, workflow_id: str, deleted_at: datetime, events: Sequence[Event] = ()
    ) -> bool:
        def run(conn: Conn) -> bool:
            cursor = conn.execute(
                "UPDATE workflows SET deleted_at = ?, status = 'inactive'"
                " WHERE id = ? AND deleted_at IS NULL",
                (to_ms(deleted_at), workflow_id),
            )
            if cursor.rowcount == 0:
                return False
            self._insert_events(conn, events)
            return True

        return bool(self.write(run))

    def list_workflows(self, query: WorkflowQuery) -> tuple[list[Workflow], int]:
        where = ["deleted_at IS NULL"]
        args: list[Any] = []
        for column, value in (
            ("status", query.status.value if query.status else None),
            ("type", query.type),
            ("department", query.department),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = " AND ".join(where)
        order = "DESC" if query.sort_order == "desc" else "ASC"
        sort_column = {"created_at": "created_at", "updated_at": "updated_at", "name": "name"}[
            query.sort_by
        ]
        offset = (query.page - 1) * query.page_size
        with self._read() as conn:
            total = conn.execute(f"SELECT count(*) FROM workflows WHERE {clause}", args).fetchone()
            rows = conn.execute(
                f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE {clause}"
                f" ORDER BY {sort_column} {order}, id {order} LIMIT ? OFFSET ?",
                [*args, query.page_size, offset],
            ).fetchall()
        return [_row_to_workflow(row) for row in rows], _total(total)

    # -- integrations --------------------------------------------------------------------

    def put_integration(self, integration: Integration) -> bool:
        sql = self.dialect.upsert(
            "integrations",
            ("id", "provider", "config", "created_at", "updated_at"),
            key=("id",),
            update=("provider", "config", "updated_at"),
        )
        args = (
            integration.id,
            integration.provider,
            dumps(integration.config),
            to_ms(integration.created_at),
            to_ms(integration.updated_at),
        )
        return bool(self.write(lambda conn: self._upsert_created(conn, "integrations", sql, args)))

    def _upsert_created(self, conn: Conn, table: str, sql: str, args: Sequence[Any]) -> bool:
        """Run the upsert ``sql`` of a row keyed by ``id`` (``args[0]``); whether it inserted."""
        if self.dialect.upsert_inserted:
            row = conn.execute(sql + self.dialect.upsert_inserted, args).fetchone()
            return bool(row and row[0])
        existed = conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (args[0],)).fetchone()
        conn.execute(sql, args)
        return existed is None

    def get_integration(self, integration_id: str) -> Integration | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_INTEGRATION_COLUMNS} FROM integrations WHERE id = ?",
                (integration_id,),
            ).fetchone()
        return None if row is None else _integration(row)

    def list_integrations(self, page: int, page_size: int) -> tuple[list[Integration], int]:
        with self._read() as conn:
            total = conn.execute("SELECT count(*) FROM integrations").fetchone()
            rows = conn.execute(
                f"SELECT {_INTEGRATION_COLUMNS} FROM integrations ORDER BY id LIMIT ? OFFSET ?",
                (page_size, (page - 1) * page_size),
            ).fetchall()
        return [_integration(row) for row in rows], _total(total)

    def count_owned(self, kind: OwnedKind, user_id: str, limit: int) -> int:
        # Without statistics SQLite reads idx_executions_creator instead: every execution
        # the user ever started, on each execute_async (issue #18).
        hint = "INDEXED BY idx_executions_queued_owner" if self.dialect.name == "sqlite" else ""
        rows = OWNED_ROWS[kind].format(owner="?", queued_index=hint)
        with self._read() as conn:
            row = conn.execute(
                f"SELECT count(*) FROM ({rows} LIMIT ?) AS owned", (user_id, limit)
            ).fetchone()
        return _total(row)

    def delete_integration(self, integration_id: str) -> bool:
        return bool(
            self.write(
                lambda conn: (
                    conn.execute(
                        "DELETE FROM integrations WHERE id = ?", (integration_id,)
                    ).rowcount
                    > 0
                )
            )
        )

    def existing_integration_ids(self, ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return set()
        condition, args = self.dialect.any_of("id", wanted)
        with self._read() as conn:
            rows = conn.execute(f"SELECT id FROM integrations WHERE {condition}", args).fetchall()
        return {row[0] for row in rows}


def _check_live_tokens(conn: Conn, token: Token, max_live: int) -> None:
    """Raise ``TokenLimitReached`` when ``token``'s user holds ``max_live`` live tokens.

    A parent no longer live is left to the insert (refused there), not counted as full.
    """
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM tokens WHERE id = ? AND user_id = ? AND revoked_at IS NULL),"
        " (SELECT count(*) FROM tokens WHERE user_id = ? AND revoked_at IS NULL)",
        (token.parent_id, token.user_id, token.user_id),
    ).fetchone()
    parent_live, live = row if row is not None else (False, 0)
    if (parent_live or token.parent_id is None) and live >= max_live:
        raise TokenLimitReached(max_live)
