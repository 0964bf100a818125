"""The audit log: every change through the operations is recorded, chained, redacted,
listed with filters, verified, and pruned (both backends)."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_engine import Engine
from abi_engine.api import ApiRequest, call
from abi_engine.audit import REDACTED, diff, redact
from abi_engine.auth import Principal
from abi_engine.errors import Forbidden, InvalidRequest
from abi_engine.ids import utcnow
from abi_engine.models_audit import AuditDraft
from abi_engine.storage.base import Store

CUSTOM = {
    "name": "Audited",
    "type": "custom",
    "configuration": {"steps": [{"name": "s", "action": "delay", "seconds": 0}]},
}
BASIC = {
    "base_url": "https://crm.example.com",
    "auth": {"type": "basic", "username": "bot", "password": "hunter2"},
}


def _principal(engine: Engine, user: str = "usr_alice", scopes: Any = None) -> Principal:
    return engine.tokens.authenticate(engine.tokens.create_token(user, scopes))


@pytest.fixture
def audited(databases: Callable[..., Any]) -> Any:
    eng = Engine(databases(), allow_private_urls=True)
    try:
        yield eng
    finally:
        eng.close()


@pytest.mark.anyio
async def test_changes_are_recorded_with_before_and_after(audited: Engine) -> None:
    """Create, update, activate, deactivate and delete of a workflow each append one entry
    naming the actor, the action, the target and only the fields that changed."""
    alice = _principal(audited)
    created = await call(audited, alice, "create_workflow", ApiRequest(body=CUSTOM))
    wf = created["id"]
    path = {"workflow_id": wf}
    await call(audited, alice, "update_workflow", ApiRequest(path=path, body={"name": "Renamed"}))
    await call(audited, alice, "activate_workflow", ApiRequest(path=path))
    await call(audited, alice, "deactivate_workflow", ApiRequest(path=path))
    await call(audited, alice, "delete_workflow", ApiRequest(path=path))
    page = await audited.audit.list(target_id=wf, page_size=100)
    entries = list(reversed(page.items))
    assert [e.action for e in entries] == [
        "workflow.create",
        "workflow.update",
        "workflow.activate",
        "workflow.deactivate",
        "workflow.delete",
    ]
    assert {e.actor for e in entries} == {"usr_alice"}
    assert {e.target_type for e in entries} == {"workflow"}
    create, update, activate = entries[:3]
    assert create.before is None
    assert create.after is not None
    assert create.after["name"] == "Audited"
    assert update.before is not None
    assert update.after is not None
    assert update.before["name"] == "Audited"
    assert update.after["name"] == "Renamed"
    assert "type" not in update.after  # unchanged fields are left out
    assert activate.before is not None
    assert activate.after is not None
    assert activate.before["status"] == "inactive"
    assert activate.after["status"] == "active"
    assert entries[-1].after is None
    assert entries[-1].before is not None
    ids = [e.id for e in entries]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert (await audited.audit.verify()).ok


@pytest.mark.anyio
async def test_secrets_never_reach_the_log(audited: Engine) -> None:
    """Webhook secrets, integration passwords and new tokens are redacted."""
    alice = _principal(audited)
    await call(
        audited,
        alice,
        "put_integration",
        ApiRequest(path={"integration_id": "int_crm"}, body={"provider": "http", "config": BASIC}),
    )
    hook = await call(
        audited,
        alice,
        "create_webhook",
        ApiRequest(body={"url": "https://example.com/hook", "events": ["workflow.created"]}),
    )
    assert hook["secret"].startswith("whsec_")
    minted = await call(audited, alice, "create_token", ApiRequest(body={}))
    await call(audited, alice, "revoke_token", ApiRequest(path={"token_id": minted["id"]}))
    entries = (await audited.audit.list(page_size=100)).items
    text = repr([(e.before, e.after) for e in entries])
    assert "hunter2" not in text
    assert hook["secret"] not in text
    assert minted["token"] not in text
    actions = {e.action for e in entries}
    assert {"integration.put", "webhook.create", "token.create", "token.revoke"} <= actions
    webhook_entry = next(e for e in entries if e.action == "webhook.create")
    assert webhook_entry.after is not None
    assert webhook_entry.after["secret"] == REDACTED


@pytest.mark.anyio
async def test_list_filters_and_scope(audited: Engine) -> None:
    """GET /audit needs audit:read, filters by actor, action, target and time, pages."""
    alice = _principal(audited)
    bob = _principal(audited, "usr_bob")
    for who in (alice, bob, alice):
        await call(audited, who, "create_workflow", ApiRequest(body=CUSTOM))
    data = await call(audited, alice, "list_audit", ApiRequest(query={"actor": "usr_alice"}))
    assert data["pagination"]["total_items"] == 2
    assert {item["actor"] for item in data["items"]} == {"usr_alice"}
    assert data["items"][0]["id"] > data["items"][1]["id"]  # newest first
    one = await call(audited, alice, "list_audit", ApiRequest(query={"page_size": "1"}))
    assert one["pagination"] == {"page": 1, "page_size": 1, "total_items": 3, "total_pages": 3}
    future = (utcnow() + timedelta(hours=1)).isoformat()
    later = await call(audited, alice, "list_audit", ApiRequest(query={"since": future}))
    assert later["items"] == []
    until = await call(audited, alice, "list_audit", ApiRequest(query={"until": future}))
    assert until["pagination"]["total_items"] == 3
    with pytest.raises(InvalidRequest) as bad:
        await call(audited, alice, "list_audit", ApiRequest(query={"since": "yesterday"}))
    assert bad.value.details["field"] == "since"
    reader = _principal(audited, "usr_r", ["workflows:read"])
    with pytest.raises(Forbidden):
        await call(audited, reader, "list_audit", ApiRequest())


@pytest.mark.anyio
async def test_failed_changes_are_not_recorded(audited: Engine) -> None:
    """A refused change (bad body) leaves no entry."""
    alice = _principal(audited)
    with pytest.raises(InvalidRequest):
        await call(audited, alice, "create_workflow", ApiRequest(body={"name": 1}))
    assert (await audited.audit.list()).pagination.total_items == 0


def test_concurrent_writers_on_two_stores_keep_one_chain(make_store: Callable[..., Store]) -> None:
    """Two stores (two connections, as two processes would have) on one database append
    from many threads at once: ids are 1..n without gaps and each entry chains to the
    one before."""
    stores = [make_store(), make_store(same=True)]
    per_thread = 15

    def append(store: Store, n: int) -> None:
        for i in range(per_thread):
            store.append_audit(
                AuditDraft(
                    at=utcnow(), actor=f"t{n}", action="x.y", target_type="x", target_id=str(i)
                )
            )

    threads = [threading.Thread(target=append, args=(stores[n % 2], n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    entries = stores[0].audit_entries(0, 1000)
    assert [e.id for e in entries] == list(range(1, 4 * per_thread + 1))
    assert entries[0].prev_hash == ""
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert stores[1].audit_head() == (entries[-1].id, entries[-1].hash)


@pytest.mark.anyio
async def test_verify_names_the_first_tampered_entry(tmp_path: Path) -> None:
    """Changing a stored entry with sqlite3 breaks the chain at that entry."""
    path = tmp_path / "abi.db"
    eng = Engine(path)
    try:
        alice = _principal(eng)
        for _ in range(4):
            await call(eng, alice, "create_workflow", ApiRequest(body=CUSTOM))
        assert (await eng.audit.verify()).ok
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE audit_log SET actor = 'usr_mallory' WHERE id = 3")
        check = await eng.audit.verify()
        assert not check.ok
        assert check.broken_id == 3
        assert check.reason is not None
        assert "changed" in check.reason
    finally:
        eng.close()


@pytest.mark.anyio
async def test_deleting_an_entry_breaks_the_chain(tmp_path: Path) -> None:
    """Removing an entry in the middle, or the last one, is found too."""
    path = tmp_path / "abi.db"
    eng = Engine(path)
    try:
        for i in range(4):
            await eng.audit.record("system", "x.y", "x", str(i))
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM audit_log WHERE id = 2")
        assert (await eng.audit.verify()).broken_id == 3
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM audit_log WHERE id >= 3")
        check = await eng.audit.verify()
        assert not check.ok
        assert check.broken_id == 4
    finally:
        eng.close()


@pytest.mark.anyio
async def test_audit_retention_prunes_the_oldest_and_keeps_a_chain(audited: Engine) -> None:
    """Entries older than audit_retention_days go; the rest still verify, ids go on."""
    now = utcnow()
    audited.audit.clock = lambda: now - timedelta(days=400)
    for i in range(3):
        await audited.audit.record("system", "old.one", "x", str(i))
    audited.audit.clock = lambda: now
    for i in range(2):
        await audited.audit.record("system", "new.one", "x", str(i))
    assert await audited.audit.prune(now, batch=2) == 3
    kept = (await audited.audit.list()).items
    assert [e.action for e in kept] == ["new.one", "new.one"]
    assert (await audited.audit.verify()).ok
    assert (await audited.audit.record("system", "later", "x", None)).id == 6
    audited.audit.retention_days = None
    assert await audited.audit.prune(now + timedelta(days=9999)) == 0


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a", "secret", "Token", "x_password", "b"]), inner, max_size=3
        )
    ),
    max_leaves=10,
)


def _leaked(value: Any, secret_key: bool = False) -> bool:
    if isinstance(value, dict):
        return any(
            _leaked(v, any(p in k.lower() for p in ("secret", "token", "password")))
            for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_leaked(v, secret_key) for v in value)
    return secret_key and value is not None and value != REDACTED


@settings(max_examples=200)
@given(_json)
def test_redact_hides_every_value_under_a_secret_key(value: Any) -> None:
    """Whatever the nesting, nothing under a secret-naming key survives redaction."""
    assert not _leaked(redact(value))


@settings(max_examples=200)
@given(
    st.dictionaries(st.sampled_from("abcd"), st.integers(0, 2)),
    st.dictionaries(st.sampled_from("abcd"), st.integers(0, 2)),
)
def test_diff_keeps_exactly_the_changed_fields(
    before: dict[str, int], after: dict[str, int]
) -> None:
    """diff keeps a key on a side iff the key's value differs (or is missing on one side)."""
    b, a = diff(before, after)
    assert b is not None
    assert a is not None
    changed = {k for k in {*before, *after} if before.get(k) != after.get(k)}
    assert set(b) == changed & set(before)
    assert set(a) == changed & set(after)


