"""Custom NLP services through abi_nlp_services, the advanced service, and quality on the eval set."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abi_engine import Engine, hookimpl
from abi_engine.errors import WorkflowExecutionError
from abi_plugin_feedback import Analysis, AnalysisRequest, Aspect, NLPService, TopicMatch

from .conftest import SEED_CONFIGURATION, SEED_PARAMETERS, SEED_TEXT, run_type_steps

pytestmark = pytest.mark.anyio

EVAL = Path(__file__).resolve().parents[3] / "tests" / "data" / "feedback_eval.jsonl"


class KeywordLlm:
    """A stand-in for a company's own model: sync, records what it was asked, runs in a thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, AnalysisRequest, str]] = []

    def analyze(self, text: str, request: AnalysisRequest) -> Analysis:
        self.calls.append((text, request, threading.current_thread().name))
        sentiment = "negative" if "refund" in text else "positive"
        aspect = Aspect(
            text=text,
            sentiment=sentiment,
            score=0.9,
            topics=[TopicMatch(topic="billing", confidence=0.8), TopicMatch(topic="weather")],
        )
        return Analysis(sentiment=sentiment, sentiment_score=0.9, aspects=[aspect])


class AsyncDictService:
    """An async service answering a plain dict of the Analysis shape."""

    async def analyze(self, text: str, request: AnalysisRequest) -> dict[str, Any]:
        return {
            "sentiment": "neutral",
            "sentiment_score": 0.99,
            "aspects": [{"text": text, "sentiment": "neutral", "score": 0.99, "topics": []}],
        }


class BrokenService:
    """A service whose answer has a score outside 0..1."""

    def analyze(self, text: str, request: AnalysisRequest) -> dict[str, Any]:
        return {"sentiment": "positive", "sentiment_score": 7, "aspects": []}


class AcmePlugin:
    """A test plugin registering three services through the public hook."""

    def __init__(self) -> None:
        self.llm = KeywordLlm()

    @hookimpl
    def abi_nlp_services(self, register: Any) -> None:
        register("acme_llm", self.llm)
        register("acme_async", AsyncDictService())
        register("acme_broken", BrokenService())


@pytest.fixture
def acme() -> AcmePlugin:
    return AcmePlugin()


@pytest.fixture
def acme_engine(acme: AcmePlugin) -> Iterator[Engine]:
    eng = Engine(":memory:", plugins=[acme])
    try:
        yield eng
    finally:
        eng.close()


def custom(name: str, **extra: Any) -> dict[str, Any]:
    return {**SEED_CONFIGURATION, "nlp_service": "custom", "custom_service": name, **extra}


def test_services_satisfy_the_protocol(acme: AcmePlugin) -> None:
    """Built-in and plugin services are NLPService (analyze(text, request))."""
    eng = Engine(":memory:", plugins=[acme])
    try:
        for name in ("default", "advanced", "acme_llm", "acme_async"):
            assert isinstance(eng.registry.nlp_services[name], NLPService)
    finally:
        eng.close()


async def test_custom_service_is_used(acme_engine: Engine, acme: AcmePlugin) -> None:
    """A workflow configured with a plugin's service runs it (in a worker thread) and uses its answer."""
    workflow = await acme_engine.workflows.create(
        {"name": "fb", "type": "feedback_analysis", "configuration": custom("acme_llm")}
    )
    assert workflow.configuration["custom_service"] == "acme_llm"
    feedback = acme_engine.workflow_types["feedback_analysis"]
    result, _ = await run_type_steps(
        feedback, custom("acme_llm"), {"feedback_text": "Where is my refund?"}
    )
    assert result["sentiment"] == "negative"
    # "weather" is not in the taxonomy: dropped
    assert result["feedback_components"] == [
        {"topic": "billing", "sentiment": "negative", "score": 0.9}
    ]
    text, request, thread = acme.llm.calls[-1]
    assert text == "Where is my refund?"
    assert "billing" in request.taxonomy
    assert request.sentiment
    assert request.topics
    assert thread != threading.current_thread().name


async def test_async_service_answering_a_dict(acme_engine: Engine) -> None:
    """An async service may answer a dict of the Analysis shape."""
    feedback = acme_engine.workflow_types["feedback_analysis"]
    result, _ = await run_type_steps(feedback, custom("acme_async"), {"feedback_text": "hello"})
    assert result["sentiment"] == "neutral"
    assert result["feedback_components"] == []


