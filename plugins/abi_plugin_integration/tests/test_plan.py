"""The sync plan: compared with a plain oracle, and converging once applied."""

from __future__ import annotations

import json
from typing import Any

import pytest
from abi_plugin_data_processing import set_path
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_engine import Engine
from abi_engine.errors import InvalidWorkflowConfig, ParameterValidationError
from abi_plugin_integration import json_equal, key_of, plan_sync

from .conftest import BASE_CONFIGURATION, INTEGRATIONS

pytestmark = pytest.mark.anyio

keys = st.one_of(
    st.sampled_from(["k1", "k2", "k3", "k4", ""]),
    st.integers(1, 4),
    st.booleans(),
    st.none(),
)
values = st.none() | st.integers(-3, 3) | st.sampled_from(["a", "b"]) | st.booleans()
fields = st.dictionaries(st.sampled_from(["f", "g", "h"]), values, max_size=3)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    record = draw(fields)
    if draw(st.integers(0, 9)) > 0:  # one in ten has no key field at all
        record["id"] = draw(keys)
    return record


def oracle_key(record: dict[str, Any]) -> str | None:
    value = record.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def oracle(
    source: list[dict[str, Any]],
    target: list[dict[str, Any]],
    mirror: bool,
    compare: list[str] | None,
) -> tuple[list[str], list[str], list[str], int, list[int]]:
    """(creates, updates, deletes, unchanged, rejected indexes) by the documented rules."""
    existing: dict[str, dict[str, Any]] = {}
    for record in target:
        k = oracle_key(record)
        if k is not None and k not in existing:
            existing[k] = record
    creates, updates, rejected, seen = [], [], [], []
    unchanged = 0
    for index, record in enumerate(source):
        k = oracle_key(record)
        if k is None or k in seen:
            rejected.append(index)
            continue
        seen.append(k)
        if k not in existing:
            creates.append(k)
            continue
        there = existing[k]
        names = compare if compare is not None else list(record)
        if any(
            name in record
            and (name not in there or canonical(record[name]) != canonical(there[name]))
            for name in names
        ):
            updates.append(k)
        else:
            unchanged += 1
    deletes = [k for k in existing if k not in seen] if mirror else []
    return creates, updates, deletes, unchanged, rejected


@settings(max_examples=200, deadline=None)
@given(
    source=st.lists(records(), max_size=8),
    target=st.lists(records(), max_size=8),
    mirror=st.booleans(),
    compare=st.none() | st.lists(st.sampled_from(["f", "g", "h"]), unique=True, max_size=2),
)
def test_plan_matches_the_oracle(
    source: list[dict[str, Any]],
    target: list[dict[str, Any]],
    mirror: bool,
    compare: list[str] | None,
) -> None:
    """Creates, updates, deletes, unchanged and rejections are exactly the oracle's."""
    plan = plan_sync(
        list(enumerate(source)), target, key="id", mirror=mirror, compare_fields=compare
    )
    creates, updates, deletes, unchanged, rejected = oracle(source, target, mirror, compare)
    assert [k for k, _ in plan.creates] == creates
    assert [k for k, _ in plan.updates] == updates
    assert plan.deletes == deletes
    assert plan.unchanged == unchanged
    assert [r.index for r in plan.rejected] == rejected


def apply(target: list[dict[str, Any]], plan: Any, *, partial: bool) -> list[dict[str, Any]]:
    """What a target that follows the plan holds afterwards (first record per key)."""
    by_key: dict[str, dict[str, Any]] = {}
    for record in target:
        k = key_of(record, "id")
        if k is not None and k not in by_key:
            by_key[k] = dict(record)
    for k, body in plan.creates:
        by_key[k] = dict(body)
    for k, body in plan.updates:
        if partial:
            for name, value in body.items():
                set_path(by_key[k], name, value)
        else:
            by_key[k] = dict(body)
    for k in plan.deletes:
        del by_key[k]
    return list(by_key.values())


