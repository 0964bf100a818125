"""``GET /api/v1/workflow_types``: the installed types with their JSON Schemas (#12, point 10).

Each type is listed with its description, the JSON Schema of a workflow's
``configuration`` and of an execution's ``parameters`` (generated from its
attrs classes) and its documentation link; over REST, in OpenAPI and through
``abi.workflows``. The schemas say what the engine accepts: the seed's
examples validate, what the engine refuses for its shape the schemas refuse.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
from abi_asgi import build_openapi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from served_engines import WAYS, Served, served

from abi.workflows import WorkflowManager
from abi_engine import Engine, WorkflowType, step
from abi_engine.errors import InvalidParameters
from abi_engine.json_schema import json_schema
from abi_engine.models import Scope

BUNDLED = {
    "approval",
    "custom",
    "data_processing",
    "feedback_analysis",
    "integration",
    "notification",
    "reporting",
}
SEED_FEEDBACK_CONFIGURATION = {
    "nlp_service": "default",
    "sentiment_analysis": True,
    "topic_extraction": True,
    "language": "en",
    "response_threshold": 0.7,
}
SEED_EXECUTE_PARAMETERS = {
    "feedback_id": "f_12345",
    "customer_id": "c_67890",
    "feedback_text": "I really love your product, but the latest update made the user"
    " interface more complicated. It's still a great service overall though!",
    "source": "email",
    "include_recommendations": True,
}
SEED_SCHEDULE_PARAMETERS = {
    "source": "daily_report",
    "include_recommendations": True,
    "generate_report": True,
}
SEED_NOTIFICATION = {
    "channels": ["email", "slack"],
    "templates": {"email": "template_123", "slack": "template_456"},
    "recipients": {"email": ["user@example.com"], "slack": ["#channel", "@user"]},
    "priority_rules": [
        {"condition": "severity == 'high'", "priority": "urgent"},
        {"condition": "severity == 'medium'", "priority": "normal"},
    ],
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(tmp_path_factory.mktemp("types") / "types.db") as made:
        yield made


def types_by_name(api: Served) -> dict[str, Any]:
    response = api.client().get("/api/v1/workflow_types", params={"page_size": 100})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["pagination"]["total_items"] == len(data["items"])
    return {item["name"]: item for item in data["items"]}


def test_every_installed_type_is_listed_with_its_schemas(api: Served) -> None:
    """Every bundled type, by name, with description, two valid JSON Schemas, docs and plugin."""
    types = types_by_name(api)
    assert set(types) >= BUNDLED
    assert list(types) == sorted(types)
    for name, item in types.items():
        assert set(item) == {
            "name",
            "description",
            "configuration_schema",
            "parameters_schema",
            "docs_url",
            "plugin",
        }
        for key in ("configuration_schema", "parameters_schema"):
            Draft202012Validator.check_schema(item[key])
            assert item[key]["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert item["description"]
        if name in BUNDLED:
            assert item["docs_url"].startswith("docs/")
            assert (Path(__file__).parents[1] / item["docs_url"]).is_file()
            assert item["plugin"]


def test_the_seed_examples_validate_against_the_published_schemas(api: Served) -> None:
    """The seed's configurations and parameters are valid; shapes the engine refuses are not."""
    types = types_by_name(api)
    feedback = types["feedback_analysis"]
    configuration = Draft202012Validator(feedback["configuration_schema"])
    parameters = Draft202012Validator(feedback["parameters_schema"])
    configuration.validate(SEED_FEEDBACK_CONFIGURATION)
    parameters.validate(SEED_EXECUTE_PARAMETERS)
    parameters.validate(SEED_SCHEDULE_PARAMETERS)
    assert not configuration.is_valid({**SEED_FEEDBACK_CONFIGURATION, "colour": "blue"})
    assert not configuration.is_valid({**SEED_FEEDBACK_CONFIGURATION, "language": 7})
    assert not parameters.is_valid({**SEED_EXECUTE_PARAMETERS, "bogus": True})
    notification = Draft202012Validator(types["notification"]["configuration_schema"])
    notification.validate(SEED_NOTIFICATION)
    assert not notification.is_valid({"channels": ["email"]})  # templates, recipients required


