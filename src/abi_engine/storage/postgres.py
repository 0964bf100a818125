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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool

from abi_engine.errors import InvalidRequest
from abi_engine.storage._urls import redact_url
from abi_engine.storage.postgres_migrations import advisory_key, migrate
from abi_engine.storage.records import AGAIN, ExecutionRecord
from abi_engine.storage.sql.dialect import POSTGRES, columns
from abi_engine.storage.sql.execution_ops import (
    EXECUTION_TYPES,
    execution_row,
    insert_executions_sql,
)
from abi_engine.storage.sql.store import SQLStore

__all__ = ["PostgresStore", "redact_url"]

T = TypeVar("T")

Durability = Literal["normal", "full"]
Conn = Any  # a QmarkConnection

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
        if not any(sign in str(exc) for sign in ("NUL", "\\u0000", "0x00")):
            raise
        raise InvalidRequest(
            "Text values cannot contain NUL characters (U+0000)", {"reason": "nul_character"}
        ) from None


class QmarkCursor(psycopg.Cursor[Any]):
    """psycopg's cursor reading the shared SQL's ``?`` placeholders (``POSTGRES.sql``).

    A statement without parameters is sent as written (psycopg reads no marks in it).
    """

    def execute(
        self,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> QmarkCursor:
        if params is not None and isinstance(query, str):
            query = POSTGRES.sql(query)
        return super().execute(query, params, prepare=prepare, binary=binary)

    def executemany(self, query: Any, params_seq: Any, *, returning: bool = False) -> None:
        if isinstance(query, str):
            query = POSTGRES.sql(query)
        super().executemany(query, params_seq, returning=returning)


class QmarkConnection(psycopg.Connection[Any]):
    """psycopg's connection with ``sqlite3``'s ``executemany`` (the shared SQL calls it)."""

    def executemany(
        self, query: Any, params_seq: Sequence[Any], *, returning: bool = False
    ) -> QmarkCursor:
        """Run ``query`` once per parameter tuple (none for no tuple); the cursor's
        ``rowcount`` is the rows all of them changed."""
        cur = self.cursor()
        assert isinstance(cur, QmarkCursor)
        if params_seq:
            cur.executemany(query, params_seq, returning=returning)
        return cur


def _transaction(conn: Conn, fn: Callable[[Conn], T]) -> T:
    with conn.transaction():
        return fn(conn)


#: Sent first in a batch's pipeline: its statements read and write executions, steps and
#: workflows by key, which an index always serves best; without statistics yet (a new
#: or fast-growing table: autovacuum analyzes a minute later at best) the planner takes
#: such a table for a page or two and scans it whole, once per statement (issue #18).
#: Local to the batch's transaction (``set_config``'s third argument).
BATCH_PLANNING = "SELECT set_config('enable_seqscan', 'off', true)"

#: Sent when the batch's code fails before its pipeline ends: the error it raises aborts
#: the transaction, so the ``Sync`` that ends the pipeline rolls back what was sent.
ABANDON = "DO $$BEGIN RAISE EXCEPTION 'abi-engine: batch abandoned'; END$$"


def _pipelined(conn: Conn, fn: Callable[[Conn], T]) -> T:
    """``fn(conn)`` in one transaction, in pipeline mode: the implicit transaction of the
    extended protocol, from the first statement to the ``Sync`` that ends the pipeline
    (which commits it), so no ``BEGIN`` or ``COMMIT`` statement is sent: a transaction
    that reads once costs two round trips, the read's ``Flush`` and the ``Sync``. A
    failure anywhere, the commit's included, rolls it back: a server error aborts the
    transaction until the ``Sync``; an exception of ``fn`` sends :data:`ABANDON` first."""
    try:
        with conn.pipeline() as pipeline:
            conn.execute(BATCH_PLANNING, prepare=True)
            try:
                result = fn(conn)
            except BaseException:
                with suppress(psycopg.Error):
                    conn.execute(ABANDON)
                    pipeline.sync()
                raise
        return result
    except BaseException:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        raise


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL for libpq and the pool's own parameters.

    The rest of the query is encoded again with ``%20`` for a space: libpq decodes percent
    escapes only, so ``+`` would reach the server as a plus sign (``options=-c a=1 -c b=2``
    would become one broken setting)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    pool = {k: v for k, v in pairs if k in POOL_PARAMETERS}
    rest = [(k, v) for k, v in pairs if k not in POOL_PARAMETERS]
    return urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote))), pool