@settings(max_examples=150, deadline=None)
@given(
    source=st.lists(records(), max_size=8),
    target=st.lists(records(), max_size=8),
    mirror=st.booleans(),
    partial=st.booleans(),
)
def test_an_applied_plan_converges(
    source: list[dict[str, Any]], target: list[dict[str, Any]], mirror: bool, partial: bool
) -> None:
    """After applying a plan (PUT or PATCH), planning again finds nothing to do."""
    first = plan_sync(
        list(enumerate(source)), target, key="id", mirror=mirror, partial_updates=partial
    )
    after = apply(target, first, partial=partial)
    again = plan_sync(
        list(enumerate(source)), after, key="id", mirror=mirror, partial_updates=partial
    )
    assert (again.creates, again.updates, again.deletes) == ([], [], [])
    if mirror:
        wanted = {key_of(r, "id") for r in source} - {None}
        assert {key_of(r, "id") for r in after} == wanted


def test_json_equality_of_values() -> None:
    """Numbers compare by value, booleans are not numbers, containers compare deeply."""
    assert json_equal(1, 1.0)
    assert not json_equal(True, 1)
    assert not json_equal(0, False)
    assert json_equal({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not json_equal({"a": 1}, {"a": 1, "b": 2})
    assert not json_equal("1", 1)


def test_patch_updates_carry_only_changed_fields() -> None:
    """With partial updates, an update's body holds the changed fields, nested for dotted paths."""
    plan = plan_sync(
        [(0, {"id": "k", "name": "Ada", "address": {"city": "Oslo"}})],
        [{"id": "k", "name": "Ada", "address": {"city": "Bergen"}}],
        key="id",
        mirror=False,
        compare_fields=["name", "address.city"],
        partial_updates=True,
    )
    assert plan.updates == [("k", {"address": {"city": "Oslo"}})]


CONFIG_MISTAKES = [
    ({"target_record_path": "/records"}, "configuration.target_record_path"),
    ({"mode": "replace"}, "configuration.mode"),
    ({"mode": "mirror", "incremental": True}, "configuration.incremental"),
    ({"compare_fields": ["ok", "bad..path"]}, "configuration.compare_fields[1]"),
    (
        {"target_pagination": {"type": "page", "page_size": 0}},
        "configuration.target_pagination.page_size",
    ),
    ({"target_params": {"q": {"a": 1}}}, "configuration.target_params.q"),
    ({"target_max_pages": 0}, "configuration.target_max_pages"),
    ({"max_deletes": -1}, "configuration.max_deletes"),
    ({"update_method": "POST"}, "configuration.update_method"),
    ({"key": ""}, "configuration.key"),
    ({"target_integration": None}, "configuration.target_integration"),
    ({"field_mappings": [{"source": "email"}]}, "configuration.field_mappings[0].target"),
]


@pytest.mark.parametrize(("change", "field"), CONFIG_MISTAKES)
async def test_configuration_mistakes_name_the_field(
    change: dict[str, Any], field: str, engine: Engine
) -> None:
    """Each mistake is INVALID_WORKFLOW_CONFIG naming the offending field."""
    with pytest.raises(InvalidWorkflowConfig) as raised:
        await engine.workflows.create(
            {
                "name": "sync",
                "type": "integration",
                "configuration": {**BASE_CONFIGURATION, **change},
                "integrations": INTEGRATIONS,
            }
        )
    assert raised.value.details["field"] == field


@pytest.mark.parametrize(
    ("mode", "since"),
    [
        ("upsert", "yesterday"),
        ("upsert", "2024-05-01T00:00:00"),
        ("mirror", "2024-05-01T00:00:00Z"),
    ],
)
async def test_since_is_checked(mode: str, since: str, engine: Engine) -> None:
    """since must be an RFC 3339 time with a zone, and a mirror refuses it (422)."""
    workflow = await engine.workflows.create(
        {
            "name": "sync",
            "type": "integration",
            "configuration": {**BASE_CONFIGURATION, "mode": mode},
        }
    )
    await engine.workflows.activate(workflow.id)
    with pytest.raises(ParameterValidationError) as raised:
        await engine.executions.execute(workflow.id, {"since": since})
    assert raised.value.details["field"] == "parameters.since"
