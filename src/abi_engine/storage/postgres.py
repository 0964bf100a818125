"""The PostgreSQL store: many processes, on many machines, on one database.

Connections come from a :class:`psycopg_pool.ConnectionPool` (autocommit
connections: a read is one statement, a write is an explicit transaction).
Transactions run at READ COMMITTED, PostgreSQL's default, and every
compare-and-set takes the row lock it needs:

- conditional ``UPDATE ... WHERE`` statements re-check their condition on the
  newest row version after waiting for a concurrent writer, so of two
  processes firing the same schedule due time, or claiming the same
  execution, one applies and the other gets ``False``;
- work lists are claimed with ``SELECT ... FOR UPDATE SKIP LOCKED``
  (recoverable executions, due webhook deliveries), so many processes claim
  at once without taking the same row and without waiting for each other;
- rows read before a dependent write are read ``FOR UPDATE`` (a signal and
  the wait it ends, a batch of checkpoints and their executions).

A deadlock between two batches (PostgreSQL aborts one of them) is retried
from the start, a few times, with a short random pause.

Events go to the outbox in the same transaction as their change. So that
positions are handed out in commit order (the delivery cursor advances past
a position once and never looks back), every transaction that writes events
takes one transaction-level advisory lock just before it inserts them, as its
last statement: event-writing transactions commit one at a time, the rest do
not wait.

Schema migrations (:mod:`abi_engine.storage.postgres_migrations`) run when
the store opens, under an advisory lock. The schema is the first one on the
connection's ``search_path`` (``public`` by default; another one with the
URL parameter ``options=-csearch_path%3Dname``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool

from abi_engine.errors import InvalidRequest
from abi_engine.events import Event, ExecutionEventRef, OutboxEvent, resolve
from abi_engine.models import (
    Integration,
    Token,
    User,
    Workflow,
)
from abi_engine.storage._codec import dumps, from_ms, loads, to_ms
from abi_engine.storage._refs import PACKED_TYPE, pack, unpack
from abi_engine.storage._rows import (
    _TOKEN_COLUMNS,
    _WORKFLOW_COLUMNS,
    _department,
    _row_to_token,
    _row_to_workflow,
    _token_tree,
)
from abi_engine.storage._templates import TemplatesMixin
from abi_engine.storage._urls import redact_url
from abi_engine.storage.base import (
    OWNED_ROWS,
    OwnedKind,
    StoredEvent,
    TokenLimitReached,
    WorkflowQuery,
)
from abi_engine.storage.postgres_executions import ExecutionsMixin
from abi_engine.storage.postgres_migrations import advisory_key, migrate
from abi_engine.storage.postgres_schedules import SchedulesMixin
from abi_engine.storage.postgres_webhooks import WebhooksMixin, subscribed_types

__all__ = ["PostgresStore", "redact_url"]

T = TypeVar("T")

Durability = Literal["normal", "full"]
Conn = psycopg.Connection[Any]

#: Query parameters of the URL that configure the pool (taken out before libpq sees the URL).
POOL_PARAMETERS = ("pool_min_size", "pool_max_size", "pool_timeout")
#: Seconds to wait for a connection when the URL gives no ``connect_timeout``.
CONNECT_TIMEOUT = 10
_RETRIES = 5
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


@contextmanager
def _nul_refused() -> Iterator[None]:
    """PostgreSQL text cannot hold NUL characters: a value with one is a bad request, not a 500."""
    try:
        yield
    except psycopg.DataError as exc:
        if "NUL" not in str(exc) and "\\u0000" not in str(exc):
            raise
        raise InvalidRequest(
            "Text values cannot contain NUL characters (U+0000)", {"reason": "nul_character"}
        ) from None


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL for libpq and the pool's own parameters."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    pool = {k: v for k, v in pairs if k in POOL_PARAMETERS}
    rest = [(k, v) for k, v in pairs if k not in POOL_PARAMETERS]
    return urlunsplit(parts._replace(query=urlencode(rest))), pool


def _integration(row: Sequence[Any]) -> Integration:
    return Integration(
        id=row[0],
        provider=row[1],
        config=loads(row[2]),
        created_at=from_ms(row[3]),  # type: ignore[arg-type]
        updated_at=from_ms(row[4]),  # type: ignore[arg-type]
    )


class PostgresStore(ExecutionsMixin, SchedulesMixin, WebhooksMixin, TemplatesMixin):
    """A :class:`~abi_engine.storage.Store` on a PostgreSQL database.

    :param url: a ``postgresql://`` (or ``postgres://``) URL, as libpq reads it.
        Query parameters ``pool_min_size`` (default 1), ``pool_max_size``
        (default 10) and ``pool_timeout`` (seconds to wait for a free
        connection, default 30) configure the pool; every other one goes to
        libpq (``sslmode``, ``connect_timeout`` (default 10 seconds here),
        ``application_name``, ``options``...).
    :param durability: ``"normal"`` keeps the server's ``synchronous_commit``;
        ``"full"`` sets ``synchronous_commit = on`` for the store's sessions.
    :param min_size: connections the pool keeps open (overrides the URL).
    :param max_size: most connections the pool opens (overrides the URL).
    """

    _MARK = "%s"  # the placeholder of the shared template SQL

    #: Every call is a network round trip: the engine calls the store from threads.
    blocking = True

    def __init__(
        self,
        url: str,
        *,
        durability: Durability = "normal",
        min_size: int | None = None,
        max_size: int | None = None,
    ) -> None:
        conninfo, pool_options = _split_url(url)
        self.url = url
        self.display_url = redact_url(url)
        self.durability = durability
        self._closed = False
        self._close_lock = threading.Lock()
        low = (
            min_size
            if min_size is not None
            else self._pool_number(pool_options, "pool_min_size", 1, 0)
        )
        high = (
            max_size
            if max_size is not None
            else self._pool_number(pool_options, "pool_max_size", 10, 1)
        )
        pool_timeout = self._pool_number(pool_options, "pool_timeout", 30, 0)
        # A first connection of its own: a bad URL or an unreachable server fails
        # here with libpq's message, not as a pool timeout.
        # Without a connect_timeout, libpq waits as long as the OS does for an unreachable host.
        connect: dict[str, Any] = {"autocommit": True}
        if "connect_timeout=" not in conninfo:
            connect["connect_timeout"] = CONNECT_TIMEOUT
        try:
            first = psycopg.connect(conninfo, **connect)
        except psycopg.OperationalError as exc:  # libpq's messages never show the password
            raise ConnectionError(" ".join(str(exc).split())) from None  # on one line
        except psycopg.ProgrammingError as exc:  # a malformed URL
            raise ValueError(
                f"invalid PostgreSQL URL {self.display_url}: {str(exc).strip()}"
            ) from None
        with first as conn:
            row = conn.execute("SELECT current_schema()").fetchone()
            if row is None or row[0] is None:
                raise ValueError(
                    "the connection's search_path names no existing schema"
                    f" ({self.display_url}); create the schema first"
                )
            self.schema = str(row[0])
            self._version = migrate(conn, self.schema)
        self._events_lock_key = advisory_key("events", self.schema)
        self._subscriptions_lock_key = advisory_key("subscriptions", self.schema)
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            conninfo,
            min_size=low,
            max_size=max(low, high),
            timeout=pool_timeout,
            kwargs=connect,
            configure=self._configure,
            name="abi-engine",
            open=False,
        )
        self._pool.open(wait=False)

    def _pool_number(
        self, options: Mapping[str, str], name: str, default: float, least: float
    ) -> Any:
        """A pool parameter of the URL, checked: a clear error rather than ``int()``'s.

        ``least`` is the smallest value allowed; ``pool_timeout`` (``least`` 0)
        is a number of seconds above it, the sizes are integers.
        """
        seconds = name == "pool_timeout"
        if name not in options:
            return float(default) if seconds else int(default)
        try:
            value: float | None = float(options[name]) if seconds else int(options[name])
        except ValueError:
            value = None
        if value is None or value < least or (seconds and value == least):
            kind = "a number of seconds above 0" if seconds else f"an integer from {least:g}"
            raise ValueError(
                f"invalid PostgreSQL URL {self.display_url}: {name} must be {kind}"
                f" (got {options[name]!r})"
            )
        return value

    def _configure(self, conn: Conn) -> None:
        if self.durability == "full":
            conn.execute("SET synchronous_commit = on")

    def __repr__(self) -> str:
        return f"<PostgresStore {self.display_url} schema={self.schema!r}>"

    # -- connections -----------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Conn]:
        """A connection for reads (each statement sees the latest commits)."""
        if self._closed:
            raise psycopg.InterfaceError("the store is closed")
        with _nul_refused(), self._pool.connection() as conn:
            yield conn

    def write(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn(conn)`` in one transaction and return its result.

        A deadlock or serialization failure rolls it back and runs it again
        (``fn`` must not have effects outside the transaction).
        """
        if self._closed:
            raise psycopg.InterfaceError("the store is closed")
        for attempt in range(1, _RETRIES + 1):
            try:
                with _nul_refused(), self._pool.connection() as conn, conn.transaction():
                    return fn(conn)
            except _RETRYABLE:
                if attempt == _RETRIES:
                    raise
                time.sleep(random.uniform(0.001, 0.01 * attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()

    # -- schema ------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._read() as conn:
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0]) if row else 0

    # -- events --------------------------------------------------------------------

    def _insert_events(self, conn: Conn, events: Sequence[OutboxEvent]) -> None:
        """Append ``events`` (the transaction's last statement: positions in commit order)."""
        if not events:
            return
        rows: list[tuple[Any, ...]] = []
        refs: list[ExecutionEventRef] = []
        for e in resolve(events, lambda: self._subscribed_types_locked(conn)):
            if isinstance(e, ExecutionEventRef):
                refs.append(e)
            else:
                rows.append((e.id, e.type, to_ms(e.timestamp), dumps(e.data), None))
        if refs:  # one row for all of them (storage/_refs.py)
            first, at, text = pack(refs)
            rows.append((first, PACKED_TYPE, at, None, text))
        if not rows:  # only deferred events, none wanted: no outbox position to take
            return
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._events_lock_key,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO events (id, type, timestamp, data, refs) VALUES (%s, %s, %s, %s, %s)",
                rows,
            )

    def _subscribed_types_locked(self, conn: Conn) -> set[str]:
        """The subscribed event types, with subscription changes held off until this commits.

        Subscriptions are inserted and changed under the exclusive form of this
        advisory lock; holding the shared form (writers do not wait for each
        other) means every subscription committed before this transaction is
        seen, and none commits between this read and the commit. So whether a
        deferred event is written follows commit order, as on SQLite.
        """
        conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (self._subscriptions_lock_key,))
        return subscribed_types(conn)

    def insert_events(self, events: Sequence[OutboxEvent]) -> None:
        if events:
            self.write(lambda conn: self._insert_events(conn, events))

    def events_after(self, seq: int, limit: int = 100) -> list[StoredEvent]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT seq, id, type, timestamp, data, refs FROM events"
                " WHERE seq > %s ORDER BY seq LIMIT %s",
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

    # -- users and tokens --------------------------------------------------------------

    def ensure_user(self, user_id: str, created_at: datetime) -> User:
        def run(conn: Conn) -> Any:
            conn.execute(
                "INSERT INTO users (id, created_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (user_id, to_ms(created_at)),
            )
            return conn.execute("SELECT created_at FROM users WHERE id = %s", (user_id,)).fetchone()

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
                row = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM tokens WHERE id = %s AND user_id = %s"
                    " AND revoked_at IS NULL),"
                    " (SELECT count(*) FROM tokens WHERE user_id = %s AND revoked_at IS NULL)",
                    (token.parent_id, token.user_id, token.user_id),
                ).fetchone()
                parent_live, live = row if row is not None else (False, 0)
                if (parent_live or token.parent_id is None) and live >= max_live:
                    raise TokenLimitReached(max_live)
            if token.parent_id is None:
                conn.execute(sql + " VALUES (%s, %s, %s, %s, %s, %s, %s)", values)
                return True
            # Held until commit: a revocation of this user's tokens waits for this insert,
            # then sees the child; one that committed first is seen by the next statement.
            if max_live is None:
                self._lock_user_tokens(conn, token.user_id, "SHARE")
            cursor = conn.execute(
                sql + " SELECT %s, %s, %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM tokens"
                " WHERE id = %s AND user_id = %s AND revoked_at IS NULL)",
                (*values, token.parent_id, token.user_id),
            )
            return cursor.rowcount > 0

        return self.write(run)

    @staticmethod
    def _lock_user_tokens(
        conn: Conn, user_id: str, mode: Literal["SHARE", "NO KEY UPDATE"]
    ) -> None:
        """Lock the user's row: minting from a token (``SHARE``) against revoking (``NO KEY UPDATE``).

        A token and its descendants belong to one user. Uncapped minters do not
        wait for each other, nor do inserts checking the foreign key (``KEY
        SHARE``); a revocation waits for the mints under way and holds new ones
        off until it commits, so its tree walk (a later statement, READ
        COMMITTED) misses no child. A capped mint (``max_live``) takes
        ``NO KEY UPDATE`` instead: capped mints of one user run one at a time,
        each counting the live tokens the previous ones committed.
        """
        conn.execute(f"SELECT 1 FROM users WHERE id = %s FOR {mode}", (user_id,))

    def get_token(self, token_hash: str) -> Token | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE hash = %s AND revoked_at IS NULL",
                (token_hash,),
            ).fetchone()
        return None if row is None else _row_to_token(row)

    # -- workflows ----------------------------------------------------------------------

    def list_tokens(self, user_id: str | None = None) -> list[Token]:
        where, args = (
            ("WHERE revoked_at IS NULL", ())
            if user_id is None
            else ("WHERE revoked_at IS NULL AND user_id = %s", (user_id,))
        )
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens {where} ORDER BY created_at DESC, id DESC",
                args,
            ).fetchall()
        return [_row_to_token(row) for row in rows]

    def list_user_tokens(self, user_id: str, page: int, page_size: int) -> tuple[list[Token], int]:
        live = "WHERE revoked_at IS NULL AND user_id = %s"
        with self._read() as conn:
            total = conn.execute(f"SELECT count(*) FROM tokens {live}", (user_id,)).fetchone()
            rows = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens {live}"
                " ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
                (user_id, page_size, (page - 1) * page_size),
            ).fetchall()
        return [_row_to_token(row) for row in rows], int(total[0] if total else 0)

    def revoke_token(
        self, token_id: str, revoked_at: datetime, user_id: str | None = None
    ) -> list[str]:
        at = to_ms(revoked_at)

        def run(conn: Conn) -> list[str]:
            row = conn.execute("SELECT user_id FROM tokens WHERE id = %s", (token_id,)).fetchone()
            if row is None or (user_id is not None and row[0] != user_id):
                return []
            self._lock_user_tokens(conn, row[0], "NO KEY UPDATE")
            cursor = conn.execute(
                "UPDATE tokens SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (at, token_id),
            )
            if cursor.rowcount == 0:
                return []
            rows = conn.execute(
                f"{_token_tree('%s')} UPDATE tokens SET revoked_at = %s"
                " WHERE revoked_at IS NULL AND id IN (SELECT id FROM tree) RETURNING id",
                (token_id, at),
            ).fetchall()
            return [token_id, *sorted(r[0] for r in rows)]

        return self.write(run)

    def insert_workflow(self, workflow: Workflow, events: Sequence[Event] = ()) -> None:
        def run(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO workflows (id, name, description, type, status, department,"
                " configuration, integrations, metadata, created_at, updated_at,"
                " activated_at, deactivated_at, created_by)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
                ),
            )
            self._insert_events(conn, events)

        self.write(run)

    def get_workflow(self, workflow_id: str) -> Workflow | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE id = %s AND deleted_at IS NULL",
                (workflow_id,),
            ).fetchone()
        return None if row is None else _row_to_workflow(row)

    def workflow_version(self, workflow_id: str) -> datetime | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT updated_at FROM workflows WHERE id = %s AND deleted_at IS NULL",
                (workflow_id,),
            ).fetchone()
        return None if row is None else from_ms(row[0])

    def update_workflow(self, workflow: Workflow, events: Sequence[Event] = ()) -> bool:
        def run(conn: Conn) -> bool:
            cursor = conn.execute(
                "UPDATE workflows SET name = %s, description = %s, status = %s,"
                " department = %s, configuration = %s, integrations = %s, metadata = %s,"
                " updated_at = %s, activated_at = %s, deactivated_at = %s"
                " WHERE id = %s AND deleted_at IS NULL",
                (
                    workflow.name,
                    workflow.description,
                    workflow.status.value,
                    _department(workflow.metadata),
                    dumps(workflow.configuration),
                    dumps([{"id": i.id, "required": i.required} for i in workflow.integrations]),
                    dumps(workflow.metadata),
                    to_ms(workflow.updated_at),
                    to_ms(workflow.activated_at),
                    to_ms(workflow.deactivated_at),
                    workflow.id,
                ),
            )
            if cursor.rowcount == 0:
                return False
            self._insert_events(conn, events)
            return True

        return self.write(run)

    def delete_workflow(
        self, workflow_id: str, deleted_at: datetime, events: Sequence[Event] = ()
    ) -> bool:
        def run(conn: Conn) -> bool:
            cursor = conn.execute(
                "UPDATE workflows SET deleted_at = %s, status = 'inactive'"
                " WHERE id = %s AND deleted_at IS NULL",
                (to_ms(deleted_at), workflow_id),
            )
            if cursor.rowcount == 0:
                return False
            self._insert_events(conn, events)
            return True

        return self.write(run)

    def list_workflows(self, query: WorkflowQuery) -> tuple[list[Workflow], int]:
        where = ["deleted_at IS NULL"]
        args: list[Any] = []
        for column, value in (
            ("status", query.status.value if query.status else None),
            ("type", query.type),
            ("department", query.department),
        ):
            if value is not None:
                where.append(f"{column} = %s")
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
                f" ORDER BY {sort_column} {order}, id {order} LIMIT %s OFFSET %s",
                [*args, query.page_size, offset],
            ).fetchall()
        return [_row_to_workflow(row) for row in rows], int(total[0] if total else 0)

    # -- integrations -----------------------------------------------------------------------

    def put_integration(self, integration: Integration) -> bool:
        def run(conn: Conn) -> bool:
            row = conn.execute(
                "INSERT INTO integrations (id, provider, config, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET"
                " provider = excluded.provider, config = excluded.config,"
                " updated_at = excluded.updated_at"
                " RETURNING (xmax = 0)",  # no previous version: the row was inserted
                (
                    integration.id,
                    integration.provider,
                    dumps(integration.config),
                    to_ms(integration.created_at),
                    to_ms(integration.updated_at),
                ),
            ).fetchone()
            return bool(row and row[0])

        return self.write(run)

    def get_integration(self, integration_id: str) -> Integration | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT id, provider, config, created_at, updated_at FROM integrations"
                " WHERE id = %s",
                (integration_id,),
            ).fetchone()
        return None if row is None else _integration(row)

    def list_integrations(self, page: int, page_size: int) -> tuple[list[Integration], int]:
        with self._read() as conn:
            total = conn.execute("SELECT count(*) FROM integrations").fetchone()
            rows = conn.execute(
                "SELECT id, provider, config, created_at, updated_at FROM integrations"
                " ORDER BY id LIMIT %s OFFSET %s",
                (page_size, (page - 1) * page_size),
            ).fetchall()
        return [_integration(row) for row in rows], int(total[0] if total else 0)

    def count_owned(self, kind: OwnedKind, user_id: str, limit: int) -> int:
        rows = OWNED_ROWS[kind].format(owner="%s")
        with self._read() as conn:
            row = conn.execute(
                f"SELECT count(*) FROM ({rows} LIMIT %s) AS owned", (user_id, limit)
            ).fetchone()
        return int(row[0]) if row else 0

    def delete_integration(self, integration_id: str) -> bool:
        return self.write(
            lambda conn: (
                conn.execute("DELETE FROM integrations WHERE id = %s", (integration_id,)).rowcount
                > 0
            )
        )

    def existing_integration_ids(self, ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return set()
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id FROM integrations WHERE id = ANY(%s::text[])", (wanted,)
            ).fetchall()
        return {row[0] for row in rows}
