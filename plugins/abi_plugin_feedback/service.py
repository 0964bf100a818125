"""The NLP service interface of ``feedback_analysis``.

A service turns one feedback text into an :class:`Analysis`: the text split
into aspects (clauses), each with its sentiment, a score and the topics it is
about, and the sentiment of the whole text. The built-in ``default`` and
``advanced`` services implement it; another plugin provides its own through
the ``abi_nlp_services`` hook::

    @hookimpl
    def abi_nlp_services(register):
        register("acme_llm", AcmeLlmService())

A service is any object with an ``analyze(text, request)`` method, plain or
``async``. A plain method runs in a worker thread so that a blocking call
(an HTTP client, a model) does not stall the engine; a service that is cheap
enough to run on the event loop says so with ``inline = True``. ``analyze``
returns an :class:`Analysis` or a dict of the same shape.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import anyio.to_thread
import attrs

from abi_engine.converter import structure, unstructure
from abi_engine.errors import WorkflowExecutionError
from abi_plugin_feedback.taxonomy import Topic

__all__ = [
    "SENTIMENTS",
    "Analysis",
    "AnalysisRequest",
    "Aspect",
    "NLPService",
    "Sentiment",
    "TopicMatch",
    "run_service",
]

Sentiment = Literal["positive", "negative", "neutral", "mixed"]
SENTIMENTS: tuple[str, ...] = ("positive", "negative", "neutral", "mixed")


def _unit(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value}")


@attrs.frozen(kw_only=True)
class TopicMatch:
    """A topic an aspect is about, and how sure the service is of it (0..1)."""

    topic: str
    confidence: float = attrs.field(default=1.0, validator=_unit)


@attrs.frozen(kw_only=True)
class Aspect:
    """One aspect of the text: a clause, its sentiment and what it is about.

    ``score`` is the confidence of ``sentiment``, from 0 to 1 (see the
    module docs of the plugin for the built-in services' scale). Both are
    ``None`` when the request asked for no sentiment.
    """

    text: str
    sentiment: Sentiment | None = None
    score: float | None = attrs.field(default=None, validator=_unit)
    topics: list[TopicMatch] = attrs.Factory(list)


@attrs.frozen(kw_only=True)
class Analysis:
    """What a service found in one text.

    ``sentiment`` is the whole text's label (``mixed`` when it clearly praises
    and clearly criticises), ``sentiment_score`` its confidence from 0 to 1;
    both are ``None`` when the request asked for no sentiment.
    """

    sentiment: Sentiment | None
    sentiment_score: float | None = attrs.field(default=None, validator=_unit)
    aspects: list[Aspect] = attrs.Factory(list)


@attrs.frozen(kw_only=True)
class AnalysisRequest:
    """What the workflow asks of a service for one text.

    :ivar language: the text's language (``"en"``).
    :ivar sentiment: label sentiment (the workflow's ``sentiment_analysis``).
    :ivar topics: match topics (the workflow's ``topic_extraction``).
    :ivar taxonomy: the topics to choose from, by name, with their
        descriptions and keywords (built-in topics plus the workflow's
        ``configuration.topics``). Only these names count as topics.
    """

    language: str = "en"
    sentiment: bool = True
    topics: bool = True
    taxonomy: Mapping[str, Topic] = attrs.Factory(dict)


@runtime_checkable
class NLPService(Protocol):
    """What an NLP service provides: ``analyze(text, request)``, plain or ``async``."""

    def analyze(self, text: str, request: AnalysisRequest) -> Any:
        """Return the :class:`Analysis` of ``text`` (or a dict of its shape)."""
        ...


async def run_service(service: Any, text: str, request: AnalysisRequest) -> Analysis:
    """Call ``service.analyze`` the way it wants and check what it answers.

    A coroutine function is awaited; a plain function runs in a worker thread
    unless the service sets ``inline = True``. An answer of the wrong shape
    raises :class:`~abi_engine.errors.WorkflowExecutionError` naming the field.
    """
    analyze = service.analyze
    if inspect.iscoroutinefunction(analyze):
        answer = await analyze(text, request)
    elif getattr(service, "inline", False):
        answer = analyze(text, request)
    else:
        answer = await anyio.to_thread.run_sync(analyze, text, request)
    if inspect.isawaitable(answer):
        answer = await answer
    if isinstance(answer, Analysis):
        return answer
    if isinstance(answer, Mapping):
        try:
            return structure(dict(answer), Analysis, error=WorkflowExecutionError)
        except WorkflowExecutionError as exc:
            exc.message = f"The NLP service answered an invalid analysis: {exc.message}"
            exc.args = (exc.message,)
            raise
    raise WorkflowExecutionError(
        f"The NLP service answered {type(answer).__name__}, not an Analysis",
        {"field": "analysis"},
    )


def analysis_to_json(analysis: Analysis) -> dict[str, Any]:
    """The JSON form of an analysis (what ``extract_sentiment`` records)."""
    data: dict[str, Any] = unstructure(analysis)
    return data


def analysis_from_json(data: Mapping[str, Any]) -> Analysis:
    """Rebuild an :class:`Analysis` from its recorded JSON."""
    return structure(dict(data), Analysis, error=WorkflowExecutionError)
