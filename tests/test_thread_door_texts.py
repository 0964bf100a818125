"""The configuration and plan of a workflow version written as JSON once (issue #18).

An execution stores its workflow's configuration and plan (the steps' names) as they
were when it was accepted. Their JSON text is now written once per compiled version
and kept with it, instead of again for every execution; a new version (an update here
or by another engine on the same database) brings new texts. Both backends, both doors
(the caller's thread, and the loop: an idempotency key sends a call there).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abi_engine import Engine, ExecutionStatus
from abi_engine.ids import utcnow

DatabaseFactory = Callable[..., Any]


def _configuration(names: list[str], factor: int) -> dict[str, Any]:
    return {
        "steps": [
            {
                "name": name,
                "action": "transform",
                "expressions": {"v": f"parameters['i'] * {factor}"},
            }
            for name in names
        ]
    }


@pytest.fixture
def engine(backend_engine: Engine) -> Engine:
    return backend_engine


def _workflow(engine: Engine, configuration: dict[str, Any]) -> str:
    wf = engine.call(
        engine.workflows.create, {"name": "texts", "type": "custom", "configuration": configuration}
    )
    engine.call(engine.workflows.activate, wf.id)
    return wf.id


def _execute(engine: Engine, door: str, wf_id: str, i: int) -> str:
    execute = partial(engine.executions.execute, wait=False)
    if door == "loop":
        execute = partial(execute, idempotency_key=f"k{i}-{time.monotonic_ns()}")
    return engine.call(execute, wf_id, {"i": i}).execution_id


def _stored_texts(engine: Engine, execution_id: str) -> tuple[Any, Any]:
    """The configuration and plan as stored (the columns' JSON, read back)."""
    record = engine.store.get_execution(execution_id)
    assert record is not None
    return record.configuration, record.plan


_NAMES = st.lists(
    st.sampled_from(["a", "b", "c", "é", "step 4"]), min_size=1, max_size=3, unique=True
)
_ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("update"), _NAMES, st.integers(1, 9)),
        st.tuples(st.just("edit"), _NAMES, st.integers(1, 9)),  # another engine's update
        st.tuples(st.just("execute"), st.sampled_from(["thread", "loop"]), st.integers(0, 99)),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_ACTIONS)
def test_each_execution_stores_the_configuration_and_plan_it_was_accepted_under(
    engine: Engine, actions: list[tuple[Any, ...]]
) -> None:
    """Rule: whatever updates came before (through this engine or committed by another
    one on the same database), an execution stores the configuration and the plan of
    the version it was accepted under, and runs its steps."""
    names, factor = ["a"], 2
    wf_id = _workflow(engine, _configuration(names, factor))
    accepted: list[tuple[str, list[str], int, int]] = []
    for kind, first, second in actions:
        if kind == "execute":
            accepted.append((_execute(engine, first, wf_id, second), list(names), factor, second))
            continue
        names, factor = first, second
        if kind == "update":
            engine.call(
                engine.workflows.update, wf_id, {"configuration": _configuration(names, factor)}
            )
        else:
            current = engine.store.get_workflow(wf_id)
            assert current is not None
            changed = attrs.evolve(
                current, updated_at=utcnow(), configuration=_configuration(names, factor)
            )
            assert engine.store.update_workflow(changed)
    for execution_id, plan, used, i in accepted:
        assert _stored_texts(engine, execution_id) == (_configuration(plan, used), plan)
        done = engine.call(engine.executions.wait, execution_id, 60)
        assert done.status is ExecutionStatus.COMPLETED
        assert done.result == {"v": i * used}
        assert [s.name for s in done.steps] == plan


def test_a_version_writes_its_texts_once(engine: Engine) -> None:
    """The executions of one version share its texts (written when the first one is
    accepted); after an update the next execution stores, and keeps, the new ones."""
    wf_id = _workflow(engine, _configuration(["a"], 2))
    first = _execute(engine, "thread", wf_id, 1)
    texts = engine.executions._cache[wf_id].texts
    assert texts is not None
    assert (json.loads(texts[0]), json.loads(texts[1])) == (_configuration(["a"], 2), ["a"])
    _execute(engine, "thread", wf_id, 2)
    assert engine.executions._cache[wf_id].texts is texts  # not written again
    engine.call(engine.workflows.update, wf_id, {"configuration": _configuration(["x", "y"], 3)})
    second = _execute(engine, "thread", wf_id, 3)
    assert engine.executions._cache[wf_id].texts != texts
    assert _stored_texts(engine, first) == (_configuration(["a"], 2), ["a"])
    assert _stored_texts(engine, second) == (_configuration(["x", "y"], 3), ["x", "y"])
    assert engine.call(engine.executions.wait, second, 60).result == {"v": 9}
