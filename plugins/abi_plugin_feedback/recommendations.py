"""Recommendation rules: what to do about each (topic, sentiment) of a feedback.

A rule says: when the feedback has a component about ``topic`` with
``sentiment`` whose score reaches the workflow's ``response_threshold``,
recommend ``text``. Built-in rules cover every built-in topic for negative
and positive components, and ``general`` (used when topic extraction is off).
A workflow's ``configuration.recommendation_rules`` adds rules (they come
first), and a rule with ``"replace": true`` hides the built-in rule of its
(topic, sentiment).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_RULES", "GENERAL_TOPIC", "recommend", "rule_table"]

#: The topic of components when topic extraction is switched off.
GENERAL_TOPIC = "general"

DEFAULT_RULES: dict[tuple[str, str], str] = {
    ("user_interface", "negative"): "Consider simplifying the user interface in the next update",
    ("user_interface", "positive"): "Share the praise for the interface with the design team",
    ("performance", "negative"): "Investigate the reported slowness and set a performance target",
    ("performance", "positive"): "Mention the speed improvements in release notes and replies",
    ("reliability", "negative"): (
        "Escalate the reported failures to engineering and tell the customer when they are fixed"
    ),
    ("reliability", "positive"): "Keep the stability record visible on your status page",
    ("pricing", "negative"): (
        "Review the pricing concern and explain the plan options that fit the customer"
    ),
    ("pricing", "positive"): "Invite the customer to share their value-for-money experience",
    ("billing", "negative"): (
        "Check the customer's billing record and correct any wrong charge or refund promptly"
    ),
    ("billing", "positive"): "Note the smooth billing experience in your response",
    ("support", "negative"): (
        "Follow up personally on the support experience and review response times"
    ),
    ("support", "positive"): "Pass the customer's thanks on to the support team",
    ("documentation", "negative"): "Update the documentation the customer found lacking",
    ("documentation", "positive"): "Tell the documentation team their guides are appreciated",
    ("onboarding", "negative"): "Review the setup steps that blocked the customer",
    ("onboarding", "positive"): "Reuse this smooth onboarding as a reference for new customers",
    ("features", "negative"): "Log the feature gap or request for the product team",
    ("features", "positive"): "Tell the customer about related features they may like",
    ("security", "negative"): (
        "Review the account access or security issue with the customer as a priority"
    ),
    ("security", "positive"): "Reassure the customer that their account stays protected",
    ("delivery", "negative"): (
        "Check the order's delivery with the carrier and offer a remedy for the delay or damage"
    ),
    ("delivery", "positive"): "Thank the delivery partner and the customer for the feedback",
    ("product_overall", "negative"): "Reach out to understand what disappointed the customer",
    ("product_overall", "positive"): "Highlight the positive overall experience in your response",
    (GENERAL_TOPIC, "negative"): "Follow up with the customer to resolve their concern",
    (GENERAL_TOPIC, "positive"): "Thank the customer for the positive feedback",
}


def rule_table(extra: Iterable[Any] = ()) -> dict[tuple[str, str], list[str]]:
    """Rules by (topic, sentiment): the configuration's first, then the built-in one.

    ``extra`` holds objects with ``topic``, ``sentiment``, ``text`` and
    ``replace`` (the workflow's ``RecommendationRule``).
    """
    table: dict[tuple[str, str], list[str]] = {}
    replaced: set[tuple[str, str]] = set()
    for rule in extra:
        key = (rule.topic, rule.sentiment)
        table.setdefault(key, []).append(rule.text)
        if rule.replace:
            replaced.add(key)
    for key, text in DEFAULT_RULES.items():
        if key not in replaced:
            table.setdefault(key, []).append(text)
    return table


_ORDER = {"negative": 0, "mixed": 1, "positive": 2, "neutral": 3}


def recommend(
    components: Sequence[Mapping[str, Any]],
    table: Mapping[tuple[str, str], list[str]],
    threshold: float,
) -> list[str]:
    """The recommendations for ``components`` whose score reaches ``threshold``.

    Negative components come first, then mixed, positive and neutral; within
    each, the higher score first. A ``mixed`` component takes its ``mixed``
    rules, then those of its negative and its positive side. No text is repeated.
    """
    out: list[str] = []
    acted = [c for c in components if c.get("score") is not None and c["score"] >= threshold]
    acted.sort(key=lambda c: (_ORDER.get(c["sentiment"], 9), -c["score"]))
    for component in acted:
        sentiment = component["sentiment"]
        sides = ["mixed", "negative", "positive"] if sentiment == "mixed" else [sentiment]
        for side in sides:
            for text in table.get((component["topic"], side), ()):
                if text not in out:
                    out.append(text)
    return out
