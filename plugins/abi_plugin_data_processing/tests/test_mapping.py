"""The mapping rules, safe expressions and configuration checks, without a runtime."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_engine import Engine
from abi_engine.errors import InvalidWorkflowConfig
from abi_plugin_data_processing import (
    Expression,
    ExpressionError,
    FieldMapping,
    MappingOptions,
    RecordMapper,
    ValidationRule,
    get_path,
    set_path,
)

from .conftest import SEED_CONFIGURATION

pytestmark = pytest.mark.anyio

FIELDS = ["a", "b", "c", "d", "e"]
scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
records = st.dictionaries(st.sampled_from(FIELDS), scalars, max_size=5)


@st.composite
def rule_sets(draw: st.DrawFn) -> tuple[dict[str, str], list[dict[str, Any]], str]:
    """Random renames and field mappings over FIELDS, with defaults and required flags."""
    renames = draw(
        st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(["x", "y", "z"]), max_size=3)
    )
    mappings = []
    for _ in range(draw(st.integers(0, 3))):
        mapping: dict[str, Any] = {
            "source": draw(st.sampled_from(FIELDS)),
            "target": draw(st.sampled_from(["x", "y", "z", "w"])),
        }
        choice = draw(st.sampled_from(["plain", "default", "required"]))
        if choice == "default":
            mapping["default"] = draw(scalars)
        elif choice == "required":
            mapping["required"] = True
        mappings.append(mapping)
    return renames, mappings, draw(st.sampled_from(["keep", "drop"]))


def oracle(
    record: dict[str, Any],
    renames: dict[str, str],
    mappings: list[dict[str, Any]],
    unmapped: str,
) -> dict[str, Any] | None:
    """The documented rules for flat field names, written out plainly (None: rejected)."""
    rules = [{"source": s, "target": t} for s, t in renames.items()] + mappings
    out: dict[str, Any] = {}
    for rule in rules:
        value = record.get(rule["source"])
        if value is None:
            if "default" in rule:
                value = rule["default"]
            elif rule.get("required"):
                return None
            else:
                continue
        out[rule["target"]] = value
    if unmapped == "keep":
        read = {rule["source"] for rule in rules}
        for key, value in record.items():
            if key not in read and key not in out:
                out[key] = value
    return out


def mapper_for(
    renames: dict[str, str], mappings: list[dict[str, Any]], unmapped: str = "keep", **more: Any
) -> RecordMapper:
    return RecordMapper(
        MappingOptions(
            transformation_rules=renames,
            field_mappings=[FieldMapping(**m) for m in mappings],
            unmapped_fields=unmapped,  # type: ignore[arg-type]
            **more,
        )
    )


@settings(max_examples=200, deadline=None)
@given(record=records, rules=rule_sets())
def test_mapping_matches_the_oracle(
    record: dict[str, Any], rules: tuple[dict[str, str], list[dict[str, Any]], str]
) -> None:
    """Any record under any flat rule set maps exactly as the plain oracle says."""
    renames, mappings, unmapped = rules
    out, reason = mapper_for(renames, mappings, unmapped).map(record)
    expected = oracle(record, renames, mappings, unmapped)
    assert out == expected
    assert (reason is None) == (expected is not None)


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(records | st.integers(), max_size=20), rules=rule_sets())
def test_map_all_accounts_for_every_record(
    batch: list[Any], rules: tuple[dict[str, str], list[dict[str, Any]], str]
) -> None:
    """Mapped plus rejected is the input; each rejection names the input index it stands for."""
    renames, mappings, unmapped = rules
    mapped, rejected = mapper_for(renames, mappings, unmapped).map_all(batch)
    assert len(mapped) + len(rejected) == len(batch)
    expected_rejected = [
        i
        for i, r in enumerate(batch)
        if not isinstance(r, dict) or oracle(r, renames, mappings, unmapped) is None
    ]
    assert [r.index for r in rejected] == expected_rejected


paths = st.lists(st.sampled_from(["p", "q", "r"]), min_size=1, max_size=4).map(".".join)


@settings(max_examples=100, deadline=None)
@given(start=st.dictionaries(st.sampled_from(["p", "q"]), scalars), path=paths, value=scalars)
def test_set_then_get_a_dotted_path(start: dict[str, Any], path: str, value: Any) -> None:
    """A value set at a dotted path is found there, whatever stood in the way before."""
    record = dict(start)
    set_path(record, path, value)
    assert get_path(record, path) == (True, value)


def test_seed_rules_rename_and_map() -> None:
    """The seed's rules rename customer_id/feedback and map email/name; other fields stay."""
    mapper = RecordMapper(
        MappingOptions(
            transformation_rules=SEED_CONFIGURATION["transformation_rules"],
            field_mappings=[FieldMapping(**m) for m in SEED_CONFIGURATION["field_mappings"]],
        )
    )
    out, reason = mapper.map(
        {"customer_id": "c_1", "feedback": "ok", "email": "a@b.c", "name": "Ada", "tier": "gold"}
    )
    assert reason is None
    assert out == {
        "contact_id": "c_1",
        "description": "ok",
        "contact_email": "a@b.c",
        "contact_name": "Ada",
        "tier": "gold",
    }


