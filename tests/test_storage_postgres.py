"""PostgreSQL specifics: migrations, URLs and errors, commit order of the outbox, claims.

The behaviour every backend shares is tested once, parametrized over backends
(``test_storage.py`` and the engine-level suites); here is what only the
PostgreSQL store has: its migrations under an advisory lock, its URL handling,
outbox positions in commit order, and ``FOR UPDATE SKIP LOCKED`` claims that
hold across threads and processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from postgres_testing import create_schema, drop_schema, with_schema

from abi_engine import Engine, Workflow
from abi_engine.errors import InvalidRequest
from abi_engine.events import Event
from abi_engine.ids import new_id, utcnow
from abi_engine.models import ExecutionStatus, Scope, Token
from abi_engine.storage import Store
from abi_engine.storage import postgres_migrations as pgm
from abi_engine.storage.postgres import PostgresStore, redact_url
from abi_engine.storage.records import ExecutionRecord, InsertExecution
from abi_engine.storage.records_webhooks import WebhookRecord

pytestmark = pytest.mark.external_service

NewWorkflow = Callable[..., Workflow]


@pytest.fixture
def schema(postgres_server: str) -> Iterator[tuple[str, str]]:
    """A fresh, empty schema: ``(name, url using it)``; dropped afterwards."""
    name, url = create_schema(postgres_server)
    try:
        yield name, url
    finally:
        drop_schema(postgres_server, name)


@pytest.fixture
def stores(schema: tuple[str, str]) -> Iterator[Callable[[], PostgresStore]]:
    """``stores()`` opens another store on the test's schema; all are closed afterwards."""
    opened: list[PostgresStore] = []

    def open_store() -> PostgresStore:
        opened.append(PostgresStore(schema[1]))
        return opened[-1]

    try:
        yield open_store
    finally:
        for store in opened:
            store.close()


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def _queued(workflow_id: str = "wf_x") -> ExecutionRecord:
    return ExecutionRecord(
        id=new_id("exec_"),
        workflow_id=workflow_id,
        workflow_type="custom",
        status=ExecutionStatus.QUEUED,
        created_at=utcnow(),
    )


# -- migrations ---------------------------------------------------------------------------------