@pytest.mark.parametrize("way", ["local", "remote"])
def test_python_api_reads_the_log_both_ways(databases: Callable[..., Any], way: str) -> None:
    """abi.audit.AuditLogReader lists the same entries in-process and over HTTP."""
    from served_engines import served

    from abi.audit import AuditLogReader
    from abi.workflows import WorkflowManager

    with served(databases()) as server:
        manager = server.facade(WorkflowManager, way)
        created = manager.create_workflow(CUSTOM)
        reader = server.facade(AuditLogReader, way)
        page = reader.list_entries(target_id=created.id, since=utcnow() - timedelta(hours=1))
        assert [e.action for e in page.items] == ["workflow.create"]
        assert page.items[0].actor == "usr_spec"
        assert page.items[0].after is not None
        assert page.items[0].after["name"] == "Audited"
        with pytest.raises(InvalidRequest):
            reader.list_entries(page_size=1000)
        token = server.engine.tokens.create_token("usr_spec", ["workflows:read"])
        with pytest.raises(Forbidden):
            server.facade(AuditLogReader, way, token=token).list_entries()


_APPENDER = """
import sys
import anyio
from abi_engine import Engine

engine = Engine(sys.argv[1], load_entry_points=False)
try:
    for i in range(int(sys.argv[3])):
        anyio.run(engine.audit.record, sys.argv[2], "x.append", "x", str(i))
finally:
    engine.close()
"""


