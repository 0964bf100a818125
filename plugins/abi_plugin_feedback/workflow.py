"""The ``feedback_analysis`` workflow type: configuration, parameters and steps.

Steps, in order:

``extract_sentiment``
    Runs the configured NLP service on ``feedback_text``. Its result is the
    service's :class:`~abi_plugin_feedback.service.Analysis` as JSON (the
    aspects with their text, sentiment, score and topics): the checkpoint the
    next steps build on, so a resumed execution never calls the service twice.
``identify_topics``
    Turns the aspects into one component per topic (aspects about the same
    topic are merged) and ranks the ``primary_topics``. Its result has the
    execution result's full shape, with ``recommendations`` empty.
``generate_recommendations``
    Adds the recommendations. Skipped when the workflow's
    ``generate_recommendations`` or the execution's ``include_recommendations``
    is false; the execution's result is then ``identify_topics``'s.

An execution without ``feedback_text`` (nor ``feedback_id`` / ``customer_id``)
is a report (:mod:`abi_plugin_feedback.report`): the same three steps
collect, summarise and recommend over the feedback the workflow analysed
in the report's period. A workflow's steps depend on its configuration only
(the engine plans them before any parameter is seen), so the report runs in
the same, checkpointed, steps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal, TypeVar

import attrs

from abi_engine import Host, StepContext, WorkflowType, step
from abi_engine.converter import structure
from abi_engine.errors import (
    InvalidParameters,
    InvalidWorkflowConfig,
    ParameterValidationError,
)
from abi_engine.types import json_schema, prefixed_fields
from abi_plugin_feedback import report
from abi_plugin_feedback.recommendations import GENERAL_TOPIC, recommend, rule_table
from abi_plugin_feedback.report import ReportParameters, is_report_request
from abi_plugin_feedback.service import (
    Analysis,
    AnalysisRequest,
    analysis_from_json,
    analysis_to_json,
    run_service,
)
from abi_plugin_feedback.taxonomy import Topic, build_taxonomy

__all__ = [
    "MAX_TEXT_CHARS",
    "FeedbackAnalysis",
    "FeedbackConfiguration",
    "FeedbackParameters",
    "RecommendationRule",
    "ReportParameters",
    "TopicConfig",
    "build_components",
    "primary_topics",
]

#: The longest ``feedback_text`` accepted, in characters.
MAX_TEXT_CHARS = 20_000
#: How many topics ``primary_topics`` lists at most.
MAX_PRIMARY_TOPICS = 3
SUPPORTED_LANGUAGES = ("en",)
_TOPIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_MAX_TOPICS = 100
_MAX_KEYWORDS = 500
_MAX_RULES = 500


@attrs.define(kw_only=True)
class TopicConfig:
    """A ``configuration.topics`` entry: keywords to add (or, with ``replace``, to use)."""

    keywords: list[str] = attrs.Factory(list)
    description: str = ""
    replace: bool = False


@attrs.define(kw_only=True)
class RecommendationRule:
    """A ``configuration.recommendation_rules`` entry."""

    topic: str
    sentiment: Literal["positive", "negative", "neutral", "mixed"]
    text: str
    replace: bool = False


@attrs.define(kw_only=True)
class FeedbackConfiguration:
    """A ``feedback_analysis`` workflow's configuration (see docs/feedback-analysis.md)."""

    nlp_service: str = "default"
    sentiment_analysis: bool = True
    topic_extraction: bool = True
    language: str = "en"
    response_threshold: float = 0.6
    generate_recommendations: bool = True
    custom_service: str | None = None
    topics: dict[str, TopicConfig] = attrs.Factory(dict)
    recommendation_rules: list[RecommendationRule] = attrs.Factory(list)

    @property
    def service_name(self) -> str:
        """The registered service this configuration uses."""
        if self.nlp_service == "custom":
            return self.custom_service or ""
        return self.nlp_service


@attrs.define(kw_only=True)
class FeedbackParameters:
    """An execution's parameters."""

    feedback_text: str
    feedback_id: str | None = None
    customer_id: str | None = None
    source: str | None = None
    include_recommendations: bool | None = None
    #: ``false`` (or absent): analyse this text; ``true`` asks for a report instead.
    generate_report: bool | None = None


def _bad(field: str, message: str, **extra: Any) -> InvalidWorkflowConfig:
    return InvalidWorkflowConfig(
        f"Invalid value for 'configuration.{field}': {message}",
        {"field": f"configuration.{field}", **extra},
    )