def test_nested_paths_expressions_and_validation() -> None:
    """Dotted sources and targets, an expression, required fields and a validation rule."""
    mapper = mapper_for(
        {"address.city": "location.city"},
        [
            {"source": "price", "target": "cents", "expression": "round(value * 100)"},
            {"source": "tier", "target": "tier", "default": "basic"},
        ],
        "drop",
        required_fields=["location.city"],
        validation_rules=[ValidationRule(expression="record['cents'] > 0", message="free")],
    )
    assert mapper.map({"address": {"city": "Oslo"}, "price": 1.5}) == (
        {"location": {"city": "Oslo"}, "cents": 150, "tier": "basic"},
        None,
    )
    assert mapper.map({"address": {}, "price": 1}) == (
        None,
        "missing required field 'location.city'",
    )
    assert mapper.map({"address": {"city": "Oslo"}, "price": 0}) == (None, "free")
    assert mapper.map({"address": {"city": "Oslo"}, "price": "x"})[1] == (
        "cents: TypeError: type str doesn't define __round__ method"
    )


@pytest.mark.parametrize(
    "source",
    [
        "__import__('os').system('true')",
        "().__class__.__bases__",
        "open('/etc/passwd')",
        "'a' * 10**9",
    ],
)
def test_expressions_cannot_escape(source: str) -> None:
    """Imports, dunder attributes, unknown functions and huge values are refused."""
    with pytest.raises(ExpressionError):
        Expression(source).evaluate({})


def test_expression_syntax_is_checked_up_front() -> None:
    """A malformed expression fails when it is built, not when a record meets it."""
    with pytest.raises(ExpressionError, match="invalid expression"):
        Expression("value +")


CONFIG_MISTAKES = [
    ({"batch_size": 0}, "configuration.batch_size"),
    ({"batch_size": 10_001}, "configuration.batch_size"),
    ({"batch_size": "100"}, "configuration.batch_size"),
    (
        {"field_mappings": [{"source": "email", "target": "e"}, {"source": "name"}]},
        "configuration.field_mappings[1].target",
    ),
    ({"field_mappings": [{"source": "", "target": "x"}]}, "configuration.field_mappings[0].source"),
    (
        {"field_mappings": [{"source": "a", "target": "x", "expression": "1 +"}]},
        "configuration.field_mappings[0].expression",
    ),
    (
        {"field_mappings": [{"source": "a", "target": "x", "required": True, "default": 1}]},
        "configuration.field_mappings[0].default",
    ),
    (
        {"field_mappings": [{"source": "a", "target": "x"}, {"source": "b", "target": "x.y"}]},
        "configuration.field_mappings[0].target",
    ),
    (
        {"transformation_rules": {"customer_id": 5}},
        "configuration.transformation_rules['customer_id']",
    ),
    ({"transformation_rules": {"a..b": "c"}}, "configuration.transformation_rules.a..b"),
    ({"source_integration": "salesforce"}, "configuration.source_integration"),
    ({"target_integration": "int_ bad"}, "configuration.target_integration"),
    ({"source_path": "https://elsewhere.example/x"}, "configuration.source_path"),
    ({"target_path": "//elsewhere.example/x"}, "configuration.target_path"),
    ({"target_path": "/a/../admin"}, "configuration.target_path"),
    ({"target_method": "DELETE"}, "configuration.target_method"),
    ({"write_steps": 0}, "configuration.write_steps"),
    ({"unmapped_fields": "ignore"}, "configuration.unmapped_fields"),
    (
        {"validation_rules": [{"expression": "record["}]},
        "configuration.validation_rules[0].expression",
    ),
    ({"required_fields": ["ok", ""]}, "configuration.required_fields[1]"),
    ({"pagination": {"type": "offset"}}, "configuration.pagination.type"),
    ({"pagination": {"type": "page", "page_size": 0}}, "configuration.pagination.page_size"),
    ({"max_pages": 0}, "configuration.max_pages"),
    ({"source_params": {"q": [1]}}, "configuration.source_params.q"),
    ({"retry": {"attempts": 0}}, "configuration.retry.attempts"),
    ({"on_batch_error": "ignore"}, "configuration.on_batch_error"),
    ({"batchsize": 10}, "configuration.batchsize"),
]


@pytest.mark.parametrize(("change", "field"), CONFIG_MISTAKES)
async def test_configuration_mistakes_name_the_field(
    change: dict[str, Any], field: str, engine: Engine
) -> None:
    """Each mistake is INVALID_WORKFLOW_CONFIG whose details.field names the offending field."""
    with pytest.raises(InvalidWorkflowConfig) as raised:
        await engine.workflows.create(
            {
                "name": "dp",
                "type": "data_processing",
                "configuration": {**SEED_CONFIGURATION, **change},
            }
        )
    assert raised.value.http_status == 400
    assert raised.value.details["field"] == field


async def test_seed_configuration_is_accepted(engine: Engine) -> None:
    """The seed's data-processing configuration creates a workflow as it stands."""
    workflow = await engine.workflows.create(
        {"name": "dp", "type": "data_processing", "configuration": SEED_CONFIGURATION}
    )
    assert workflow.configuration == SEED_CONFIGURATION
    assert engine.workflow_types["data_processing"].description == "Processes and transforms data"
