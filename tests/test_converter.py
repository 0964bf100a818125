"""The converter: strict structuring with field paths, and the seed's JSON on the way out."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from abi_engine.converter import converter, json_copy, structure, unstructure
from abi_engine.errors import InvalidRequest, InvalidWorkflowConfig
from abi_engine.models import Page, WorkflowStats, WorkflowStatus, WorkflowSummary
from abi_engine.workflows import WorkflowRequest


@attrs.define(kw_only=True)
class Sample:
    text: str = "t"
    count: int = 0
    ratio: float = 0.0
    flag: bool = False
    tags: list[str] = attrs.Factory(list)
    extra: dict[str, Any] = attrs.Factory(dict)
    when: datetime | None = None
    status: WorkflowStatus = WorkflowStatus.INACTIVE


def _fail(data: Any, cls: type = Sample) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        structure(data, cls)
    return info.value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("count", True),
        ("count", "3"),
        ("count", 1.5),
        ("text", 5),
        ("text", None),
        ("ratio", False),
        ("ratio", "0.5"),
        ("flag", 1),
        ("flag", "true"),
        ("tags", "a"),
        ("tags", [1]),
        ("extra", []),
        ("when", 1_700_000_000),
        ("when", "not a time"),
        ("status", "paused"),
    ],
)
def test_wrong_types_are_refused_with_the_field(field: str, value: Any) -> None:
    """A wrong type never coerces (bool is not int, int is not str) and names the field."""
    err = _fail({field: value})
    assert err.details["field"] == field
    assert err.details["errors"][0]["field"] == field
    assert field in err.message


def test_accepted_values() -> None:
    """Right types pass: ints for floats, times with offsets, enums by value."""
    got = structure(
        {
            "text": "x",
            "count": 3,
            "ratio": 1,
            "flag": True,
            "tags": ["a"],
            "extra": {"k": [1, None]},
            "when": "2023-05-01T14:00:00+02:00",
            "status": "active",
        },
        Sample,
    )
    assert got == Sample(
        text="x",
        count=3,
        ratio=1.0,
        flag=True,
        tags=["a"],
        extra={"k": [1, None]},
        when=datetime(2023, 5, 1, 12, tzinfo=UTC),
        status=WorkflowStatus.ACTIVE,
    )
    assert isinstance(got.ratio, float)


def test_enum_error_lists_allowed_values() -> None:
    """An unknown enum value says which values are allowed."""
    err = _fail({"status": "paused"})
    assert "active" in err.message
    assert "inactive" in err.message


def test_unknown_keys_are_refused() -> None:
    """Unknown top-level keys are refused, each named as a field."""
    err = _fail({"text": "x", "bogus": 1, "other": 2})
    fields = {e["field"] for e in err.details["errors"]}
    assert fields == {"bogus", "other"}
    assert all(e["message"] == "unknown field" for e in err.details["errors"])


def test_nested_field_paths() -> None:
    """Errors inside lists of objects carry paths like integrations[0].id."""
    base = {"name": "n", "type": "custom"}
    err = _fail({**base, "integrations": [{"id": 5}]}, WorkflowRequest)
    assert err.details["field"] == "integrations[0].id"
    err = _fail({**base, "integrations": [{"id": "int_a"}, {"required": True}]}, WorkflowRequest)
    assert err.details["field"] == "integrations[1].id"
    assert err.details["errors"][0]["message"] == "required field missing"
    err = _fail({**base, "integrations": [{"id": "int_a", "bogus": 1}]}, WorkflowRequest)
    assert err.details["field"] == "integrations[0].bogus"
    err = _fail({**base, "integrations": [{"id": "int_a", "required": "yes"}]}, WorkflowRequest)
    assert err.details["field"] == "integrations[0].required"


def test_every_error_is_listed() -> None:
    """Several bad fields are all reported in details.errors; the first is details.field."""
    err = _fail({"name": 1, "type": 2, "configuration": []}, WorkflowRequest)
    fields = [e["field"] for e in err.details["errors"]]
    assert set(fields) == {"name", "type", "configuration"}
    assert err.details["field"] == fields[0]


def test_missing_required_fields() -> None:
    """A missing required field is named with 'required field missing'."""
    err = _fail({"type": "custom"}, WorkflowRequest)
    assert err.details["errors"] == [{"field": "name", "message": "required field missing"}]


@pytest.mark.parametrize("body", [None, [], "text", 3, True])
def test_non_object_body(body: Any) -> None:
    """A body that is not a JSON object is refused as '(body)'."""
    err = _fail(body, WorkflowRequest)
    assert err.details["field"] == "(body)"


def test_object_keys_must_be_strings() -> None:
    """A mapping with non-string keys is refused for dict[str, Any] fields."""
    err = _fail({"extra": {1: "x"}})
    assert err.details["field"] == "extra"


def test_error_class_is_chosen_by_caller() -> None:
    """structure(..., error=InvalidWorkflowConfig) raises that class with the same details."""
    with pytest.raises(InvalidWorkflowConfig) as info:
        structure({"count": "x"}, Sample, error=InvalidWorkflowConfig)
    assert info.value.details["field"] == "count"


def test_paths_inside_generic_pages() -> None:
    """Structuring a Page names the item and field that is wrong."""
    good = {
        "id": "wf_1",
        "name": "n",
        "type": "custom",
        "status": "active",
        "created_at": "2023-05-01T12:00:00Z",
        "updated_at": "2023-05-01T12:00:00Z",
    }
    data = {
        "items": [good, {**good, "status": 3}],
        "pagination": {"page": 1, "page_size": 10, "total_items": 2, "total_pages": 1},
    }
    err = _fail(data, Page[WorkflowSummary])
    assert err.details["field"] == "items[1].status"


def test_unstructure_json_forms() -> None:
    """Times become RFC 3339 Z strings, enums their values, sets sorted lists."""

    class Color(Enum):
        RED = "red"

    when = datetime(2023, 5, 1, 12, 30, 1, 5000, tzinfo=UTC)
    assert unstructure(when) == "2023-05-01T12:30:01.005Z"
    assert unstructure(WorkflowStatus.ACTIVE) == "active"
    assert unstructure(Color.RED) == "red"
    assert unstructure(frozenset({"b", "a"})) == ["a", "b"]
    assert unstructure([WorkflowStats(runs_total=2)])[0]["runs_total"] == 2


def test_structure_times_to_utc() -> None:
    """Structured times are aware and in UTC whatever offset they were given with."""
    got = structure({"when": "2023-05-01T12:00:00-05:00"}, Sample)
    assert got.when is not None
    assert got.when.tzinfo is UTC
    assert got.when.hour == 17


def test_lists_come_only_from_json_arrays() -> None:
    """An object or a string where a list belongs is refused, naming the field."""
    from abi_engine.workflows import WorkflowRequest

    for value in ({}, "", "int_a", {"id": "int_a"}):
        with pytest.raises(InvalidRequest) as caught:
            structure({"name": "x", "type": "t", "integrations": value}, WorkflowRequest)
        assert caught.value.details["field"] == "integrations"


class _Colour(Enum):
    RED = "red"


class _Sub(dict):  # type: ignore[type-arg]
    """A dict subclass: not JSON data as such, so the converter's own way."""