class PostgresStore(SQLStore):
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

    dialect = POSTGRES

    #: Every call is a network round trip: the engine calls the store from threads.
    blocking = True
    #: Batches of the group committer written at once, each in a transaction of its
    #: own (``runtime/commit.py`` orders those writing the same executions).
    batches_in_flight = 2

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
        connect: dict[str, Any] = {"autocommit": True, "cursor_factory": QmarkCursor}
        if "connect_timeout=" not in conninfo:
            # Without one, libpq waits as long as the OS does for an unreachable host.
            connect["connect_timeout"] = CONNECT_TIMEOUT
        self.schema, self._version = self._open_and_migrate(conninfo, connect)
        self._events_lock_key = advisory_key("events", self.schema)
        self._subscriptions_lock_key = advisory_key("subscriptions", self.schema)
        self._pool: ConnectionPool[QmarkConnection] = ConnectionPool(
            conninfo,
            connection_class=QmarkConnection,
            min_size=low,
            max_size=max(low, high),
            timeout=pool_timeout,
            kwargs=connect,
            configure=self._configure,
            name="abi-engine",
            open=False,
        )
        self._pool.open(wait=False)

    def _open_and_migrate(self, conninfo: str, connect: dict[str, Any]) -> tuple[str, int]:
        """The schema the URL names and its version, once migrated, over a first connection
        of its own: a bad URL or an unreachable server fails here with libpq's message, not
        as a pool timeout."""
        try:
            first = QmarkConnection.connect(conninfo, **connect)
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
            schema = str(row[0])
            return schema, migrate(conn, schema)

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

    @contextmanager
    def _snapshot(self) -> Iterator[Conn]:
        """A connection whose statements all read one snapshot (REPEATABLE READ, read only)."""
        with self._read() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    def write(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn(conn)`` in one transaction and return its result.

        A deadlock or serialization failure rolls it back and runs it again
        (``fn`` must not have effects outside the transaction).
        """
        return self._write(fn, pipelined=False)

    def _write_batch(self, fn: Callable[[Conn], T]) -> T:
        """:meth:`write`, in pipeline mode: statements whose results ``fn`` does not read
        are sent without waiting for their answers, with the next one that is read
        (or the commit), so a batch costs a round trip per read, not per statement.

        Only for code that reads results by fetching them: in pipeline mode a
        cursor's ``rowcount`` is not known before its results are fetched.
        """
        return self._write(fn, pipelined=True)

    def _write(self, fn: Callable[[Conn], T], *, pipelined: bool) -> T:
        if self._closed:
            raise psycopg.InterfaceError("the store is closed")
        run = _pipelined if pipelined else _transaction
        for attempt in range(1, _RETRIES + 1):
            try:
                with _nul_refused(), self._pool.connection() as conn:
                    return run(conn, fn)
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

    # -- what PostgreSQL adds to the shared SQL ------------------------------------------

    def _lock_outbox(self, conn: Conn) -> None:
        """Take the events lock until commit: event-writing transactions commit one at a
        time (the inserts are their last statement), so positions follow commit order."""
        conn.execute("SELECT pg_advisory_xact_lock(?)", (self._events_lock_key,))

    def _lock_subscriptions(self, conn: Conn) -> None:
        """The subscriptions lock, exclusive: event writers and fan-outs reading the
        subscriptions (:meth:`_hold_subscriptions`) finish first, new ones wait."""
        conn.execute("SELECT pg_advisory_xact_lock(?)", (self._subscriptions_lock_key,))

    def _hold_subscriptions(self, conn: Conn) -> None:
        """The subscriptions lock, shared (holders do not wait for each other).

        Subscriptions are inserted and changed under the exclusive form; holding
        the shared form means every subscription committed before this
        transaction is seen, and none commits between this read and the commit.
        So whether a deferred event is written, or a delivery is parked, follows
        commit order, as on SQLite.
        """
        conn.execute("SELECT pg_advisory_xact_lock_shared(?)", (self._subscriptions_lock_key,))

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
        conn.execute(f"SELECT 1 FROM users WHERE id = ? FOR {mode}", (user_id,))

    def _insert_executions(self, conn: Conn, records: Sequence[ExecutionRecord]) -> list[Any]:
        """Insert execution rows (one statement, returning the ids inserted); ``False``
        for one whose idempotency key is taken, ``AGAIN`` for one whose id is there
        already (its own insert, retried)."""
        if not records:
            return []
        rows = [execution_row(POSTGRES, r) for r in records]
        inserted = {
            row[0]
            for row in conn.execute(
                insert_executions_sql(POSTGRES), columns(POSTGRES, rows, EXECUTION_TYPES)
            ).fetchall()
        }
        missed = [r.id for r in records if r.id not in inserted]
        present: set[str] = set()
        if missed:
            present = {
                row[0]
                for row in conn.execute(
                    "SELECT id FROM executions WHERE id = ANY(%s::text[])",
                    (POSTGRES.array(missed, "text"),),
                ).fetchall()
            }
        return [
            True if r.id in inserted else (AGAIN if r.id in present else False) for r in records
        ]
