"""Models: every attrs model survives unstructure -> JSON -> structure unchanged.

Strategies are derived from each model's type hints, so a model added to
``abi_engine.models`` (or a request model elsewhere) is covered without
writing a strategy by hand; a field type the derivation cannot build fails
loudly here.
"""

from __future__ import annotations

import enum
import importlib
import json
import pkgutil
import re
import types
import typing
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import abi_engine
from abi_engine import api, events, limits, models, workflows
from abi_engine.converter import structure, unstructure

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
JSON_OBJECTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4)

# Times as the API shows them: UTC, millisecond precision.
TIMES = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=UTC)
)

# Fields whose values are constrained beyond their type.
FIELD_OVERRIDES: dict[tuple[type, str], st.SearchStrategy[Any]] = {
    (events.Event, "type"): st.sampled_from(events.EVENT_TYPES),
}


def strategy_for(tp: Any, owner: type | None = None) -> st.SearchStrategy[Any]:
    """A strategy of JSON-round-trippable values of type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return JSON_VALUES
    if tp is datetime:
        return TIMES
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(min_value=-(2**53), max_value=2**53)
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        return st.text(max_size=20)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and attrs.has(tp):
        return model_strategy(tp)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([strategy_for(a, owner) for a in args])
    if origin is dict and args[0] is str:
        return (
            JSON_OBJECTS
            if args[1] is Any
            else st.dictionaries(st.text(max_size=8), strategy_for(args[1]), max_size=3)
        )
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=3)
    if origin in (frozenset, set):
        return st.frozensets(strategy_for(args[0]), max_size=4).map(origin)
    if isinstance(tp, type(None)) or tp is type(None):
        return st.none()
    if origin is typing.Annotated:
        return _limited_strategy(args[0], tp.__metadata__, owner)
    raise NotImplementedError(f"no strategy for {tp!r} (in {owner!r}); extend strategy_for")


def _limited_strategy(
    base: Any, markers: tuple[Any, ...], owner: type | None
) -> st.SearchStrategy[Any]:
    """Values of ``base`` within the field limits among ``markers`` (abi_engine.limits)."""
    found = [m for m in markers if isinstance(m, limits.Constraint)]
    strategy: st.SearchStrategy[Any] = strategy_for(base, owner)
    for marker in found:
        if isinstance(marker, limits.Choice):
            strategy = st.sampled_from(marker.values)
        elif isinstance(marker, limits.Text) and marker.pattern is not None:
            strategy = st.from_regex(marker.pattern)
        elif isinstance(marker, limits.Items):
            strategy = st.lists(strategy_for(typing.get_args(base)[0], owner), max_size=3)
            strategy = strategy.filter(lambda v, m=marker: len(v) >= m.min_items)
        elif isinstance(marker, limits.Number) and base is int:
            strategy = st.integers(
                min_value=int(marker.minimum or 0), max_value=int(marker.maximum or 2**53)
            )
        elif isinstance(marker, limits.Number) and base is float:
            strategy = st.floats(min_value=marker.minimum, max_value=marker.maximum)

    def ok(value: Any) -> bool:
        try:
            for marker in found:
                marker.check(value)
        except ValueError:
            return False
        return True

    return strategy.filter(ok)


def _hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved type (annotations are strings under ``from __future__``)."""
    attrs.resolve_types(cls)
    return {f.name: f.type for f in attrs.fields(cls)}


def model_strategy(cls: type) -> st.SearchStrategy[Any]:
    """``st.builds`` of an attrs class with a strategy per init field."""
    hints = _hints(cls)
    kwargs = {}
    for field in attrs.fields(cls):
        if not field.init:
            continue
        name = field.alias or field.name
        override = FIELD_OVERRIDES.get((typing.get_origin(cls) or cls, field.name))
        kwargs[name] = override if override is not None else strategy_for(hints[field.name], cls)
    return st.builds(cls, **kwargs)


