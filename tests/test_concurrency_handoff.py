"""A freed concurrency slot handed on in the commit that frees it (#16), on every
engine backend: the finish of an execution holding a key's only slot grants the
next one waiting on that key in the same transaction (no ``claim_freed`` of its
own), within the limit, to one engine only."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import anyio
import pytest
from runtime_plugins import PROBE
from runtime_plugins.helpers import (
    TERMINAL,
    DatabaseFactory,
    EngineFactory,
    fast,
    new_workflow,
    wait_status,
)

from abi_engine import Engine, ExecutionStatus
from abi_engine.ids import new_id, utcnow
from abi_engine.storage.records import (
    AGAIN,
    ClaimExecution,
    ExecutionRecord,
    FinishExecution,
    HandedOff,
    HandOff,
    InsertExecution,
)

pytestmark = pytest.mark.anyio

KEYED = {"concurrency": {"key": "parameters.customer", "limit": 1}}


def _gated(customer: Any, gate: str) -> dict[str, Any]:
    return {"customer": customer, "do": {"first": {"gate": gate}}}


def _count_calls(engine: Engine, *names: str) -> dict[str, int]:
    """Count the calls the runtime makes of the store's methods ``names`` from now on."""
    calls = dict.fromkeys(names, 0)
    store = engine.store
    for name in names:
        method = getattr(store, name)

        def counted(*args: Any, _name: str = name, _method: Any = method, **kw: Any) -> Any:
            calls[_name] += 1
            return _method(*args, **kw)

        setattr(store, name, counted)
    return calls


async def _one_running_two_waiting(engine: Engine, wf: str) -> list[str]:
    ids = [
        (await engine.executions.execute(wf, _gated("c", f"k{i}"), wait=False)).execution_id
        for i in range(3)
    ]
    await wait_status(engine, ids[0], ExecutionStatus.RUNNING, timeout=30)
    for waiting in ids[1:]:
        assert (await engine.executions.get(waiting)).queued_reason == "concurrency_limit"
    return ids


async def test_the_finish_grants_the_next_in_its_own_commit(make: EngineFactory) -> None:
    """The poller sleeps an hour: each of three executions on one key (limit 1) starts
    when the one before ends, granted by that one's finish: the node never claims a
    freed slot in a transaction of its own (``claim_freed``) nor polls, and the runs
    never overlap."""
    engine = make(settings=fast(poll_interval=3600))
    async with engine:
        wf = await new_workflow(engine, **KEYED)
        ids = await _one_running_two_waiting(engine, wf)
        calls = _count_calls(engine, "claim_freed", "claim_recoverable")
        for i in range(3):
            PROBE.gate(f"k{i}").set()
        done = [await wait_status(engine, i, *TERMINAL, timeout=30) for i in ids]
    assert {d.status for d in done} == {ExecutionStatus.COMPLETED}
    assert calls == {"claim_freed": 0, "claim_recoverable": 0}
    spans = sorted((d.started_at, d.completed_at) for d in done)
    for (_, ended), (started, _) in itertools.pairwise(spans):
        assert ended is not None
        assert started is not None
        assert started >= ended, spans


async def test_a_finish_with_a_hand_off_grants_the_waiting_one_in_its_transaction(
    make: EngineFactory,
) -> None:
    """A finish applied straight to the store with a hand-off answers ``HandedOff``
    naming the one execution waiting on the key (not the third: limit 1), which is
    stored granted to the hand-off's owner under the token returned, in the same
    transaction; applied again (a retry), it grants nothing more."""
    engine = make(settings=fast(poll_interval=3600))
    async with engine:
        wf = await new_workflow(engine, **KEYED)
        ids = await _one_running_two_waiting(engine, wf)
        store = engine.store
        first = store.get_execution(ids[0])
        assert first is not None
        finish = FinishExecution(
            execution_id=ids[0],
            workflow_id=wf,
            status=ExecutionStatus.COMPLETED,
            completed_at=utcnow(),
            duration_ms=1,
            token=first.claim,
            hand_off=HandOff(owner="node-x", lease_until=utcnow() + timedelta(seconds=60), room=5),
        )
        [result] = store.apply([finish])
        assert isinstance(result, HandedOff)
        assert result.decided
        assert [g[0] for g in result.granted] == [ids[1]]
        # The granted execution as stored by the grant: its node needs not read it.
        assert [(r.id, r.owner, r.queued_reason) for r in result.records] == [
            (ids[1], "node-x", None)
        ]
        second = store.get_execution(ids[1])
        third = store.get_execution(ids[2])
        token = result.granted[0][2]
        lease = utcnow() + timedelta(seconds=60)
        # Held under the token returned (a renewal under it finds it), not another one.
        assert store.renew_leases({ids[1]: token}, lease) == []
        assert store.renew_leases({ids[1]: token + 1}, lease) == [ids[1]]
        assert store.apply([finish]) == [AGAIN]
        again = store.get_execution(ids[2])
        for i in range(3):
            PROBE.gate(f"k{i}").set()
    assert second is not None
    assert (second.owner, second.queued_reason) == ("node-x", None)
    assert second.status is ExecutionStatus.QUEUED
    assert third is not None
    assert again is not None
    assert third.owner is None
    assert again.owner is None
    assert third.queued_reason == "concurrency_limit"


