"""data_processing end to end: a real engine, a source and a target system on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from abi_engine import Engine, ExecutionStatus, StepStatus
from abi_engine.errors import (
    IntegrationMissing,
    InvalidParameters,
    InvalidRequest,
    ParameterValidationError,
    WorkflowExecutionError,
)
from abi_engine.testing import engine_for

from .conftest import (
    SEED_CONFIGURATION,
    SEED_INTEGRATIONS,
    connect_systems,
    create_workflow,
    customers,
    run,
)
from .systems import PASS, System, running_system

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FAST_RETRY = {"attempts": 3, "backoff_seconds": 0.0}


async def failed_execution(engine: Engine, raised: pytest.ExceptionInfo[Any]) -> Any:
    return await engine.executions.get(raised.value.details["execution_id"])


async def test_seed_configuration_moves_paged_records_in_batches(
    engine: Engine, source: System, target: System
) -> None:
    """250 records read over 7 cursor pages land renamed in 3 batches of at most 100."""
    source.records = {r["customer_id"]: r for r in customers(250)}
    source.page_size = 40
    await connect_systems(engine, int_salesforce=source, int_zendesk=target)
    configuration = {
        **SEED_CONFIGURATION,
        "pagination": {"type": "cursor", "cursor_field": "next_cursor", "cursor_param": "cursor"},
    }
    execution = await run(engine, configuration)
    assert execution.status is ExecutionStatus.COMPLETED
    assert [s.name for s in execution.steps or []] == ["read", "transform", "write", "summarize"]
    assert [len(b) for b in target.batches] == [100, 100, 50]
    assert target.batches[0][0] == {
        "contact_id": "c_0000",
        "description": "feedback 0",
        "contact_email": "user0@example.com",
        "contact_name": "User 0",
    }
    assert len(source.received("GET", "/records")) == 7
    keys = target.keys_sent()
    assert keys == [f"{execution.execution_id}:batch:{i}" for i in range(3)]
    result = execution.result
    assert (result["read"], result["transformed"], result["written"], result["failed"]) == (
        250,
        250,
        250,
        0,
    )
    assert result["pages"] == 7
    assert result["batches"] == {"size": 100, "total": 3, "written": 3, "failed": 0}
    assert "records" not in result


@pytest.mark.parametrize(
    ("listing", "expected_pages"),
    [
        (
            {
                "source_path": "/pages",
                "records_field": "data.items",
                "pagination": {"type": "page", "page_param": "page", "page_size": 4},
            },
            3,
        ),
        ({"source_path": "/array"}, 1),
    ],
    ids=["page-numbers", "bare-array"],
)
async def test_other_listings(
    listing: dict[str, Any], expected_pages: int, engine: Engine, source: System, target: System
) -> None:
    """Page-number pagination (until a short page) and a bare JSON array are read whole."""
    source.records = {r["customer_id"]: r for r in customers(10)}
    source.page_size = 4
    await connect_systems(engine, int_salesforce=source, int_zendesk=target)
    execution = await run(engine, {**SEED_CONFIGURATION, "batch_size": 3, **listing})
    assert execution.result["read"] == 10
    assert execution.result["pages"] == expected_pages
    assert sorted(target.records) == [f"c_{i:04d}" for i in range(10)]
    assert [len(b) for b in target.batches] == [3, 3, 3, 1]


async def test_invalid_records_are_rejected_with_reasons(
    engine: Engine, source: System, target: System
) -> None:
    """Records failing a required mapping or a validation rule are counted, listed, not sent."""
    rows = customers(5)
    del rows[1]["email"]
    rows[3]["name"] = "x"
    source.records = {r["customer_id"]: r for r in rows}
    await connect_systems(engine, int_salesforce=source, int_zendesk=target)
    configuration = {
        **SEED_CONFIGURATION,
        "field_mappings": [
            {"source": "email", "target": "contact_email", "required": True},
            {"source": "name", "target": "contact_name"},
        ],
        "validation_rules": [
            {"expression": "len(record['contact_name']) > 1", "message": "name too short"}
        ],
        "unmapped_fields": "drop",
    }
    execution = await run(engine, configuration)
    result = execution.result
    assert (result["read"], result["transformed"], result["rejected"]) == (5, 3, 2)
    assert result["rejections"] == [
        {"index": 1, "reason": "missing required field 'email'"},
        {"index": 3, "reason": "name too short"},
    ]
    assert sorted(target.records) == ["c_0000", "c_0002", "c_0004"]


async def test_a_failed_batch_is_retried_without_resending_finished_ones(
    engine: Engine, source: System, target: System
) -> None:
    """The third batch answers 503 once: the retried step sends it again, and only it."""
    source.records = {r["customer_id"]: r for r in customers(8)}
    target.plan("POST", "/records", [PASS, PASS, 503])
    await connect_systems(engine, int_salesforce=source, int_zendesk=target)
    execution = await run(engine, {**SEED_CONFIGURATION, "batch_size": 2, "retry": FAST_RETRY})
    assert execution.status is ExecutionStatus.COMPLETED
    keys = [key.rsplit(":", 1)[1] for key in target.keys_sent()]
    assert keys == ["0", "1", "2", "2", "3"]
    assert len(target.batches) == 4
    write = next(s for s in execution.steps or [] if s.name == "write")
    assert write.attempts == 2
    assert execution.result["written"] == 8


async def test_refused_batches_can_be_skipped(
    engine: Engine, source: System, target: System
) -> None:
    """on_batch_error continue: a 422 batch is listed as failed and the others are written."""
    source.records = {r["customer_id"]: r for r in customers(6)}
    target.plan("POST", "/records", [PASS, 422])
    await connect_systems(engine, int_salesforce=source, int_zendesk=target)
    configuration = {**SEED_CONFIGURATION, "batch_size": 2, "on_batch_error": "continue"}
    execution = await run(engine, configuration)
    result = execution.result
    assert execution.status is ExecutionStatus.COMPLETED
    assert (result["written"], result["failed"]) == (4, 2)
    assert result["batches"] == {"size": 2, "total": 3, "written": 2, "failed": 1}
    [failed] = result["failed_batches"]
    assert (failed["index"], failed["records"], failed["status_code"]) == (1, 2, 422)
    assert "answered 422" in failed["error"]


async def test_a_refused_batch_fails_the_execution_without_leaking_the_token(
    engine: Engine, source: System, target: System
) -> None:
    """on_batch_error fail: a 400 fails write after its tries; the error names it, not the token."""
    source.records = {r["customer_id"]: r for r in customers(2)}
    target.plan("POST", "/records", [400, 400])
    await connect_systems(engine, int_salesforce=source)
    secret = "sk_live_0123456789abcdef"
    await engine.integrations.put(
        "int_zendesk", "http", target.connection(auth={"type": "bearer", "token": secret})
    )
    configuration = {**SEED_CONFIGURATION, "retry": {"attempts": 2, "backoff_seconds": 0}}
    with pytest.raises(WorkflowExecutionError) as raised:
        await run(engine, configuration)
    execution = await failed_execution(engine, raised)
    write = next(s for s in execution.steps if s.name == "write")
    assert (write.status, write.attempts) == (StepStatus.FAILED, 2)
    assert "POST int_zendesk/records answered 400" in execution.error.message
    assert target.received("POST")[0].headers["authorization"] == f"Bearer {secret}"
    assert (execution.error.step, execution.error.type) == ("write", "RemoteError")
    assert write.error is not None
    assert "answered 400" in write.error.message
    assert secret not in execution.error.message + write.error.message
    assert secret not in str(raised.value.message) + str(raised.value.details)


async def test_a_slow_target_times_out(engine: Engine, source: System, target: System) -> None:
    """A target slower than the connection's timeout fails the step with 'timed out'."""
    source.records = {r["customer_id"]: r for r in customers(1)}
    target.plan("POST", "/records", [("sleep", 1.0), ("sleep", 1.0)])
    await connect_systems(engine, int_salesforce=source)
    await engine.integrations.put("int_zendesk", "http", target.connection(timeout_seconds=0.2))
    configuration = {**SEED_CONFIGURATION, "retry": {"attempts": 2, "backoff_seconds": 0}}
    with pytest.raises(WorkflowExecutionError) as raised:
        await run(engine, configuration)
    execution = await failed_execution(engine, raised)
    assert "POST int_zendesk/records timed out" in execution.error.message