def _model_modules() -> list[types.ModuleType]:
    """abi_engine.models and every abi_engine.models_* module."""
    names = [m.name for m in pkgutil.iter_modules(abi_engine.__path__)]
    return [
        importlib.import_module(f"abi_engine.{n}") for n in sorted(names) if n.startswith("models")
    ]


def _defined_models(module: types.ModuleType) -> list[type]:
    """The non-generic attrs classes a module defines (exported or not)."""
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and attrs.has(value)
        and value.__module__ == module.__name__
        and not getattr(value, "__parameters__", ())
    ]


MODELS: list[Any] = [
    *(cls for module in _model_modules() for cls in _defined_models(module)),
    models.Page[models.WorkflowSummary],
    models.Page[models.Integration],
    workflows.WorkflowRequest,
    workflows.IntegrationSpec,
    api.integrations.IntegrationRequest,
    events.Event,
]


def _name(model: Any) -> str:
    args = typing.get_args(model)
    return f"{model.__name__}[{args[0].__name__}]" if args else str(model.__name__)


def test_model_scan_is_not_vacuous() -> None:
    """The scan of abi_engine.models* finds the core models, so new ones join automatically."""
    found = {typing.get_origin(m) or m for m in MODELS}
    for cls in (models.Workflow, models.Execution, models.Step, models.Page, models.Token):
        assert cls in found
    exported = {getattr(models, n) for n in models.__all__}
    assert {c for c in _defined_models(models)} - exported == set(), "unexported model"


def _datetime_fields(cls: Any) -> list[str]:
    base = typing.get_origin(cls) or cls
    hints = _hints(base)
    return [
        f.name
        for f in attrs.fields(base)
        if hints[f.name] is datetime or datetime in typing.get_args(hints[f.name])
    ]


@pytest.mark.parametrize("model", MODELS, ids=_name)
@given(data=st.data())
def test_round_trip_through_json(model: Any, data: st.DataObject) -> None:
    """unstructure -> JSON -> structure gives an equal object; times are RFC 3339 with Z."""
    obj = data.draw(model_strategy(model) if not typing.get_origin(model) else _page(model))
    plain = unstructure(obj)
    text = json.dumps(plain, allow_nan=False)
    back = structure(json.loads(text), model)
    assert back == obj
    assert unstructure(back) == plain
    if not typing.get_origin(model):
        for name in _datetime_fields(model):
            value = plain.get(name)
            assert value is None or RFC3339.match(value), (name, value)


def _page(model: Any) -> st.SearchStrategy[Any]:
    (item,) = typing.get_args(model)
    return st.builds(
        model,
        items=st.lists(model_strategy(item), max_size=3),
        pagination=model_strategy(models.Pagination),
    )


_API_MODELS = [m for m in MODELS if isinstance(m, type) and m.__module__ == "abi_engine.models"]


@pytest.mark.parametrize("model", _API_MODELS, ids=_name)
@given(data=st.data())
def test_every_field_is_always_in_the_json(model: Any, data: st.DataObject) -> None:
    """Every field of an API model is in its JSON, None ones as null (never left out)."""
    obj = data.draw(model_strategy(model))
    plain = unstructure(obj)
    assert set(plain) == {f.name for f in attrs.fields(model)}
    for field in attrs.fields(model):
        if getattr(obj, field.name) is None:
            assert plain[field.name] is None


