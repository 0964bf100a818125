"""The default analysis through the type's steps: the seed's answer, scores, topics, rules."""

from __future__ import annotations

from typing import Any

import pytest

from abi_engine import StepContext
from abi_engine.errors import InvalidParameters, ParameterValidationError
from abi_plugin_feedback.default import VaderService, aspect_score, split_aspects
from abi_plugin_feedback.service import AnalysisRequest
from abi_plugin_feedback.taxonomy import DEFAULT_TOPICS, TopicMatcher, build_taxonomy
from abi_plugin_feedback.workflow import MAX_TEXT_CHARS

from .conftest import SEED_CONFIGURATION, SEED_PARAMETERS, SEED_TEXT, RunSteps

pytestmark = pytest.mark.anyio

RESULT_KEYS = {
    "sentiment",
    "sentiment_score",
    "feedback_components",
    "primary_topics",
    "recommendations",
}


def text(value: str, **extra: Any) -> dict[str, Any]:
    """Parameters with ``feedback_text=value``."""
    return {"feedback_text": value, **extra}


def components(result: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """The result's components as ``{topic: (sentiment, score)}``."""
    return {c["topic"]: (c["sentiment"], c["score"]) for c in result["feedback_components"]}


async def test_seed_example_gives_the_seed_answer(run_steps: RunSteps) -> None:
    """The seed's text: mixed, product praised, interface criticised, both recommendations."""
    result, ran = await run_steps(SEED_CONFIGURATION, SEED_PARAMETERS)
    assert ran == ["extract_sentiment", "identify_topics", "generate_recommendations"]
    assert set(result) == RESULT_KEYS
    assert result["sentiment"] == "mixed"
    assert 0.0 <= result["sentiment_score"] <= 1.0
    found = components(result)
    assert found["product_overall"][0] == "positive"
    assert found["user_interface"][0] == "negative"
    for _, score in found.values():
        assert 0.7 <= score <= 1.0
    assert "user_interface" in result["primary_topics"]
    assert "product_overall" in result["primary_topics"]
    assert result["recommendations"] == [
        "Consider simplifying the user interface in the next update",
        "Highlight the positive overall experience in your response",
    ]


async def test_result_is_json_with_the_seed_shape(run_steps: RunSteps) -> None:
    """Every component has exactly topic, sentiment and score; values are JSON types."""
    result, _ = await run_steps({}, text("The checkout page is slow and the prices are high."))
    for component in result["feedback_components"]:
        assert set(component) == {"topic", "sentiment", "score"}
        assert component["sentiment"] in {"positive", "negative", "neutral", "mixed"}
        assert isinstance(component["score"], float)
    assert isinstance(result["primary_topics"], list)
    assert isinstance(result["recommendations"], list)


@pytest.mark.parametrize(
    ("sentence", "sentiment"),
    [
        ("Your support team solved my problem in ten minutes. Thank you!", "positive"),
        ("The app crashed three times during my presentation today.", "negative"),
        ("Could you send me a copy of last month's invoice?", "neutral"),
        ("The plan is affordable, but the signal is terrible in my area.", "mixed"),
        ("The app is not slow at all.", "positive"),
        ("It took forever to get a reply.", "negative"),
    ],
)
async def test_overall_labels(run_steps: RunSteps, sentence: str, sentiment: str) -> None:
    """Each of the four labels, negation and a phrase rule come out right."""
    result, _ = await run_steps({}, text(sentence))
    assert result["sentiment"] == sentiment


async def test_scores_follow_intensity(run_steps: RunSteps) -> None:
    """A stronger complaint scores higher than a milder one."""
    mild, _ = await run_steps({}, text("The app is a bit slow."))
    strong, _ = await run_steps({}, text("The app is horribly, unbearably slow!!!"))
    assert mild["sentiment"] == strong["sentiment"] == "negative"
    assert strong["sentiment_score"] > mild["sentiment_score"] >= 0.5


def test_score_scale() -> None:
    """Polar compounds map to 0.5..1, neutral ones to 1 at zero, down to 0.5 at the band."""
    assert aspect_score(1.0) == 1.0
    assert aspect_score(-0.4) == 0.7
    assert aspect_score(0.0) == 1.0
    assert aspect_score(0.049) == pytest.approx(0.51)


def test_aspects_split_on_contrast_and_sentences() -> None:
    """Sentences and contrast words make aspects; a trailing "though" does not."""
    assert split_aspects(SEED_TEXT) == [
        "I really love your product",
        "but the latest update made the user interface more complicated.",
        "It's still a great service overall though!",
    ]
    assert split_aspects("Although the price is high, the quality is great.") == [
        "Although the price is high",
        "the quality is great.",
    ]
    assert split_aspects("Fast app; however, billing is confusing") == [
        "Fast app",
        "however, billing is confusing",
    ]


def test_longest_keyword_wins() -> None:
    """ "customer service" is support, not product_overall; wildcards match endings."""
    matcher = TopicMatcher(DEFAULT_TOPICS)
    assert matcher.find("The customer service was great") == ["support"]
    assert matcher.find("It crashed and the sign-up failed") == ["reliability", "onboarding"]
    assert matcher.find("nothing to see here") == []


async def test_component_per_topic_is_merged(run_steps: RunSteps) -> None:
    """Praise and criticism of one topic in two aspects make one mixed component."""
    result, _ = await run_steps(
        {}, text("The support agent was wonderful. But the support hotline is awful.")
    )
    assert components(result)["support"][0] == "mixed"
    assert [c["topic"] for c in result["feedback_components"]].count("support") == 1


async def test_unnamed_praise_refers_to_what_came_before(run_steps: RunSteps) -> None:
    """An aspect without a topic takes the previous aspect's, else product_overall."""
    result, _ = await run_steps({}, text("The delivery was late. Absolutely unacceptable."))
    assert set(components(result)) == {"delivery"}
    result, _ = await run_steps({}, text("Terrible."))
    assert components(result) == {"product_overall": ("negative", pytest.approx(0.7384))}


async def test_threshold_limits_what_is_acted_on(run_steps: RunSteps) -> None:
    """Components scoring below response_threshold get no recommendation."""
    feedback = text("The prices are a bit expensive. The support agent was absolutely fantastic!")
    low, _ = await run_steps({"response_threshold": 0.5}, feedback)
    high, _ = await run_steps({"response_threshold": 0.8}, feedback)
    scores = components(low)
    assert scores["pricing"][1] < 0.8 <= scores["support"][1]
    assert any("pricing" in r for r in low["recommendations"])
    assert not any("pricing" in r for r in high["recommendations"])
    assert "Pass the customer's thanks on to the support team" in high["recommendations"]
    assert high["feedback_components"] == low["feedback_components"]


async def test_negative_recommendations_come_first(run_steps: RunSteps) -> None:
    """Recommendations for complaints precede those for praise."""
    result, _ = await run_steps({}, text("Delivery was quick and great. The refund never arrived!"))
    assert result["recommendations"][0].startswith("Check the customer's billing record")


@pytest.mark.parametrize(
    ("configuration", "parameters"),
    [
        ({"generate_recommendations": False}, {}),
        ({}, {"include_recommendations": False}),
    ],
)
async def test_recommendations_step_is_skipped(
    run_steps: RunSteps, configuration: dict[str, Any], parameters: dict[str, Any]
) -> None:
    """Recommendations off (workflow or execution): the step is skipped, the result has []."""
    result, ran = await run_steps(configuration, text(SEED_TEXT, **parameters))
    assert ran == ["extract_sentiment", "identify_topics"]
    assert set(result) == RESULT_KEYS
    assert result["recommendations"] == []
    assert result["sentiment"] == "mixed"


async def test_without_topic_extraction(run_steps: RunSteps) -> None:
    """topic_extraction false: sentiment per aspect under "general", no primary topics."""
    result, _ = await run_steps({"topic_extraction": False}, text(SEED_TEXT))
    assert result["feedback_components"] == [
        {"topic": "general", "sentiment": "mixed", "score": pytest.approx(0.7852)}
    ]
    assert result["primary_topics"] == ["general"]
    assert result["recommendations"][0] == "Follow up with the customer to resolve their concern"


async def test_without_sentiment_analysis(run_steps: RunSteps) -> None:
    """sentiment_analysis false: topics only; sentiment fields are null, nothing recommended."""
    result, _ = await run_steps({"sentiment_analysis": False}, text(SEED_TEXT))
    assert result["sentiment"] is None
    assert result["sentiment_score"] is None
    assert {c["topic"] for c in result["feedback_components"]} == {
        "product_overall",
        "user_interface",
    }
    assert all(c["sentiment"] is None for c in result["feedback_components"])
    assert result["recommendations"] == []


async def test_configured_topics_extend_and_replace(run_steps: RunSteps) -> None:
    """configuration.topics adds topics, adds keywords, and replaces or removes built-ins."""
    feedback = text("The loyalty points expired and the hotline was rude.")
    result, _ = await run_steps(
        {"topics": {"loyalty": {"keywords": ["points", "reward*"]}}}, feedback
    )
    assert set(components(result)) == {"loyalty", "support"}
    result, _ = await run_steps({"topics": {"support": {"keywords": ["hotline"]}}}, feedback)
    assert "support" in components(result)
    result, _ = await run_steps(
        {"topics": {"support": {"keywords": [], "replace": True}}},
        text("The agent was rude."),
    )
    assert "support" not in components(result)


def test_taxonomy_replace_removes_a_topic() -> None:
    """build_taxonomy drops a built-in topic replaced by no keywords."""

    class Spec:
        keywords: list[str] = []
        description = ""
        replace = True

    assert "support" not in build_taxonomy({"support": Spec()})
    assert "support" in build_taxonomy({})


async def test_configured_rules_come_first_or_replace(run_steps: RunSteps) -> None:
    """recommendation_rules add text before the built-in rule, or replace it."""
    rule = {"topic": "user_interface", "sentiment": "negative", "text": "Open a UX ticket"}
    added, _ = await run_steps({"recommendation_rules": [rule]}, text(SEED_TEXT))
    assert added["recommendations"][:2] == [
        "Open a UX ticket",
        "Consider simplifying the user interface in the next update",
    ]
    replaced, _ = await run_steps(
        {"recommendation_rules": [{**rule, "replace": True}]}, text(SEED_TEXT)
    )
    assert (
        "Consider simplifying the user interface in the next update"
        not in replaced["recommendations"]
    )
    assert replaced["recommendations"][0] == "Open a UX ticket"


async def test_steps_called_directly(feedback: Any) -> None:
    """Each step works on a StepContext built by hand; extract_sentiment keeps the aspects."""
    config = feedback.parse_configuration(SEED_CONFIGURATION)
    params = feedback.parse_parameters(SEED_PARAMETERS, config)
    specs = {s.name: s for s in feedback.steps(config)}

    def ctx(name: str, results: dict[str, Any]) -> StepContext:
        return StepContext(
            execution_id="exec_1",
            workflow_id="wf_1",
            step_name=name,
            parameters=SEED_PARAMETERS,
            configuration=SEED_CONFIGURATION,
            params=params,
            config=config,
            results=results,
        )

    analysis = await specs["extract_sentiment"].fn(ctx("extract_sentiment", {}))
    assert [a["text"] for a in analysis["aspects"]] == split_aspects(SEED_TEXT)
    assert analysis["sentiment"] == "mixed"
    topics = await specs["identify_topics"].fn(
        ctx("identify_topics", {"extract_sentiment": analysis})
    )
    assert topics["recommendations"] == []
    final = await specs["generate_recommendations"].fn(
        ctx("generate_recommendations", {"extract_sentiment": analysis, "identify_topics": topics})
    )
    assert final["feedback_components"] == topics["feedback_components"]
    assert len(final["recommendations"]) == 2


def test_default_service_directly() -> None:
    """The service answers an Analysis with scores in 0..1 and topics from the taxonomy."""
    request = AnalysisRequest(taxonomy=build_taxonomy({}))
    analysis = VaderService().analyze("Billing is a mess but the app is fast.", request)
    assert analysis.sentiment == "mixed"
    assert [(a.sentiment, [t.topic for t in a.topics]) for a in analysis.aspects] == [
        ("negative", ["billing"]),
        ("positive", ["performance"]),
    ]


# -- parameters -----------------------------------------------------------------------


async def test_missing_text_is_invalid_parameters(run_steps: RunSteps) -> None:
    """No feedback_text: INVALID_PARAMETERS naming parameters.feedback_text."""
    with pytest.raises(InvalidParameters) as info:
        await run_steps({}, {"feedback_id": "f_1"})
    assert info.value.details["field"] == "parameters.feedback_text"


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"feedback_text": 42}, "parameters.feedback_text"),
        (
            {"feedback_text": "ok", "include_recommendations": "yes"},
            "parameters.include_recommendations",
        ),
        ({"feedback_text": "ok", "source": ["email"]}, "parameters.source"),
        ({"feedback_text": "ok", "mood": "happy"}, "parameters.mood"),
    ],
)
async def test_wrong_shapes(run_steps: RunSteps, parameters: dict[str, Any], field: str) -> None:
    """Wrong types and unknown parameters are INVALID_PARAMETERS naming the field."""
    with pytest.raises(InvalidParameters) as info:
        await run_steps({}, parameters)
    assert info.value.details["field"] == field


@pytest.mark.parametrize("value", ["", "   \n\t "])
async def test_empty_text_is_a_validation_error(run_steps: RunSteps, value: str) -> None:
    """Blank text: PARAMETER_VALIDATION_ERROR (422)."""
    with pytest.raises(ParameterValidationError) as info:
        await run_steps({}, text(value))
    assert info.value.http_status == 422
    assert info.value.details["field"] == "parameters.feedback_text"


async def test_text_length_limit(run_steps: RunSteps) -> None:
    """Up to MAX_TEXT_CHARS characters are analysed; one more is refused."""
    sentence = "The app is slow. "
    longest = (sentence * (MAX_TEXT_CHARS // len(sentence) + 1))[:MAX_TEXT_CHARS]
    result, _ = await run_steps({}, text(longest))
    assert result["sentiment"] == "negative"
    with pytest.raises(ParameterValidationError) as info:
        await run_steps({}, text(longest + "x"))
    assert info.value.details["max_length"] == MAX_TEXT_CHARS
