"""integration end to end: a CRM and a help desk on 127.0.0.1, synchronized by a real engine."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from abi_plugin_data_processing.tests.systems import PASS, System, connect_systems, create_workflow

from abi_engine import Engine, ExecutionStatus, StepStatus
from abi_engine.errors import WorkflowExecutionError
from abi_engine.testing import engine_for

from .conftest import BASE_CONFIGURATION, INTEGRATIONS, crm_record, desk_record, sync

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def fill(system: System, records: list[dict[str, Any]]) -> None:
    system.records = {str(r[system.key]): r for r in records}


async def test_upsert_creates_and_updates_by_key(engine: Engine, crm: System, desk: System) -> None:
    """New contacts are created, a changed one replaced, an equal one and a desk-only one left."""
    fill(crm, [crm_record(i) for i in range(5)])
    crm.records["c_1"]["email"] = "new@example.com"
    fill(desk, [desk_record(0), desk_record(1), desk_record(9)])
    execution = await sync(engine, crm, desk)
    assert execution.status is ExecutionStatus.COMPLETED
    assert [s.name for s in execution.steps or []] == [
        "read_source",
        "read_target",
        "plan",
        "apply",
    ]
    result = execution.result
    assert (result["created"], result["updated"], result["unchanged"], result["deleted"]) == (
        3,
        1,
        1,
        0,
    )
    assert result["planned"] == {"create": 3, "update": 1, "delete": 0}
    assert sorted(desk.records) == ["c_0", "c_1", "c_2", "c_3", "c_4", "c_9"]
    assert desk.records["c_1"] == {"contact_id": "c_1", "contact_email": "new@example.com"}
    assert [r.path for r in desk.received("PUT")] == ["/records/c_1"]
    assert len(desk.received("POST")) == 3
    keys = {r.headers["idempotency-key"] for r in desk.received("POST")}
    assert f"{execution.execution_id}:create:c_2" in keys


async def test_mirror_deletes_what_the_source_lacks(
    engine: Engine, crm: System, desk: System
) -> None:
    """mode mirror deletes desk records whose key is not in the CRM."""
    fill(crm, [crm_record(1)])
    fill(desk, [desk_record(1), desk_record(2), desk_record(3)])
    execution = await sync(engine, crm, desk, mode="mirror")
    assert execution.result["deleted"] == 2
    assert sorted(desk.records) == ["c_1"]
    assert sorted(r.path for r in desk.received("DELETE")) == ["/records/c_2", "/records/c_3"]


async def test_max_deletes_stops_a_mass_delete(engine: Engine, crm: System, desk: System) -> None:
    """An empty source under mirror with max_deletes fails plan; nothing is changed."""
    fill(desk, [desk_record(i) for i in range(4)])
    with pytest.raises(WorkflowExecutionError) as raised:
        await sync(engine, crm, desk, mode="mirror", max_deletes=2)
    execution = await engine.executions.get(raised.value.details["execution_id"])
    assert execution.error is not None
    assert (execution.error.step, execution.error.type) == ("plan", "TooManyDeletes")
    assert "would delete 4 records, more than max_deletes (2)" in execution.error.message
    assert len(desk.records) == 4
    assert desk.received("DELETE") == []


async def test_patch_sends_only_the_changes(engine: Engine, crm: System, desk: System) -> None:
    """update_method PATCH sends the changed fields only; the desk keeps its other fields."""
    fill(crm, [crm_record(1, "changed@example.com")])
    fill(desk, [{**desk_record(1), "agent": "Grace"}])
    await sync(engine, crm, desk, update_method="PATCH")
    [patch] = desk.received("PATCH")
    assert patch.body == {"contact_email": "changed@example.com"}
    assert desk.records["c_1"]["agent"] == "Grace"


async def test_refused_records_are_listed_and_the_rest_synced(
    engine: Engine, crm: System, desk: System
) -> None:
    """A create the desk refuses (422) is a per-record error; the others are created."""
    fill(crm, [crm_record(i) for i in range(3)])
    crm.records["c_x"] = {"email": "nokey@example.com"}
    desk.plan("POST", "/records", [PASS, 422])
    execution = await sync(engine, crm, desk)
    result = execution.result
    assert execution.status is ExecutionStatus.COMPLETED
    assert (result["created"], result["failed"], result["rejected"]) == (2, 1, 1)
    [error] = result["errors"]
    assert (error["key"], error["operation"], error["status_code"]) == ("c_1", "create", 422)
    assert result["rejections"] == [
        {"index": 3, "reason": "no usable key 'contact_id' (a string or integer)"}
    ]
    assert sorted(desk.records) == ["c_0", "c_2"]


async def test_transient_failure_retries_without_repeating_done_operations(
    engine: Engine, crm: System, desk: System
) -> None:
    """A 503 on the second create fails apply once; the retry sends it again and skips the first."""
    fill(crm, [crm_record(i) for i in range(3)])
    desk.plan("POST", "/records", [PASS, 503])
    execution = await sync(engine, crm, desk)
    apply = next(s for s in execution.steps or [] if s.name == "apply")
    assert (apply.status, apply.attempts) == (StepStatus.COMPLETED, 2)
    sent = [r.body["contact_id"] for r in desk.received("POST")]
    assert sent == ["c_0", "c_1", "c_1", "c_2"]
    assert execution.result["created"] == 3


async def test_paged_target_listing(engine: Engine, crm: System, desk: System) -> None:
    """The desk's records are read over cursor pages before comparing."""
    fill(crm, [crm_record(i) for i in range(7)])
    fill(desk, [desk_record(i) for i in range(7)])
    desk.page_size = 3
    execution = await sync(
        engine, crm, desk, target_pagination={"type": "cursor", "cursor_field": "next_cursor"}
    )
    assert execution.result["target_records"] == 7
    assert execution.result["unchanged"] == 7
    assert len(desk.received("GET")) == 3
    assert desk.received("POST") == []