def test_two_processes_append_to_one_chain(
    every_database: Callable[..., Any], tmp_path: Path
) -> None:
    """Two engine processes appending at once on one database (SQLite file or PostgreSQL)
    hand out ids 1..n once each, and the chain verifies."""
    import subprocess
    import sys

    db = str(every_database())
    Engine(db, load_entry_points=False).close()  # migrated before both start
    script = tmp_path / "append.py"
    script.write_text(_APPENDER)
    count = 150
    procs = [
        subprocess.Popen([sys.executable, str(script), db, f"p{n}", str(count)]) for n in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    eng = Engine(db, load_entry_points=False)
    try:
        entries = eng.store.audit_entries(0, 1000)
        assert [e.id for e in entries] == list(range(1, 2 * count + 1))
        assert {e.actor for e in entries} == {"p0", "p1"}
        check = eng.call(eng.audit.verify)
        assert check.ok
        assert check.checked == 2 * count
    finally:
        eng.close()


#: Operations that change something but are not audited changes: starting executions
#: (each is its own durable record, with its requester in ``created_by``), a trigger's
#: signed invocation included; and reads sent as POST (an unsaved schedule's preview).
NOT_AUDITED = {
    "execute_workflow",
    "execute_workflow_async",
    "invoke_trigger",
    "preview_unsaved_schedule",
}


def test_every_changing_operation_has_an_audit_rule() -> None:
    """An operation other than a read either has an audit rule or is named above: a new
    operation cannot slip past the audit log unnoticed."""
    from abi_engine.api import OPERATIONS
    from abi_engine.api._audit import AUDITED

    changing = {name for name, op in OPERATIONS.items() if op.method != "GET"}
    missing = sorted(changing - set(AUDITED) - NOT_AUDITED)
    assert missing == []
    assert set(AUDITED) <= set(OPERATIONS)
    assert set(OPERATIONS) >= NOT_AUDITED


@pytest.mark.anyio
async def test_reruns_and_pauses_are_recorded(audited: Engine) -> None:
    """Pausing and resuming a workflow, and rerunning an execution, each append an entry."""
    alice = _principal(audited)
    async with audited:
        created = await call(audited, alice, "create_workflow", ApiRequest(body=CUSTOM))
        path = {"workflow_id": created["id"]}
        await call(audited, alice, "activate_workflow", ApiRequest(path=path))
        await call(audited, alice, "pause_workflow", ApiRequest(path=path))
        await call(audited, alice, "resume_workflow", ApiRequest(path=path))
        done = await audited.executions.execute(created["id"], {})
        rerun = await call(
            audited,
            alice,
            "rerun_execution",
            ApiRequest(path={"execution_id": done.execution_id}, body={}),
        )
    actions = [e.action for e in (await audited.audit.list(page_size=100)).items]
    assert actions[:3] == ["execution.rerun", "workflow.resume", "workflow.pause"]
    (entry,) = (await audited.audit.list(action="execution.rerun")).items
    assert entry.target_id == done.execution_id
    assert entry.after is not None
    assert entry.after["rerun_of"] == done.execution_id
    assert rerun["rerun_of"] == done.execution_id


@pytest.mark.anyio
async def test_a_lost_entry_is_logged_and_the_change_answered(
    audited: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the entry cannot be written after the change committed, the change is answered
    as made and an error names what the log is missing."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(audited.audit, "record", broken)
    alice = _principal(audited)
    created = await call(audited, alice, "create_workflow", ApiRequest(body=CUSTOM))
    assert (await audited.workflows.get(created["id"])).name == "Audited"
    lost = [r for r in caplog.records if r.name == "abi_engine.audit"]
    assert len(lost) == 1
    assert "workflow.create" in lost[0].getMessage()
    assert created["id"] in lost[0].getMessage()


@pytest.mark.anyio
async def test_a_trigger_s_secret_never_reaches_the_log(audited: Engine) -> None:
    """Putting a trigger with a secret, then replacing it, records two entries without the
    secret's value."""
    alice = _principal(audited)
    created = await call(audited, alice, "create_workflow", ApiRequest(body=CUSTOM))
    secret = "whsec_" + "c2VjcmV0LXRyaWdnZXItdmFsdWU="
    body = {"workflow_id": created["id"], "secret": secret}
    path = {"trigger_id": "orders"}
    await call(audited, alice, "put_trigger", ApiRequest(path=path, body=body))
    await call(audited, alice, "put_trigger", ApiRequest(path=path, body={**body, "secret": None}))
    entries = (await audited.audit.list(target_type="trigger")).items
    assert [e.action for e in entries] == ["trigger.put", "trigger.put"]
    assert {e.target_id for e in entries} == {"orders"}
    assert secret not in repr(entries)
    assert "c2VjcmV0LXRyaWdnZXItdmFsdWU" not in repr(entries)