async def test_a_failing_source_fails_read(engine: Engine, source: System, target: System) -> None:
    """The source answering 500 on every try fails read; nothing is written."""
    source.plan("GET", "/records", [500, 500, 500])
    await connect_systems(engine, int_salesforce=source, int_zendesk=target)
    with pytest.raises(WorkflowExecutionError) as raised:
        await run(engine, {**SEED_CONFIGURATION, "retry": FAST_RETRY})
    execution = await failed_execution(engine, raised)
    assert [s.status for s in execution.steps] == [StepStatus.FAILED] + [StepStatus.PENDING] * 3
    assert execution.steps[0].attempts == 3
    assert "GET int_salesforce/records answered 500" in execution.error.message
    assert target.requests == []


async def test_records_from_parameters_and_dry_run(engine: Engine, target: System) -> None:
    """Records given as parameters are mapped; a dry run writes nothing and returns them."""
    await connect_systems(engine, int_zendesk=target)
    configuration = {**SEED_CONFIGURATION, "source_integration": None}
    integrations = [{"id": "int_zendesk", "required": True}]
    parameters = {"records": customers(3), "dry_run": True}
    execution = await run(engine, configuration, parameters, integrations)
    assert target.requests == []
    assert execution.result["dry_run"] is True
    assert [r["contact_id"] for r in execution.result["records"]] == ["c_0000", "c_0001", "c_0002"]
    assert execution.result["source_integration"] is None