async def test_dry_run_plans_without_writing(engine: Engine, crm: System, desk: System) -> None:
    """dry_run lists the planned keys and sends nothing."""
    fill(crm, [crm_record(1), crm_record(2, "x@example.com")])
    fill(desk, [desk_record(2), desk_record(3)])
    execution = await sync(engine, crm, desk, {"dry_run": True}, mode="mirror")
    assert execution.result["plan"] == {"create": ["c_1"], "update": ["c_2"], "delete": ["c_3"]}
    assert (execution.result["created"], execution.result["deleted"]) == (0, 0)
    assert [r.method for r in desk.requests] == ["GET"]


async def test_incremental_reads_changes_since_the_last_completed_run(
    engine: Engine, crm: System, desk: System
) -> None:
    """The second run asks the CRM for records changed since the first run started."""
    fill(crm, [crm_record(1)])
    await connect_systems(engine, int_crm=crm, int_desk=desk)
    configuration = {**BASE_CONFIGURATION, "incremental": True, "since_param": "updated_since"}
    workflow_id = await create_workflow(engine, configuration, INTEGRATIONS, "integration")
    first = await engine.executions.execute(workflow_id, {})
    second = await engine.executions.execute(workflow_id, {})
    assert first.result["since"] is None
    assert first.started_at is not None
    expected = first.started_at.isoformat().replace("+00:00", "Z")
    assert second.result["since"] == expected
    queries = [r.query for r in crm.received("GET")]
    assert queries == [{}, {"updated_since": expected}]
    explicit = await engine.executions.execute(workflow_id, {"since": "2024-01-01T00:00:00Z"})
    assert explicit.result["since"] == "2024-01-01T00:00:00Z"


async def test_records_from_parameters(engine: Engine, desk: System, crm: System) -> None:
    """parameters.records stand in for the source; the source is not called."""
    execution = await sync(engine, crm, desk, {"records": [crm_record(5)]})
    assert execution.result["created"] == 1
    assert execution.result["source_integration"] is None
    assert crm.requests == []