@pytest.mark.postgresql_only
async def test_no_hand_off_while_another_transaction_holds_the_grant_lock(
    make: EngineFactory, databases: DatabaseFactory
) -> None:
    """PostgreSQL: while another session holds the workflow's grant lock, a finish does
    not wait for it (that could deadlock with its rows locked): it applies, grants
    nothing and says so (``decided`` false), so the node claims the slot on its own."""
    import psycopg

    engine = make(settings=fast(poll_interval=3600))

    async with engine:
        wf = await new_workflow(engine, **KEYED)
        ids = await _one_running_two_waiting(engine, wf)
        first = engine.store.get_execution(ids[0])
        assert first is not None
        finish = FinishExecution(
            execution_id=ids[0],
            workflow_id=wf,
            status=ExecutionStatus.COMPLETED,
            completed_at=utcnow(),
            duration_ms=1,
            token=first.claim,
            hand_off=HandOff(owner="node-x", lease_until=utcnow() + timedelta(seconds=60), room=5),
        )
        with psycopg.connect(str(databases("abi.db"))) as other, other.transaction():
            other.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"abi-slots:{wf}",)
            )
            [result] = engine.store.apply([finish])
        waiting = engine.store.get_execution(ids[1])
        for i in range(3):
            PROBE.gate(f"k{i}").set()
    assert result == HandedOff(decided=False)
    assert waiting is not None
    assert waiting.owner is None
    assert waiting.queued_reason == "concurrency_limit"


async def test_two_finishes_in_one_batch_hand_their_slots_on_once(make: EngineFactory) -> None:
    """``max_concurrency: 2``, two running and three waiting: one batch finishing both
    running ones grants the first two waiting (not the third: the limit), answered to
    the first finish; the second finish's answer grants nothing more."""
    engine = make(settings=fast(poll_interval=3600))
    async with engine:
        wf = await new_workflow(engine, max_concurrency=2)
        ids = [
            (await engine.executions.execute(wf, _gated(i, f"g{i}"), wait=False)).execution_id
            for i in range(5)
        ]
        for running in ids[:2]:
            await wait_status(engine, running, ExecutionStatus.RUNNING, timeout=30)
        store = engine.store
        lease = utcnow() + timedelta(seconds=60)
        finishes = []
        for running in ids[:2]:
            record = store.get_execution(running)
            assert record is not None
            finishes.append(
                FinishExecution(
                    execution_id=running,
                    workflow_id=wf,
                    status=ExecutionStatus.COMPLETED,
                    completed_at=utcnow(),
                    duration_ms=1,
                    token=record.claim,
                    hand_off=HandOff(owner="node-x", lease_until=lease, room=10),
                )
            )
        first, second = store.apply(finishes)
        owners = [store.get_execution(i) for i in ids[2:]]
        for i in range(5):
            PROBE.gate(f"g{i}").set()
    assert isinstance(first, HandedOff)
    assert sorted(g[0] for g in first.granted) == sorted(ids[2:4])
    assert second == HandedOff()
    assert [o.owner if o else None for o in owners] == ["node-x", "node-x", None]


async def test_a_hand_off_grants_exactly_what_the_freed_slots_allow(
    make: EngineFactory,
) -> None:
    """Every case of a key with limit ``L`` (1-3) full, ``W`` (0-4) waiting, ``F`` of the
    holders finishing in one batch and room ``R`` (1 or 5) on the node: the hand-off
    grants the first ``min(F, W, R)`` waiting, in request order, and the key's holders
    never exceed ``L`` (a grid of all 60 cases, on the store; the engine does not run)."""
    engine = make()
    store = engine.store
    lease = utcnow() + timedelta(seconds=60)
    for limit, room, waiting in itertools.product((1, 2, 3), (1, 5), range(5)):
        for finishing in range(1, limit + 1):
            keyed = {"key": "parameters.customer", "limit": limit}
            wf = await new_workflow(engine, concurrency=keyed)
            holders = _stored(store, wf, limit, owner="node-a")
            queued = _stored(store, wf, waiting, owner=None)
            tokens = _claimed(store, holders, lease)
            results = store.apply(
                [
                    FinishExecution(
                        execution_id=i,
                        workflow_id=wf,
                        status=ExecutionStatus.COMPLETED,
                        completed_at=utcnow(),
                        duration_ms=1,
                        token=tokens[i],
                        hand_off=HandOff(owner="node-x", lease_until=lease, room=room),
                    )
                    for i in holders[:finishing]
                ]
            )
            case = (limit, room, waiting, finishing)
            assert isinstance(results[0], HandedOff), case
            granted = [g[0] for g in results[0].granted]
            assert granted == queued[: min(finishing, waiting, room)], case
            assert all(r == HandedOff() for r in results[1:]), case
            held = [store.get_execution(i) for i in [*holders, *queued]]
            owned = [r for r in held if r is not None and r.owner is not None]
            assert len(owned) == limit - finishing + len(granted) <= limit, case