def test_migrations_applied_once_and_idempotent(schema: tuple[str, str]) -> None:
    """A fresh schema gets every migration once, in order; reopening applies nothing again."""
    name, url = schema
    store = PostgresStore(url)
    try:
        assert store.schema == name
        assert store.schema_version() == len(pgm.MIGRATIONS)
    finally:
        store.close()
    PostgresStore(url).close()
    rows = _rows(url, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert rows == [(i, n) for i, (n, _) in enumerate(pgm.MIGRATIONS, start=1)]


def test_concurrent_first_opens_migrate_once(schema: tuple[str, str]) -> None:
    """Six stores opening one fresh schema at once all succeed; each migration ran once."""
    _, url = schema
    barrier = threading.Barrier(6)
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        barrier.wait()
        try:
            opened.append(PostgresStore(url, min_size=0))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in opened:
        store.close()
    assert errors == []
    assert len(opened) == 6
    assert _rows(url, "SELECT count(*), count(DISTINCT version) FROM schema_migrations") == [
        (len(pgm.MIGRATIONS), len(pgm.MIGRATIONS))
    ]


def test_failed_migration_leaves_nothing(
    schema: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that fails rolls back the whole run: no table, no version recorded."""
    _, url = schema
    broken = [*pgm.MIGRATIONS, ("m999_broken", ["CREATE TABLE users (id TEXT)"])]
    monkeypatch.setattr(pgm, "MIGRATIONS", broken)
    with pytest.raises(psycopg.errors.DuplicateTable):
        PostgresStore(url)
    tables = _rows(
        url, "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
    )
    assert tables == [(0,)]


def test_advisory_keys_are_stable_and_per_schema() -> None:
    """Lock keys are signed 64-bit, the same in every process, different per schema."""
    key = pgm.advisory_key("migrate", "public")
    assert key == pgm.advisory_key("migrate", "public")
    assert key != pgm.advisory_key("migrate", "other")
    assert key != pgm.advisory_key("events", "public")
    assert -(2**63) <= key < 2**63


def test_token_lineage_migration_keeps_tokens(
    schema: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """m007 on a schema-6 database keeps every token (roots, parent_id NULL) and its revocation."""
    _, url = schema
    index = [name for name, _ in pgm.MIGRATIONS].index("m007_token_lineage")
    monkeypatch.setattr(pgm, "MIGRATIONS", pgm.MIGRATIONS[:index])
    PostgresStore(url).close()
    ids = [new_id("tok_") for _ in range(3)]
    with psycopg.connect(url) as conn:  # as the code of schema 6 wrote them
        conn.execute("INSERT INTO users (id, created_at) VALUES ('usr_a', 0)")
        for n, token_id in enumerate(ids):
            conn.execute(
                "INSERT INTO tokens (id, hash, user_id, scopes, name, created_at, revoked_at)"
                " VALUES (%s, %s, 'usr_a', '[\"workflows:read\"]', %s, %s, %s)",
                (token_id, f"h-{token_id}", f"t{n}", 1000 + n, 5000 if n == 2 else None),
            )
    assert _rows(url, "SELECT max(version) FROM schema_migrations") == [(6,)]
    monkeypatch.undo()
    store = PostgresStore(url)
    try:
        assert store.schema_version() == len(pgm.MIGRATIONS) >= 7
        kept = store.list_tokens("usr_a")
        assert [(t.id, t.name, t.parent_id) for t in kept] == [
            (ids[1], "t1", None),
            (ids[0], "t0", None),
        ]
        assert store.get_token(f"h-{ids[2]}") is None  # still revoked
        child = Token(
            id=new_id("tok_"),
            user_id="usr_a",
            scopes=frozenset({Scope.WORKFLOWS_READ}),
            created_at=utcnow(),
            parent_id=ids[0],
        )
        assert store.insert_token(child, "h-child") is True
        assert store.revoke_token(ids[0], utcnow()) == [ids[0], child.id]
        assert [t.id for t in store.list_tokens()] == [ids[1]]
    finally:
        store.close()


@pytest.mark.parametrize("max_live", [None, 100])
def test_revocation_waits_for_a_child_being_minted(
    stores: Callable[[], PostgresStore], max_live: int | None
) -> None:
    """A revocation that starts while a child is being inserted (capped or not) waits for it,
    then revokes it too."""
    store = stores()
    store.ensure_user("usr_a", utcnow())
    root = Token(id=new_id("tok_"), user_id="usr_a", scopes=frozenset(Scope), created_at=utcnow())
    assert store.insert_token(root, "h-root") is True
    child = Token(
        id=new_id("tok_"),
        user_id="usr_a",
        scopes=frozenset(Scope),
        created_at=utcnow(),
        parent_id=root.id,
    )
    entered = threading.Event()
    release = threading.Event()
    real_lock = PostgresStore._lock_user_tokens

    def slow_lock(conn: Any, user_id: str, mode: Any) -> None:
        real_lock(conn, user_id, mode)
        if mode == ("SHARE" if max_live is None else "NO KEY UPDATE"):  # mint holds its lock
            entered.set()
            assert release.wait(10)

    results: dict[str, Any] = {}
    store._lock_user_tokens = slow_lock  # type: ignore[method-assign]
    minting = threading.Thread(
        target=lambda: results.update(minted=store.insert_token(child, "h-c", max_live=max_live))
    )
    minting.start()
    assert entered.wait(10)
    other = stores()  # another process's store, unpatched
    revoking = threading.Thread(
        target=lambda: results.update(revoked=other.revoke_token(root.id, utcnow()))
    )
    revoking.start()
    time.sleep(0.3)
    assert revoking.is_alive()  # waits for the mint under way
    release.set()
    minting.join(10)
    revoking.join(10)
    # either thread may record its answer first once the mint commits
    assert results == {"minted": True, "revoked": [root.id, child.id]}
    assert other.get_token("h-c") is None
    assert other.list_tokens("usr_a") == []


# -- URLs and errors ------------------------------------------------------------------------------


def test_missing_schema_is_a_clear_error(postgres_server: str) -> None:
    """A search_path naming no existing schema is refused with a message that says so."""
    with pytest.raises(ValueError, match="no existing schema"):
        PostgresStore(with_schema(postgres_server, "no_such_schema_here"))


def test_unreachable_server_is_a_connection_error_without_the_password() -> None:
    """A refused connection raises ConnectionError; the password appears nowhere in it."""
    with pytest.raises(ConnectionError) as caught:
        PostgresStore("postgresql://someone:Sup3rSecretPw@127.0.0.1:1/db?connect_timeout=2")
    assert "Sup3rSecretPw" not in str(caught.value)


def test_pool_parameters_are_taken_out_of_the_url(schema: tuple[str, str]) -> None:
    """pool_min_size/pool_max_size configure the pool (libpq would refuse them)."""
    _, url = schema
    store = PostgresStore(f"{url}&pool_min_size=0&pool_max_size=3&pool_timeout=5")
    try:
        assert store.schema_version() == len(pgm.MIGRATIONS)
        stats = store._pool.get_stats()
        assert stats["pool_max"] == 3
        assert stats["pool_min"] == 0
    finally:
        store.close()


def test_several_options_in_the_url_all_reach_the_server(schema: tuple[str, str]) -> None:
    """``options`` with two ``-c`` settings (a space between them, written ``%20``) keeps
    both when the pool parameters are taken out (libpq does not read ``+`` as a space)."""
    _, url = schema
    store = PostgresStore(f"{url}%20-cstatement_timeout%3D4321&pool_max_size=2")
    try:
        assert store.schema_version() == len(pgm.MIGRATIONS)
        with store._pool.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "4321ms"
    finally:
        store.close()


@pytest.mark.parametrize(
    "query",
    [
        "pool_min_size=abc",
        "pool_max_size=0",
        "pool_timeout=0",
        "pool_min_size=1.5",
        "pool_min_size=-1",
    ],
)
def test_bad_pool_parameters_are_clear_errors(query: str) -> None:
    """A pool parameter out of its range is named, before any connection."""
    name = query.split("=")[0]
    with pytest.raises(ValueError, match=f"{name} must be a") as caught:
        PostgresStore(f"postgresql://app:s3cret@127.0.0.1:1/abi?{query}")
    assert "s3cret" not in str(caught.value)


@given(
    password=st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789!$&()*+,;=", min_size=6),
    in_query=st.booleans(),
)
def test_redact_url_hides_any_password(password: str, in_query: bool) -> None:
    """Whatever the password and wherever it sits, the redacted URL does not contain it."""
    from urllib.parse import quote

    secret = quote(password, safe="")
    if in_query:
        url = f"postgresql://db.example:5432/app?password={secret}&sslmode=require"
    else:
        url = f"postgresql://app:{secret}@db.example:5432/app?sslmode=require"
    shown = redact_url(url)
    assert secret not in shown
    assert password not in shown.replace("***", "")
    assert "db.example:5432/app" in shown
    assert "sslmode=require" in shown


_STEPS = {"steps": [{"name": "t", "action": "transform", "expressions": {"a": "1"}}]}


@pytest.mark.anyio
async def test_nul_characters_are_a_bad_request_not_a_crash(schema: tuple[str, str]) -> None:
    """PostgreSQL text cannot hold U+0000: reads and writes with one are INVALID_REQUEST."""
    _, url = schema
    engine = Engine(url)
    try:
        with pytest.raises(InvalidRequest) as caught:
            await engine.workflows.get("wf_\x00")
        assert caught.value.details == {"reason": "nul_character"}
        with pytest.raises(InvalidRequest):
            await engine.workflows.create(
                {"name": "a\x00b", "type": "custom", "configuration": _STEPS}
            )
        with pytest.raises(InvalidRequest):
            await engine.workflows.list(department="\x00")
        page = await engine.workflows.list()
        assert page.pagination.total_items == 0  # nothing half-written
        created = await engine.workflows.create(
            {"name": "fine", "type": "custom", "configuration": _STEPS}
        )
        assert (await engine.workflows.get(created.id)).name == "fine"
    finally:
        engine.close()


def test_engine_opens_postgres_urls_through_the_hook(schema: tuple[str, str]) -> None:
    """Engine("postgresql://...") gets a PostgresStore from the abi_storage hook; so does postgres://."""
    _, url = schema
    for given_url in (url, url.replace("postgresql://", "postgres://", 1)):
        engine = Engine(given_url)
        try:
            assert isinstance(engine.store, PostgresStore)
            assert isinstance(engine.store, Store)
            assert engine.store.blocking is True
        finally:
            engine.close()


def test_cli_token_create_on_postgres(schema: tuple[str, str]) -> None:
    """`abi-engine token create --db postgresql://...` stores a token the engine accepts."""
    _, url = schema
    out = subprocess.run(
        [sys.executable, "-m", "abi_engine", "token", "create", "--db", url, "--user", "usr_pg"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    token = out.stdout.strip()
    engine = Engine(url)
    try:
        assert engine.tokens.authenticate(token).user_id == "usr_pg"
    finally:
        engine.close()


def test_cli_hides_the_password_of_an_unreachable_database() -> None:
    """The command line's error for a database it cannot reach masks the URL's password."""
    url = "postgresql://app:Hunter2Hunter2@127.0.0.1:1/app?connect_timeout=2"
    out = subprocess.run(
        [sys.executable, "-m", "abi_engine", "token", "create", "--db", url, "--user", "u"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "cannot open the database" in out.stderr
    assert "Hunter2Hunter2" not in out.stderr
    assert "Traceback" not in out.stderr


# -- the outbox ----------------------------------------------------------------------------------


def test_events_fan_out_exactly_once_under_concurrent_writers(
    stores: Callable[[], PostgresStore], new_workflow: NewWorkflow
) -> None:
    """Eight threads write events while another fans out: every event gets one delivery.

    Positions are handed out in commit order (the advisory lock), so the fan-out
    cursor never moves past an event that commits later with a smaller position.
    """
    store = stores()
    now = utcnow()
    hook_id = new_id("wh_")
    store.insert_webhook(
        WebhookRecord(
            id=hook_id,
            url="https://example.com/h",
            events=["workflow.created"],
            secret="whsec_x",
            created_at=now - timedelta(hours=1),
            updated_at=now - timedelta(hours=1),
        )
    )
    written: list[str] = []
    done = threading.Event()

    def writer() -> None:
        for _ in range(40):
            wf = new_workflow()
            event = Event(type="workflow.created", data={"id": wf.id})
            store.insert_workflow(wf, events=[event])
            written.append(event.id)

    def fanner() -> None:
        while not done.is_set():
            store.fan_out(utcnow(), 7, ())

    fan = threading.Thread(target=fanner)
    fan.start()
    writers = [threading.Thread(target=writer) for _ in range(8)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    fan.join()
    while store.fan_out(utcnow(), 100, ()):
        pass
    delivered: list[str] = []
    page = 1
    while True:
        items, total = store.list_deliveries(hook_id, page, 100)
        delivered.extend(d.event_id for d in items)
        if page * 100 >= total:
            break
        page += 1
    assert len(written) == 320
    assert Counter(delivered) == Counter(written)


# -- claims ---------------------------------------------------------------------------------------


def test_threads_claim_each_recoverable_execution_once(
    stores: Callable[[], PostgresStore],
) -> None:
    """Six stores claiming 300 queued executions at once take each one exactly once."""
    claimers = [stores() for _ in range(6)]
    records = [_queued() for _ in range(300)]
    claimers[0].apply([InsertExecution(record=r) for r in records])
    taken: dict[int, list[str]] = {i: [] for i in range(len(claimers))}
    barrier = threading.Barrier(len(claimers))

    def claim(index: int) -> None:
        barrier.wait()
        while True:
            now = utcnow()
            got = claimers[index].claim_recoverable(
                f"node-{index}", now, now + timedelta(minutes=5), 9
            )
            if not got:
                return
            taken[index].extend(execution_id for execution_id, _, _ in got)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(claimers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [e for ids in taken.values() for e in ids]
    assert sorted(everything) == sorted(r.id for r in records)
    assert sum(1 for ids in taken.values() if ids) >= 2, "the claims did not overlap in time"


def test_leases_are_judged_in_the_servers_clock(
    stores: Callable[[], PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose clock runs an hour ahead writes leases that still end after their
    duration in the server's clock (not an hour later), and another node recovers the
    execution once they do."""
    import abi_engine.ids
    import abi_engine.storage.sql.handoff as lease_arithmetic

    skewed, recovering = stores(), stores()
    real = abi_engine.ids.utcnow
    ahead = timedelta(hours=1)
    record = _queued()
    record.owner, record.claim = "node-ahead", 7
    # The node ahead computes its lease in its own clock: its now + 2 s.
    monkeypatch.setattr(lease_arithmetic, "utcnow", lambda: real() + ahead)
    record.lease_until = real() + ahead + timedelta(seconds=2)
    skewed.apply([InsertExecution(record=record)])
    monkeypatch.setattr(lease_arithmetic, "utcnow", real)
    ((lease_ms, db_now_ms),) = _rows(
        skewed.url,
        "SELECT lease_until, (extract(epoch FROM clock_timestamp()) * 1000)::bigint"
        f" FROM {skewed.schema}.executions",
    )
    assert 0 < lease_ms - db_now_ms <= 2500  # about 2 s from the server's now, not an hour
    deadline = time.monotonic() + 30
    got: list[tuple[str, int, int]] = []
    while not got and time.monotonic() < deadline:
        now = real()
        got = recovering.claim_recoverable("node-b", now, now + timedelta(seconds=30), 10)
        time.sleep(0.2)
    assert [g[0] for g in got] == [record.id]


CLAIMER = textwrap.dedent(
    """
    import json, sys, time
    from datetime import timedelta
    from pathlib import Path
    from abi_engine.ids import utcnow
    from abi_engine.storage.postgres import PostgresStore

    url, name, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    store = PostgresStore(url)
    store.schema_version()  # connected
    Path(f"{go}.{name}.ready").write_text("ready")
    while not go.exists():
        time.sleep(0.001)
    taken = []
    while True:
        now = utcnow()
        got = store.claim_recoverable(name, now, now + timedelta(minutes=5), 5)
        if not got:
            break
        taken.extend(execution_id for execution_id, _, _ in got)
    store.close()
    print(json.dumps(taken))
    """
)


@pytest.mark.slow
def test_two_processes_claim_each_execution_once(schema: tuple[str, str], tmp_path: Path) -> None:
    """Two processes claiming 400 queued executions at once: each taken by exactly one."""
    _, url = schema
    store = PostgresStore(url)
    try:
        records = [_queued() for _ in range(400)]
        store.apply([InsertExecution(record=r) for r in records])
    finally:
        store.close()
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, url, f"proc-{i}", str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.proc-{i}.ready").exists() for i in range(2)):
        assert time.monotonic() < deadline, "the claimers did not start"
        assert all(p.poll() is None for p in procs), "a claimer died"
        time.sleep(0.01)
    go.write_text("go")  # both connected: they start claiming together
    outputs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert all(outputs), "each process claimed some"
    assert sorted(outputs[0] + outputs[1]) == sorted(r.id for r in records)
    owners = dict(_rows(url, "SELECT id, owner FROM executions"))
    for index, taken in enumerate(outputs):
        assert {owners[e] for e in taken} == {f"proc-{index}"}