_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.datetimes(timezones=st.just(UTC)),
    st.just(_Colour.RED),
    st.builds(WorkflowStats, runs_total=st.integers(0, 9)),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=4), inner, max_size=4),
        st.dictionaries(st.text(max_size=3), inner, max_size=2).map(_Sub),
    ),
    max_leaves=25,
)


def _containers(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [value, *(c for v in value.values() for c in _containers(v))]
    if isinstance(value, list):
        return [value, *(c for v in value for c in _containers(v))]
    return []


@given(value=st.dictionaries(st.text(max_size=4), _VALUES, max_size=5))
def test_json_copy_is_the_converters_unstructure(value: dict[str, Any]) -> None:
    """The fast hook of ``dict[str, Any]`` fields gives what cattrs gives (types too:
    ``True`` stays a boolean, ``1.0`` a float), and shares no container with its input."""
    expected = converter.unstructure(value, unstructure_as=dict)
    copied = json_copy(value)
    assert repr(copied) == repr(expected)
    inputs = {id(c) for c in _containers(value)}
    assert not inputs & {id(c) for c in _containers(copied)}


def test_dict_any_fields_take_the_fast_hook() -> None:
    """A model's ``dict[str, Any]`` field is unstructured by :func:`json_copy`: a deep
    copy, times and enums inside in their JSON forms."""
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    summary = WorkflowSummary(
        id="wf_1",
        name="n",
        type="custom",
        status=WorkflowStatus.ACTIVE,
        metadata={"a": {"b": [1, True, None, when, _Colour.RED]}},
        created_at=when,
        updated_at=when,
    )
    data = unstructure(summary)
    assert data["metadata"] == {"a": {"b": [1, True, None, "2024-05-01T12:00:00Z", "red"]}}
    assert data["metadata"]["a"] is not summary.metadata["a"]
    assert converter.get_unstructure_hook(dict[str, Any]) is json_copy