@pytest.mark.parametrize("way", WAYS)
def test_python_api_lists_the_types(api: Served, way: str) -> None:
    """WorkflowManager.list_workflow_types gives the same, as WorkflowTypeInfo objects."""
    manager = api.facade(WorkflowManager, way)
    page = manager.list_workflow_types()
    names = [t.name for t in page.items]
    assert set(names) >= BUNDLED
    feedback = next(t for t in page.items if t.name == "feedback_analysis")
    assert feedback.docs_url == "docs/feedback-analysis.md"
    assert "anyOf" in feedback.parameters_schema  # a text, or a report
    small = manager.list_workflow_types(page=2, page_size=3)
    assert [t.name for t in small.items] == names[3:6]
    assert small.pagination.total_items == len(names)


def test_reading_types_takes_workflows_read(api: Served) -> None:
    """A token without workflows:read is 403; with it, 200."""
    executions_only = api.engine.tokens.create_token("usr_x", scopes=[Scope.EXECUTIONS_READ])
    assert api.client(executions_only).get("/api/v1/workflow_types").status_code == 403
    reader = api.engine.tokens.create_token("usr_y", scopes=[Scope.WORKFLOWS_READ])
    assert api.client(reader).get("/api/v1/workflow_types").status_code == 200


def test_operation_is_in_openapi() -> None:
    """The OpenAPI document has the operation and the WorkflowTypeInfo schema."""
    document = build_openapi()
    operation = document["paths"]["/api/v1/workflow_types"]["get"]
    assert operation["operationId"] == "list_workflow_types"
    schema = document["components"]["schemas"]["WorkflowTypeInfo"]
    assert {"configuration_schema", "parameters_schema", "docs_url"} <= set(schema["required"])


# -- the schema generator, against what the converter accepts --------------------------------


@attrs.define(kw_only=True)
class Inner:
    """A nested object."""

    label: str
    weight: float = 1.0


@attrs.define(kw_only=True)
class Sample:
    """Parameters of every kind the generator maps."""

    name: str
    count: int = 0
    ratio: float | None = None
    flag: bool = False
    kind: Literal["a", "b"] = "a"
    tags: list[str] = attrs.Factory(list)
    inner: Inner | None = None
    extra: dict[str, int] = attrs.Factory(dict)


class SampleType(WorkflowType):
    name = "sample"
    description = "A test type"
    Parameters = Sample

    @step
    async def only(self, ctx: Any) -> dict[str, Any]:
        return {}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2) | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_FIELDS = st.sampled_from(["name", "count", "ratio", "flag", "kind", "tags", "inner", "extra", "x"])
_INNER = st.fixed_dictionaries({}, optional={"label": _JSON | st.text(), "weight": _JSON})


@pytest.fixture(scope="module")
def sample_engine() -> Iterator[Engine]:
    from abi_engine import hookimpl

    class Plugin:
        @hookimpl
        def abi_workflow_types(self, register: Any) -> None:
            register(SampleType)

    engine = Engine(":memory:", plugins=[Plugin()], load_entry_points=False)
    try:
        yield engine
    finally:
        engine.close()


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(_FIELDS, _JSON | st.text() | _INNER | st.lists(st.text(), max_size=2)))
def test_schema_accepts_exactly_what_the_converter_accepts(
    sample_engine: Engine, body: dict[str, Any]
) -> None:
    """For any JSON object: valid against the generated parameters schema iff the
    type's parse_parameters accepts it."""
    wtype = sample_engine.workflow_types["sample"]
    validator = Draft202012Validator(wtype.parameters_schema())
    try:
        wtype.parse_parameters(body, None)
        accepted = True
    except InvalidParameters:
        accepted = False
    assert validator.is_valid(body) == accepted, (body, list(validator.iter_errors(body)))


def test_a_type_without_classes_takes_any_object() -> None:
    """No Parameters class: any JSON object."""
    assert json_schema(None) == {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
    }


@attrs.define(kw_only=True)
class _Private:
    _secret_level: int = 0
    name: str


def test_schema_keys_are_the_converters() -> None:
    """A private attribute (``_x``, whose init argument is ``x``) is named in the schema as
    the converter reads it, so a body the schema describes is one the converter takes."""
    from abi_engine.converter import structure

    schema = json_schema(_Private)
    assert set(schema["properties"]) == {"_secret_level", "name"}
    body = {"_secret_level": 3, "name": "n"}
    Draft202012Validator(schema).validate(body)
    assert structure(body, _Private) == _Private(secret_level=3, name="n")