def _stored(store: Any, wf: str, count: int, *, owner: str | None) -> list[str]:
    """Insert ``count`` queued executions of key ``c`` (granted to ``owner``, or not),
    one at a time (their request order is their order); their ids."""
    ids = []
    for _ in range(count):
        now = utcnow()
        record = ExecutionRecord(
            id=new_id("exec_"),
            workflow_id=wf,
            workflow_type="test_three",
            status=ExecutionStatus.QUEUED,
            parameters={"customer": "c"},
            created_at=now,
            owner=owner,
            claim=None if owner is None else 1,
            lease_until=None if owner is None else now + timedelta(seconds=60),
        )
        assert store.apply([InsertExecution(record=record)]) == [True]
        ids.append(record.id)
    return ids


def _claimed(store: Any, ids: list[str], lease: Any) -> dict[str, int]:
    """Run the granted executions ``ids`` (claimed by their node); their run tokens."""
    tokens = {i: 100 + n for n, i in enumerate(ids)}
    claims = [
        ClaimExecution(
            execution_id=i,
            grant=1,
            token=tokens[i],
            owner="node-a",
            lease_until=lease,
            started_at=utcnow(),
        )
        for i in ids
    ]
    assert store.apply(claims) == [True] * len(ids)
    return tokens


@pytest.mark.postgresql_only
async def test_an_undecided_hand_off_is_claimed_by_the_node_after(
    make: EngineFactory, databases: DatabaseFactory
) -> None:
    """PostgreSQL, the poller asleep for an hour: while another session holds the
    workflow's grant lock, an execution ends; its finish cannot hand the slot on, so its
    node claims it in a transaction of its own (``claim_freed``), which waits for the
    lock: once it is let go, the next execution runs."""
    import psycopg

    engine = make(settings=fast(poll_interval=3600))
    async with engine:
        wf = await new_workflow(engine, **KEYED)
        ids = await _one_running_two_waiting(engine, wf)
        calls = _count_calls(engine, "claim_freed")
        with psycopg.connect(str(databases("abi.db"))) as other, other.transaction():
            other.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"abi-slots:{wf}",)
            )
            PROBE.gate("k0").set()
            await wait_status(engine, ids[0], *TERMINAL, timeout=30)
            await wait_status(engine, ids[1], ExecutionStatus.QUEUED, timeout=30)
        await wait_status(engine, ids[1], ExecutionStatus.RUNNING, timeout=30)
        for i in range(3):
            PROBE.gate(f"k{i}").set()
        done = [await wait_status(engine, i, *TERMINAL, timeout=30) for i in ids]
    assert {d.status for d in done} == {ExecutionStatus.COMPLETED}
    assert calls["claim_freed"] >= 1


@pytest.mark.slow
async def test_a_slot_granted_to_a_node_that_died_is_given_again_when_its_lease_ends(
    make: EngineFactory,
) -> None:
    """The node a finish handed the freed slot to dies right after that commit (it never
    starts the granted execution): once the grant's lease ends the waiting executions
    run, one at a time (the key's limit holds), each once; none stays queued."""
    engine = make(settings=fast(lease_seconds=2.0, poll_interval=0.2))
    async with engine:
        wf = await new_workflow(engine, **KEYED)
        ids = await _one_running_two_waiting(engine, wf)
        store = engine.store
        first = store.get_execution(ids[0])
        assert first is not None
        lease = utcnow() + timedelta(seconds=2)
        finish = FinishExecution(
            execution_id=ids[0],
            workflow_id=wf,
            status=ExecutionStatus.COMPLETED,
            completed_at=utcnow(),
            duration_ms=1,
            token=first.claim,
            hand_off=HandOff(owner="node-dead", lease_until=lease, room=5),
        )
        [result] = store.apply([finish])  # the dead node's finishing commit
        assert isinstance(result, HandedOff)
        assert [g[0] for g in result.granted] == [ids[1]]
        running = await _one_of_them_running(engine, ids[1:])
        other = next(e for e in ids[1:] if e != running)
        assert (await engine.executions.get(other)).status is ExecutionStatus.QUEUED
        for i in range(3):
            PROBE.gate(f"k{i}").set()
        done = [await wait_status(engine, e, *TERMINAL, timeout=120) for e in ids[1:]]
        assert [d.status for d in done] == [ExecutionStatus.COMPLETED] * 2
        for execution_id in ids[1:]:  # every step once: no run twice, none lost
            assert PROBE.runs(execution_id) == {"first": 1, "second": 1, "third": 1}
        stored = store.get_execution(ids[1])
        assert stored is not None
        assert stored.owner != "node-dead"


async def _one_of_them_running(engine: Engine, ids: list[str]) -> str:
    """Poll (up to 120 s) until one of ``ids`` runs; its id."""
    with anyio.fail_after(120):
        while True:
            for execution_id in ids:
                got = await engine.executions.get(execution_id)
                if got.status is ExecutionStatus.RUNNING:
                    return execution_id
            await anyio.sleep(0.2)  # polling, not a margin