def _skip_recommendations(configuration: Mapping[str, Any], parameters: Mapping[str, Any]) -> bool:
    return (
        configuration.get("generate_recommendations", True) is False
        or parameters.get("include_recommendations") is False
    )


_F = TypeVar("_F", bound=Callable[..., Any])
_recommendations_step: Callable[[_F], _F] = step(skip_if=_skip_recommendations)

_ORDER = {"negative": 0, "mixed": 1, "positive": 2, "neutral": 3}


def build_components(analysis: Analysis, allowed: Collection[str]) -> list[dict[str, Any]]:
    """One ``{"topic", "sentiment", "score"}`` per topic, in order of first mention.

    Aspects about the same topic are merged: clearly both positive and
    negative gives ``mixed`` (score: the weaker side's best), otherwise the
    polar side wins with its best score; neutral only when nothing is polar.
    Topics not in ``allowed`` (the taxonomy's names) are dropped. Aspects without topics count
    under ``general`` when the analysis carries no topics at all.
    """
    any_topics = any(a.topics for a in analysis.aspects)
    seen: dict[str, list[tuple[str | None, float | None]]] = {}
    for aspect in analysis.aspects:
        if any_topics:
            names = [m.topic for m in aspect.topics if m.topic in allowed]
        elif aspect.sentiment in ("positive", "negative", "mixed"):
            names = [GENERAL_TOPIC]
        else:
            names = []
        for name in names:
            seen.setdefault(name, []).append((aspect.sentiment, aspect.score))
    components = []
    for name, marks in seen.items():
        sentiment, score = _merge(marks)
        components.append({"topic": name, "sentiment": sentiment, "score": score})
    return components


def _merge(marks: list[tuple[str | None, float | None]]) -> tuple[str | None, float | None]:
    by: dict[str, float] = {}
    for sentiment, score in marks:
        if sentiment is None or score is None:
            continue
        by[sentiment] = max(by.get(sentiment, 0.0), score)
    if not by:
        return None, None
    if "mixed" in by or ("positive" in by and "negative" in by):
        sides = [by[s] for s in ("positive", "negative", "mixed") if s in by]
        return "mixed", round(min(sides), 4)
    for sentiment in ("negative", "positive", "neutral"):
        if sentiment in by:
            return sentiment, round(by[sentiment], 4)
    return None, None  # pragma: no cover - every label is handled above


def primary_topics(components: list[dict[str, Any]]) -> list[str]:
    """Up to three topics, those calling most for a response first.

    Negative before mixed before positive before neutral, then by score.
    """
    ranked = sorted(
        enumerate(components),
        key=lambda ic: (_ORDER.get(ic[1]["sentiment"] or "", 4), -(ic[1]["score"] or 0), ic[0]),
    )
    return [c["topic"] for _, c in ranked[:MAX_PRIMARY_TOPICS]]