async def test_parameters_are_checked(engine: Engine) -> None:
    """No records and no source is 422 naming parameters.records; a wrong type is 400."""
    configuration = {**SEED_CONFIGURATION, "source_integration": None, "target_integration": None}
    workflow_id = await create_workflow(engine, configuration, [])
    with pytest.raises(ParameterValidationError) as raised:
        await engine.executions.execute(workflow_id, {})
    assert raised.value.details["field"] == "parameters.records"
    with pytest.raises(InvalidParameters) as wrong:
        await engine.executions.execute(workflow_id, {"records": "all"})
    assert wrong.value.details["field"] == "parameters.records"


async def test_integrations_must_be_listed_and_connected(
    engine: Engine, source: System, target: System
) -> None:
    """Required but unconnected: 409 INTEGRATION_MISSING; not listed: read fails naming it."""
    workflow_id = await create_workflow(engine, SEED_CONFIGURATION)
    with pytest.raises(IntegrationMissing):
        await engine.executions.execute(workflow_id, {})
    await connect_systems(engine, int_salesforce=source, int_zendesk=target)
    with pytest.raises(WorkflowExecutionError) as raised:
        await run(engine, {**SEED_CONFIGURATION, "retry": FAST_RETRY}, integrations=[])
    execution = await failed_execution(engine, raised)
    assert "'int_salesforce' (configuration.source_integration) is not connected" in (
        execution.error.message
    )


async def test_private_addresses_need_allow_private_urls(
    tmp_path: Path, source: System, target: System
) -> None:
    """Without allow_private_urls a connection to 127.0.0.1 is refused when put, and one stored
    anyway (by an engine allowing it, on the same database) before any request."""
    db = str(tmp_path / "abi.db")
    async with engine_for(db=db, allow_private_urls=True) as allowing:
        await connect_systems(allowing, int_salesforce=source, int_zendesk=target)
    async with engine_for(db=db) as strict:
        with pytest.raises(InvalidRequest) as refused:
            await connect_systems(strict, int_salesforce=source)
        assert refused.value.details["field"] == "config.base_url"
        with pytest.raises(WorkflowExecutionError) as raised:
            await run(strict, {**SEED_CONFIGURATION, "retry": {"attempts": 1}})
        execution = await failed_execution(strict, raised)
    assert "not allowed" in execution.error.message
    assert source.requests == []


async def _wait_for(check: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while True:  # the server thread cannot set an anyio.Event: poll
            if check():
                return
            await anyio.sleep(0.02)


@pytest.mark.parametrize(
    ("write_steps", "writes"),
    [(4, ["write_1", "write_2", "write_3", "write_4"]), (1, ["write"])],
    ids=["a-step-per-batch", "one-write-step"],
)
async def test_restart_resends_only_the_batch_in_flight(
    tmp_path: Path, write_steps: int, writes: list[str]
) -> None:
    """Stopped while batch 3 of 4 hangs, the next engine resends only that batch: finished
    write steps are checkpointed, and a write step keeps its progress per batch."""
    db = str(tmp_path / "abi.db")
    with (
        running_system(customers(8), key="customer_id") as source,
        running_system(key="contact_id") as target,
    ):
        target.plan("POST", "/records", [PASS, PASS, ("sleep", 3.0)])
        configuration = {**SEED_CONFIGURATION, "batch_size": 2, "write_steps": write_steps}
        async with engine_for(db=db, allow_private_urls=True) as first:
            await connect_systems(first, int_salesforce=source, int_zendesk=target)
            workflow_id = await create_workflow(first, configuration, SEED_INTEGRATIONS)
            started = await first.executions.execute(workflow_id, {}, wait=False)
            await _wait_for(lambda: len(target.received("POST")) == 3)
        async with engine_for(db=db, allow_private_urls=True) as second:
            done = await second.executions.wait(started.execution_id, timeout=20)
        assert done.status is ExecutionStatus.COMPLETED
        batches = [key.rsplit(":", 1)[1] for key in target.keys_sent()]
        assert sorted(batches) == ["0", "1", "2", "2", "3"]
        steps = [s.name for s in done.steps or []]
        assert steps == ["read", "transform", *writes, "summarize"]
        assert done.result["written"] == 8
        assert len(source.received("GET")) == 1
