"""A workflow's version (its ``updated_at``) changes with every change, even two in one
millisecond: the compiled-workflow caches of every process compare it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from abi_engine import Engine, ExecutionStatus, WorkflowStatus
from abi_engine.models import Workflow
from abi_engine.storage.base import Store


def test_two_changes_in_one_millisecond_make_two_versions(
    store: Store, new_workflow: Callable[..., Workflow]
) -> None:
    workflow = new_workflow()
    store.insert_workflow(workflow)
    first = store.workflow_version(workflow.id)
    same_time = attrs.evolve(workflow, status=WorkflowStatus.ACTIVE)
    assert store.update_workflow(same_time)
    second = store.workflow_version(workflow.id)
    assert store.update_workflow(attrs.evolve(same_time, status=WorkflowStatus.INACTIVE))
    third = store.workflow_version(workflow.id)
    assert first is not None
    assert second is not None
    assert third is not None
    assert first < second < third
    stored = store.get_workflow(workflow.id)
    assert stored is not None
    assert stored.updated_at == third
    assert stored.status is WorkflowStatus.INACTIVE


def test_an_activation_right_after_a_deactivation_is_seen(databases: Any) -> None:
    """Deactivate then activate at once, many times: a start right after always sees the
    workflow active (its compiled form is never taken from a stale cache)."""
    engine = Engine(databases())
    try:
        wf = engine.call(
            engine.workflows.create,
            {
                "name": "flip",
                "type": "custom",
                "configuration": {
                    "steps": [{"name": "v", "action": "transform", "expressions": {"v": "1"}}]
                },
            },
        )
        engine.call(engine.workflows.activate, wf.id)
        for _ in range(30):
            engine.call(engine.executions.compiled, wf.id)  # cached as active
            engine.call(engine.workflows.deactivate, wf.id)
            engine.call(engine.workflows.activate, wf.id)
            started = engine.call(engine.executions.execute, wf.id, {}, wait=False)
            assert started.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
    finally:
        engine.close()