class FeedbackAnalysis(WorkflowType):
    """Sentiment, topics and recommendations for one piece of customer feedback."""

    name = "feedback_analysis"
    description = "Analyzes customer feedback"
    docs_url = "docs/feedback-analysis.md"
    Configuration = FeedbackConfiguration
    Parameters = FeedbackParameters

    def __init__(self) -> None:
        self._services: Mapping[str, Any] = {}

    def bind(self, host: Host) -> None:
        """Keep the NLP services plugins registered (``abi_nlp_services``, declared here)."""
        self._services = host.collect("abi_nlp_services", "NLP service")

    # -- configuration -------------------------------------------------------------

    def check_configuration(self, config: Any) -> None:
        """Rules on values: language, threshold, service, topics and rules."""
        if config.language not in SUPPORTED_LANGUAGES:
            raise _bad(
                "language",
                f"language {config.language!r} is not supported",
                allowed=list(SUPPORTED_LANGUAGES),
            )
        if not 0.0 <= config.response_threshold <= 1.0:
            raise _bad("response_threshold", "must be between 0 and 1")
        if not (config.sentiment_analysis or config.topic_extraction):
            raise _bad(
                "sentiment_analysis",
                "at least one of 'sentiment_analysis' and 'topic_extraction' must be true",
            )
        self._check_service(config)
        self._check_topics(config)
        self._check_rules(config)

    def _check_service(self, config: FeedbackConfiguration) -> None:
        builtin = [n for n in ("default", "advanced") if n in self._services]
        if config.nlp_service == "custom":
            if not config.custom_service:
                raise _bad("custom_service", "required when 'nlp_service' is 'custom'")
            if config.custom_service not in self._services:
                raise _bad(
                    "custom_service",
                    f"no NLP service is registered under {config.custom_service!r}",
                    allowed=sorted(set(self._services) - set(builtin)),
                )
        else:
            if config.custom_service is not None:
                raise _bad("custom_service", "only used when 'nlp_service' is 'custom'")
            if config.nlp_service not in self._services:
                raise _bad(
                    "nlp_service",
                    f"unknown NLP service {config.nlp_service!r}",
                    allowed=sorted({*self._services, "custom"}),
                )
        field = "custom_service" if config.nlp_service == "custom" else "nlp_service"
        check = getattr(self._services[config.service_name], "unavailable_reason", None)
        reason = check() if callable(check) else None
        if reason:
            raise _bad(field, reason)

    def _check_topics(self, config: FeedbackConfiguration) -> None:
        if len(config.topics) > _MAX_TOPICS:
            raise _bad("topics", f"at most {_MAX_TOPICS} topics")
        for name, spec in config.topics.items():
            where = f"topics[{name!r}]"
            if not _TOPIC_NAME.match(name):
                raise _bad(where, "topic names are lower_snake_case (a-z, 0-9, _)")
            if len(spec.keywords) > _MAX_KEYWORDS:
                raise _bad(f"{where}.keywords", f"at most {_MAX_KEYWORDS} keywords")
            for index, keyword in enumerate(spec.keywords):
                if not keyword.strip() or keyword.strip() == "*":
                    raise _bad(f"{where}.keywords[{index}]", "keywords must not be empty")

    def _check_rules(self, config: FeedbackConfiguration) -> None:
        if len(config.recommendation_rules) > _MAX_RULES:
            raise _bad("recommendation_rules", f"at most {_MAX_RULES} rules")
        known = {*self.taxonomy(config), GENERAL_TOPIC}
        for index, rule in enumerate(config.recommendation_rules):
            where = f"recommendation_rules[{index}]"
            if rule.topic not in known:
                raise _bad(f"{where}.topic", f"unknown topic {rule.topic!r}", allowed=sorted(known))
            if not rule.text.strip():
                raise _bad(f"{where}.text", "must not be empty")

    # -- parameters ---------------------------------------------------------------

    def parse_parameters(self, parameters: Mapping[str, Any], config: Any) -> Any:
        """``FeedbackParameters`` for a text; ``ReportParameters`` for a report.

        ``generate_report`` chooses: ``true`` is a report (and then
        ``feedback_text``, ``feedback_id`` and ``customer_id`` are refused),
        ``false`` the analysis of ``feedback_text`` (a missing text is
        ``INVALID_PARAMETERS``). Without it, parameters with ``feedback_text``,
        ``feedback_id`` or ``customer_id`` analyse one text, the others ask for
        a report (the seed's nightly schedule sends neither).
        """
        if not isinstance(parameters, Mapping):
            return super().parse_parameters(parameters, config)
        mode = parameters.get("generate_report")
        if mode is not None and not isinstance(mode, bool):
            raise InvalidParameters(
                "Invalid value for 'parameters.generate_report': expected a boolean"
                f" (true: a report; false: analyse feedback_text), got {type(mode).__name__}",
                {"field": "parameters.generate_report"},
            )
        report_mode = mode is True or (mode is None and is_report_request(parameters))
        if not report_mode:
            return super().parse_parameters(parameters, config)
        if not is_report_request(parameters):
            given = sorted(
                k for k in ("feedback_text", "feedback_id", "customer_id") if k in parameters
            )
            raise InvalidParameters(
                "Invalid value for 'parameters.generate_report': a report (true) analyses the"
                f" workflow's recent feedback, not one text: leave out {', '.join(given)}",
                {"field": "parameters.generate_report", "conflicts_with": given},
            )
        with prefixed_fields("parameters"):
            parsed = structure(dict(parameters), ReportParameters, error=InvalidParameters)
        report.check_report_parameters(parsed)
        return parsed

    def check_parameters(self, params: Any, config: Any) -> None:
        """``feedback_text`` must have content and at most ``MAX_TEXT_CHARS`` characters."""
        text = params.feedback_text
        if not text.strip():
            raise ParameterValidationError(
                "Invalid value for 'parameters.feedback_text': must not be empty",
                {"field": "parameters.feedback_text"},
            )
        if len(text) > MAX_TEXT_CHARS:
            raise ParameterValidationError(
                f"Invalid value for 'parameters.feedback_text': at most {MAX_TEXT_CHARS}"
                f" characters, got {len(text)}",
                {"field": "parameters.feedback_text", "max_length": MAX_TEXT_CHARS},
            )

    def parameters_schema(self) -> dict[str, Any]:
        """Either shape: one text to analyse (``feedback_text``) or a report."""
        text, report_schema = json_schema(FeedbackParameters), json_schema(ReportParameters)
        defs = {**text.pop("$defs", {}), **report_schema.pop("$defs", {})}
        schema: dict[str, Any] = {
            "$schema": text.pop("$schema"),
            "anyOf": [text, {k: v for k, v in report_schema.items() if k != "$schema"}],
        }
        if defs:
            schema["$defs"] = defs
        return schema

    # -- helpers ------------------------------------------------------------------

    def taxonomy(self, config: FeedbackConfiguration) -> dict[str, Topic]:
        """The built-in taxonomy with ``config.topics`` applied."""
        return build_taxonomy(config.topics)

    def request(self, config: FeedbackConfiguration) -> AnalysisRequest:
        """What the service is asked for a workflow configured with ``config``."""
        return AnalysisRequest(
            language=config.language,
            sentiment=config.sentiment_analysis,
            topics=config.topic_extraction,
            taxonomy=self.taxonomy(config),
        )

    def service(self, config: FeedbackConfiguration) -> Any:
        """The registered NLP service ``config`` uses."""
        return self._services[config.service_name]

    async def run_inline(
        self, configuration: Mapping[str, Any], parameters: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run the steps in order, in memory, and return the result (no execution record).

        For benchmarks and tests of the analysis itself: nothing is stored, no
        events are sent. Executions go through the engine.
        """
        config = self.parse_configuration(configuration)
        params = self.parse_parameters(parameters, config)
        results: dict[str, Any] = {}
        last: Any = None
        for spec in self.steps(config):
            if spec.skip_if is not None and spec.skip_if(configuration, parameters):
                continue
            ctx = StepContext(
                execution_id="exec_inline",
                workflow_id="wf_inline",
                step_name=spec.name,
                parameters=parameters,
                configuration=configuration,
                params=params,
                config=config,
                results=dict(results),
            )
            last = results[spec.name] = await spec.fn(ctx)
        return dict(last)

    # -- steps --------------------------------------------------------------------

    @step
    async def extract_sentiment(self, ctx: StepContext) -> dict[str, Any]:
        """Run the NLP service; record its analysis (aspects, sentiment, topics).

        A report collects instead: it tallies the period's feedback executions.
        """
        if isinstance(ctx.params, ReportParameters):
            return await self._collect(ctx)
        config: FeedbackConfiguration = ctx.config
        analysis = await run_service(
            self.service(config), ctx.params.feedback_text, self.request(config)
        )
        return analysis_to_json(analysis)

    @step
    async def identify_topics(self, ctx: StepContext) -> dict[str, Any]:
        """Merge aspects into per-topic components and rank the primary topics.

        A report summarises instead: counts, average score, top and negative topics.
        """
        if isinstance(ctx.params, ReportParameters):
            return report.summarize(ctx.results["extract_sentiment"])
        config: FeedbackConfiguration = ctx.config
        analysis = analysis_from_json(ctx.results["extract_sentiment"])
        if not config.topic_extraction:
            analysis = attrs.evolve(
                analysis, aspects=[attrs.evolve(a, topics=[]) for a in analysis.aspects]
            )
        components = build_components(analysis, {*self.taxonomy(config), GENERAL_TOPIC})
        return {
            "sentiment": analysis.sentiment,
            "sentiment_score": analysis.sentiment_score,
            "feedback_components": components,
            "primary_topics": primary_topics(components),
            "recommendations": [],
        }

    @_recommendations_step
    async def generate_recommendations(self, ctx: StepContext) -> dict[str, Any]:
        """Recommend actions for the components whose score reaches the threshold.

        A report ranks the recommendations of the period's feedback instead.
        """
        if isinstance(ctx.params, ReportParameters):
            return report.recommend_report(
                ctx.results["identify_topics"], ctx.results["extract_sentiment"]
            )
        config: FeedbackConfiguration = ctx.config
        result = dict(ctx.results["identify_topics"])
        table = rule_table(config.recommendation_rules)
        result["recommendations"] = recommend(
            result["feedback_components"], table, config.response_threshold
        )
        return result

    async def _collect(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.host is None:
            raise RuntimeError(
                "a report reads the workflow's executions: run it as an execution of the engine"
            )
        return await report.collect(
            ctx.host,
            workflow_id=ctx.workflow_id,
            execution_id=ctx.execution_id,
            params=ctx.params,
            track_recommendations=not _skip_recommendations(ctx.configuration, ctx.parameters),
        )