async def test_incremental_ignores_dry_runs_and_runs_on_given_records(
    engine: Engine, crm: System, desk: System
) -> None:
    """A dry run, or a run on parameters.records, does not move where the next run reads from."""
    fill(crm, [crm_record(1)])
    await connect_systems(engine, int_crm=crm, int_desk=desk)
    configuration = {**BASE_CONFIGURATION, "incremental": True, "since_param": "updated_since"}
    workflow_id = await create_workflow(engine, configuration, INTEGRATIONS, "integration")
    first = await engine.executions.execute(workflow_id, {})
    assert first.started_at is not None
    await engine.executions.execute(workflow_id, {"dry_run": True})
    await engine.executions.execute(workflow_id, {"records": [crm_record(2)]})
    third = await engine.executions.execute(workflow_id, {})
    assert third.result["since"] == first.started_at.isoformat().replace("+00:00", "Z")


async def test_incremental_reads_again_from_before_a_run_that_left_records_behind(
    engine: Engine, crm: System, desk: System
) -> None:
    """A run with a refused record does not move `since`: the next run retries that record."""
    fill(crm, [crm_record(1), crm_record(2)])
    await connect_systems(engine, int_crm=crm, int_desk=desk)
    configuration = {**BASE_CONFIGURATION, "incremental": True, "since_param": "updated_since"}
    workflow_id = await create_workflow(engine, configuration, INTEGRATIONS, "integration")
    clean = await engine.executions.execute(workflow_id, {})
    assert clean.started_at is not None
    crm.records["c_3"] = crm_record(3)
    desk.plan("POST", "/records", [422])
    partial = await engine.executions.execute(workflow_id, {})
    assert partial.result["failed"] == 1
    retry = await engine.executions.execute(workflow_id, {})
    assert retry.result["since"] == clean.started_at.isoformat().replace("+00:00", "Z")
    assert retry.result["created"] == 1
    assert "c_3" in desk.records
    assert retry.started_at is not None
    after = await engine.executions.execute(workflow_id, {})
    assert after.result["since"] == retry.started_at.isoformat().replace("+00:00", "Z")


async def test_dot_keys_stay_under_the_record_path(
    engine: Engine, crm: System, desk: System
) -> None:
    """Keys '.' and '..' address records of their own, never the collection or the API root."""
    fill(desk, [desk_record(7)])
    desk.records["."] = {"contact_id": ".", "contact_email": "dot@example.com"}
    desk.records[".."] = {"contact_id": "..", "contact_email": "dots@example.com"}
    await sync(engine, crm, desk, mode="mirror")
    paths = sorted(r.path for r in desk.received("DELETE"))
    assert paths == ["/records/%2E", "/records/%2E%2E", "/records/c_7"]


async def test_restart_in_apply_repeats_only_what_came_after_the_last_save(
    tmp_path: Path, crm: System, desk: System
) -> None:
    """Stopped while the 61st create hangs, the next engine skips the 50 operations apply kept."""
    db = str(tmp_path / "abi.db")
    fill(crm, [crm_record(i) for i in range(80)])
    desk.plan("POST", "/records", [PASS] * 60 + [("sleep", 3.0)])
    async with engine_for(db=db, allow_private_urls=True) as first:
        await connect_systems(first, int_crm=crm, int_desk=desk)
        workflow_id = await create_workflow(
            first, BASE_CONFIGURATION, INTEGRATIONS, workflow_type="integration"
        )
        started = await first.executions.execute(workflow_id, {}, wait=False)
        with anyio.fail_after(20):
            while True:  # the server thread cannot set an anyio.Event: poll
                if len(desk.received("POST")) >= 61:
                    break
                await anyio.sleep(0.02)
    async with engine_for(db=db, allow_private_urls=True) as second:
        done = await second.executions.wait(started.execution_id, timeout=30)
    assert done.status is ExecutionStatus.COMPLETED
    assert done.result["created"] == 80
    sent = Counter(r.body["contact_id"] for r in desk.received("POST"))
    assert set(sent) == {f"c_{i}" for i in range(80)}
    kept = [f"c_{i}" for i in range(80) if sent[f"c_{i}"] == 1]
    assert len(kept) >= 50  # at least the first save's 50 were not sent again
    assert sum(sent.values()) <= 80 + 11  # at most the operations after the save (50..60)