async def test_invalid_answer_fails_the_step(acme_engine: Engine) -> None:
    """A service answering an invalid analysis fails with WORKFLOW_EXECUTION_ERROR."""
    feedback = acme_engine.workflow_types["feedback_analysis"]
    with pytest.raises(WorkflowExecutionError) as info:
        await run_type_steps(feedback, custom("acme_broken"), {"feedback_text": "hello"})
    assert "sentiment_score" in info.value.message


async def test_nlp_service_may_name_a_registered_service(acme_engine: Engine) -> None:
    """As the hookspec says, nlp_service may also name a registered service directly."""
    feedback = acme_engine.workflow_types["feedback_analysis"]
    configuration = {**SEED_CONFIGURATION, "nlp_service": "acme_async"}
    result, _ = await run_type_steps(feedback, configuration, {"feedback_text": "hello"})
    assert result["sentiment"] == "neutral"


# -- advanced -----------------------------------------------------------------------


async def test_advanced_gives_the_seed_answer(feedback: Any) -> None:
    """The advanced service (MiniLM embeddings, offline) gives the seed's answer too."""
    configuration = {**SEED_CONFIGURATION, "nlp_service": "advanced"}
    result, _ = await run_type_steps(feedback, configuration, SEED_PARAMETERS)
    assert result["sentiment"] == "mixed"
    found = {c["topic"]: c["sentiment"] for c in result["feedback_components"]}
    assert found["product_overall"] == "positive"
    assert found["user_interface"] == "negative"
    assert "Consider simplifying the user interface in the next update" in result["recommendations"]
    assert "Highlight the positive overall experience in your response" in result["recommendations"]


async def test_advanced_finds_topics_without_keywords(feedback: Any) -> None:
    """Embeddings find a topic that no keyword names, and hear a complaint without sentiment words."""
    configuration = {**SEED_CONFIGURATION, "nlp_service": "advanced"}
    result, _ = await run_type_steps(
        feedback, configuration, {"feedback_text": "I had to send my passport three times."}
    )
    assert result["sentiment"] == "negative"
    default, _ = await run_type_steps(
        feedback, SEED_CONFIGURATION, {"feedback_text": "I had to send my passport three times."}
    )
    assert default["sentiment"] == "neutral"


# -- quality ------------------------------------------------------------------------


def load_eval() -> list[dict[str, Any]]:
    return [json.loads(line) for line in EVAL.read_text(encoding="utf-8").splitlines() if line]


def test_eval_set_is_large_varied_and_labelled() -> None:
    """At least 150 texts, several domains, all four polarities, short and long, known topics."""
    from abi_plugin_feedback.taxonomy import DEFAULT_TOPICS

    items = load_eval()
    assert len(items) >= 150
    assert len({i["domain"] for i in items}) >= 8
    assert {i["polarity"] for i in items} == {"positive", "negative", "neutral", "mixed"}
    assert min(len(i["text"]) for i in items) < 20 < 300 < max(len(i["text"]) for i in items)
    names = {t.name for t in DEFAULT_TOPICS}
    assert all(i["topics"] and set(i["topics"]) <= names for i in items)
    assert {i["split"] for i in items} == {"dev", "test"}
    assert len({i["text"] for i in items}) == len(items)


def score(items: list[dict[str, Any]], results: list[dict[str, Any]]) -> tuple[float, float]:
    right = tp = fn = 0
    for item, result in zip(items, results, strict=True):
        right += result["sentiment"] == item["polarity"]
        predicted = {c["topic"] for c in result["feedback_components"]}
        tp += len(predicted & set(item["topics"]))
        fn += len(set(item["topics"]) - predicted)
    return right / len(items), tp / (tp + fn)


async def test_quality_default_and_advanced(feedback: Any) -> None:
    """Default meets the aims on the whole set; advanced is better on the held-out half."""
    items = load_eval()

    async def run(service: str, chosen: list[dict[str, Any]]) -> list[dict[str, Any]]:
        configuration = {"nlp_service": service}
        return [
            (await run_type_steps(feedback, configuration, {"feedback_text": i["text"]}))[0]
            for i in chosen
        ]

    polarity, recall = score(items, await run("default", items))
    assert polarity >= 0.85
    assert recall >= 0.80
    held_out = [i for i in items if i["split"] == "test"]
    default = score(held_out, await run("default", held_out))
    advanced = score(held_out, await run("advanced", held_out))
    assert advanced[0] > default[0]
    assert advanced[1] > default[1]


def test_seed_text_constant_matches_the_seed() -> None:
    """The tests use the seed's exact feedback text."""
    assert SEED_TEXT.startswith("I really love your product, but the latest update")