def test_empty_fields_are_null() -> None:
    """A workflow never activated, a pending step, a queued execution: nulls, not gaps."""
    now = datetime(2023, 5, 1, 12, tzinfo=UTC)
    wf = models.Workflow(id="wf_1", name="n", type="custom", created_at=now, updated_at=now)
    plain = unstructure(wf)
    assert plain["activated_at"] is None
    assert plain["deactivated_at"] is None
    assert plain["notification_templates"] == []
    wf.activated_at = now
    assert unstructure(wf)["activated_at"] == "2023-05-01T12:00:00Z"
    step = unstructure(models.Step(name="s"))
    assert step == {
        "name": "s",
        "status": "pending",
        "started_at": None,
        "completed_at": None,
        "duration_ms": None,
        "attempts": None,
        "error": None,
        "reused_from": None,
    }
    execution = unstructure(
        models.Execution(
            execution_id="exec_1", workflow_id="wf_1", status=models.ExecutionStatus.QUEUED
        )
    )
    assert execution == {
        "execution_id": "exec_1",
        "workflow_id": "wf_1",
        "workflow_name": None,
        "status": "queued",
        "started_at": None,
        "completed_at": None,
        "duration_ms": None,
        "parameters": {},
        "result": None,
        "error": None,
        "steps": None,
        "callback_url": None,
        "schedule_id": None,
        "scheduled_for": None,
        "created_by": None,
        "created_at": None,
        "rerun_of": None,
        "queued_reason": None,
        "queued_since": None,
        "parent_execution_id": None,
        "concurrency_key": None,
        "rate_limit_key": None,
        "debounce_key": None,
        "debounced_by": None,
    }


def test_workflow_json_matches_the_seed_shape() -> None:
    """A created workflow renders with the seed's field names and value formats."""
    now = datetime(2023, 5, 1, 12, tzinfo=UTC)
    wf = models.Workflow(
        id="wf_123456789",
        name="Customer Feedback Analysis",
        type="feedback_analysis",
        integrations=[models.WorkflowIntegration(id="int_zendesk", required=True)],
        metadata={"department": "customer_success"},
        created_at=now,
        updated_at=now,
        created_by="usr_987654321",
    )
    plain = unstructure(wf)
    assert plain["status"] == "inactive"
    assert plain["integrations"] == [{"id": "int_zendesk", "required": True, "status": "pending"}]
    assert plain["created_at"] == plain["updated_at"] == "2023-05-01T12:00:00Z"
    assert plain["created_by"] == "usr_987654321"
    assert plain["stats"] == {
        "runs_total": 0,
        "runs_success": 0,
        "runs_failed": 0,
        "average_duration_ms": 0,
    }


def test_page_build_counts_pages() -> None:
    """Page.build computes total_pages as the ceiling of total / page_size (0 when empty)."""
    assert models.Page.build([], 1, 10, 0).pagination.total_pages == 0
    assert models.Page.build([], 1, 10, 10).pagination.total_pages == 1
    assert models.Page.build([], 2, 10, 11).pagination.total_pages == 2
    assert unstructure(models.Page.build([1], 3, 5, 21)) == {
        "items": [1],
        "pagination": {"page": 3, "page_size": 5, "total_items": 21, "total_pages": 5},
    }


def test_execution_status_finished() -> None:
    """Only completed, failed, timed_out, cancelled and skipped executions count as
    finished."""
    finished = {s.value for s in models.ExecutionStatus if s.finished}
    assert finished == {"completed", "failed", "timed_out", "cancelled", "skipped"}


def test_statuses_match_the_contract() -> None:
    """Execution, step and workflow statuses and scopes are exactly the contract's."""
    assert [s.value for s in models.ExecutionStatus] == [
        "queued",
        "running",
        "waiting",
        "paused",  # #16: pause and resume (CONTRACT: the next capabilities)
        "completed",
        "failed",
        "timed_out",
        "cancelled",
        "skipped",  # #16: debounce (a later execution with its key replaced it)
    ]
    assert [s.value for s in models.StepStatus] == [
        "pending",
        "running",
        "completed",
        "failed",
        "skipped",
    ]
    assert {s.value for s in models.WorkflowStatus} == {"active", "inactive"}
    assert {s.value for s in models.Scope} == {
        "workflows:read",
        "workflows:write",
        "executions:read",
        "executions:write",
        "schedules:read",
        "schedules:write",
        "webhooks:admin",
        "integrations:admin",
        "audit:read",  # CONTRACT.md, "Names for the next capabilities"
        "metrics:read",  # CONTRACT.md, names for the next capabilities (#15)
    }
