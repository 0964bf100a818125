"""The ``default`` NLP service: VADER per aspect, keyword topics.

How a text is analysed:

1. **Aspects.** The text is split at sentence boundaries (``.``, ``!``,
   ``?``, ``;``, line breaks) and, inside a sentence, before the contrast
   words *but*, *however*, *although*, *though*, *whereas*, *, yet* and
   *, while*; a sentence opening with *Although/Though/While ...,* is split
   at its first comma. A contrast word with at most one word after it
   (*"... overall though!"*) does not split.
2. **Sentiment.** Each aspect is scored by VADER (the ``vaderSentiment``
   lexicon and rules: negation, boosters, *but*, capitals, punctuation),
   whose lexicon is extended with the vocabulary of customer feedback
   (*slow*, *crashed*, *outage*, *overpriced*, *intuitive*, ...) and a few
   phrase rules VADER cannot see word by word (*took forever*, *no
   response*, *charged twice*, *went out of her way*). VADER's ``compound``
   ``c`` (-1..1) gives the label: positive when ``c >= 0.05``, negative when
   ``c <= -0.05``, else neutral. The **score** is the label's confidence:
   ``0.5 + |c| / 2`` for a polar aspect (0.5 barely, 1.0 certainly) and
   ``1 - 10 |c|`` for a neutral one.
3. **Overall.** ``mixed`` when one aspect is clearly positive and another
   clearly negative (``|c| >= 0.25``); the score is then the weaker of the two
   sides' strongest scores. Otherwise VADER's valences of all aspects are
   summed and normalised like VADER's compound, and labelled and scored as
   above.
4. **Topics.** The taxonomy's keyword patterns are matched in each aspect.
   An aspect that names no topic but carries sentiment refers to what the
   text was just talking about (the topics of the aspect before it, e.g.
   *"The room smelled of smoke. Never again."*), or to ``product_overall``
   when nothing came before.

No network, no model: VADER's lexicon ships inside its package.
"""

from __future__ import annotations

import importlib.util
import math
import re
import threading
from collections.abc import Mapping
from typing import Any

from abi_plugin_feedback.service import Analysis, AnalysisRequest, Aspect, Sentiment, TopicMatch
from abi_plugin_feedback.taxonomy import FALLBACK_TOPIC, Topic, TopicMatcher

__all__ = [
    "CLEAR",
    "FEEDBACK_LEXICON",
    "NEUTRAL_BAND",
    "PHRASES",
    "VaderService",
    "aspect_score",
    "label",
    "split_aspects",
]

#: |compound| below which a text or aspect is neutral (VADER's own convention).
NEUTRAL_BAND = 0.05
#: |compound| from which an aspect counts as clearly positive or negative (for ``mixed``).
CLEAR = 0.25
_ALPHA = 15.0  # VADER's normalisation constant

#: Words of customer feedback that VADER's general lexicon lacks or under-weights,
#: on VADER's scale (-4 .. +4).
# fmt: off
FEEDBACK_LEXICON: dict[str, float] = {
    # speed
    "slow": -1.5, "slower": -1.5, "slowly": -1.2, "slowest": -1.8, "sluggish": -1.8,
    "laggy": -1.8, "lags": -1.5, "lagging": -1.5, "unresponsive": -1.8,
    "fast": 1.3, "faster": 1.3, "quick": 1.0, "quickly": 1.0, "quicker": 1.0,
    "instant": 1.0, "instantly": 1.0, "speedy": 1.5, "snappy": 1.5,
    # reliability
    "crashed": -1.8, "crashes": -1.8, "crashing": -1.8, "freezes": -1.5, "froze": -1.5,
    "freezing": -1.2, "outage": -1.8, "outages": -1.8, "downtime": -1.5, "buggy": -2.0,
    "glitch": -1.3, "glitches": -1.5, "glitchy": -1.8, "unreliable": -2.0,
    "unstable": -1.8, "disconnected": -1.3, "disconnects": -1.5, "disconnecting": -1.5,
    "dropped": -1.0, "dropping": -1.0, "unusable": -2.5, "reliable": 1.8,
    "reliably": 1.5,
    # ease of use
    "complicated": -1.5, "convoluted": -1.8, "cluttered": -1.5, "clunky": -1.8,
    "confusing": -1.5, "unintuitive": -1.8, "intuitive": 1.8, "seamless": 2.0,
    "seamlessly": 2.0, "smooth": 1.5, "smoothly": 1.5, "painless": 1.5,
    "user-friendly": 2.0, "convenient": 1.5, "handy": 1.2, "tidy": 1.0,
    # price
    "overpriced": -2.0, "pricey": -0.8, "expensive": -1.0, "affordable": 1.5,
    "overcharged": -2.2, "overcharging": -2.2, "rip-off": -2.5, "ripoff": -2.5,
    # service
    "dismissive": -1.8, "unanswered": -1.5, "unhelpful": -1.8, "attentive": 1.8,
    "knowledgeable": 1.8, "professional": 1.3, "professionally": 1.3, "polite": 1.5,
    "courteous": 1.5, "patient": 1.0, "patiently": 1.2, "responsive": 1.5,
    # things that go wrong
    "late": -1.0, "outdated": -1.3, "nightmare": -2.5, "hassle": -1.5, "absurd": -1.5,
    "downhill": -1.5, "waited": -0.8, "unacceptable": -2.3, "vague": -1.0, "drops": -1.0,
    "doubled": -0.8, "hike": -1.0,
    # the nouns of customer service, which VADER reads as praise: neutral here
    "support": 0.0, "supports": 0.0, "supported": 0.0, "help": 0.5, "care": 0.5,
    "credit": 0.0, "interest": 0.0, "please": 0.0, "share": 0.0, "free": 1.0,
}
# fmt: on

#: Phrase rules: (pattern, valence added to the aspect, VADER's scale).
PHRASES: tuple[tuple[re.Pattern[str], float], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), valence)
    for pattern, valence in (
        (r"\b(?:took|takes|take|taking)\s+(?:forever|ages)\b", -2.0),
        (
            r"\b(?:no|never\s+(?:got|had|received)\s+(?:a|an|any))\s+(?:response|reply|answer|"
            r"callback|explanation|information|update)\b",
            -1.5,
        ),
        (r"\bno\s+(?:signal|service|internet|connection|power)\b", -1.5),
        (
            r"\bstill\s+(?:has\s*n[o']?t|have\s*n[o']?t|not|no|waiting|does\s*n[o']?t|"
            r"do\s*n[o']?t|is\s*n[o']?t|can\s*n[o']?t|cannot)\b",
            -1.2,
        ),
        (r"\bnever\s+(?:arrived|arrives|came|comes|worked|works|happens|happened|again)\b", -1.8),
        (r"\b(?:nobody|no\s+one|no-one)\b", -1.0),
        (r"\bcharged\s+(?:me\s+)?(?:twice|double|two\s+times)\b|\bdouble[- ]charged\b", -2.0),
        (r"\bhidden\s+(?:fees?|charges?|costs?)\b", -2.0),
        (
            r"\b(?:stopped|stops)\s+working\b|\bnot\s+working\b|\b(?:does|did)\s*(?:n't|\s+not)"
            r"\s+work\b",
            -2.0,
        ),
        (r"\b(?:keeps?|kept)\s+(?:on\s+)?\w+ing\b", -0.8),
        (
            r"\bwait(?:ed|ing)?\s+(?:for\s+)?(?:over\s+|almost\s+|nearly\s+|more\s+than\s+)?"
            r"(?:\w+\s+)?(?:minutes|hours|days|weeks|months)\b",
            -1.0,
        ),
        (r"\bout\s+of\s+(?:her|his|their|its|your)\s+way\b", 2.0),
        (r"\bin\s+no\s+time\b", 1.5),
        (r"\bno\s+complaints\b", 1.0),
        (r"\bon\s+time\b", 0.8),
        (r"\b(?:has\s+been|is|was|went|been)\s+down\b", -1.5),
        (r"\b(?:went|gone|going|goes|go|creeping|creeps|crept|shot|jumped)\s+up\b", -1.2),
        # a request, not praise: cancels VADER's valence of "like"
        (r"\b(?:would|'d)\s+(?:really\s+)?like\b", -1.5),
    )
)

_analyzer: Any = None
_analyzer_lock = threading.Lock()


def _vader() -> Any:
    global _analyzer
    if _analyzer is None:
        with _analyzer_lock:
            if _analyzer is None:
                vader = importlib.import_module("vaderSentiment.vaderSentiment")
                analyzer = vader.SentimentIntensityAnalyzer()
                analyzer.lexicon.update(FEEDBACK_LEXICON)
                _analyzer = analyzer
    return _analyzer


_SENTENCES = re.compile(r"(?<=[.!?])\s+|[\r\n]+|;\s*")
_CONTRAST = re.compile(
    r"(?:,\s*|\s+)(?=(?:but|however|although|though|whereas|even\s+though)\b)"
    r"|,\s*(?=(?:yet|while|on\s+the\s+other\s+hand)\b)",
    re.IGNORECASE,
)
_LEADING = re.compile(r"^\s*(?:although|though|even\s+though|while|whereas)\b[^,]*,", re.I)
_WORD = re.compile(r"[\w'-]+")


def split_aspects(text: str) -> list[str]:
    """Split ``text`` into aspects at sentence boundaries and contrast words."""
    aspects: list[str] = []
    for sentence in _SENTENCES.split(text):
        sentence = sentence.strip()
        if not sentence:
            continue
        lead = _LEADING.match(sentence)
        parts = [sentence[: lead.end()], sentence[lead.end() :]] if lead else [sentence]
        for part in parts:
            pieces = _CONTRAST.split(part)
            merged: list[str] = []
            for piece in pieces:
                piece = piece.strip(" ,")
                if not piece:
                    continue
                if merged and len(_WORD.findall(piece)) <= 2:
                    merged[-1] = f"{merged[-1]} {piece}"
                else:
                    merged.append(piece)
            aspects.extend(merged)
    return [a for a in aspects if _WORD.search(a)]


def _raw(compound: float) -> float:
    """Invert VADER's normalisation: the sum of valences behind a compound score."""
    c = max(min(compound, 0.9999), -0.9999)
    return c * math.sqrt(_ALPHA) / math.sqrt(1.0 - c * c)


def _normalise(total: float) -> float:
    return total / math.sqrt(total * total + _ALPHA)


def label(compound: float) -> Sentiment:
    """VADER's label for a compound score."""
    if compound >= NEUTRAL_BAND:
        return "positive"
    if compound <= -NEUTRAL_BAND:
        return "negative"
    return "neutral"


def aspect_score(compound: float) -> float:
    """The confidence of ``label(compound)``, from 0.5 to 1 (see the module docs)."""
    if abs(compound) >= NEUTRAL_BAND:
        return round(min(1.0, 0.5 + abs(compound) / 2), 4)
    return round(1.0 - 10.0 * abs(compound), 4)


def overall(compounds: list[float], scores: list[float]) -> tuple[Sentiment, float]:
    """The whole text's label and score from its aspects' compounds and scores."""
    positive = [s for c, s in zip(compounds, scores, strict=True) if c >= CLEAR]
    negative = [s for c, s in zip(compounds, scores, strict=True) if c <= -CLEAR]
    if positive and negative:
        return "mixed", round(min(max(positive), max(negative)), 4)
    total = _normalise(sum(_raw(c) for c in compounds))
    return label(total), aspect_score(total)


class VaderService:
    """The ``default`` service: VADER with a feedback lexicon, keyword topics.

    Cheap enough to run on the event loop (``inline``): a short text takes a
    few hundred microseconds.
    """

    inline = True

    def __init__(self) -> None:
        self._matchers: dict[tuple[Topic, ...], TopicMatcher] = {}

    def unavailable_reason(self) -> str | None:
        """Why the service cannot run here (``vaderSentiment`` missing), or ``None``."""
        try:
            found = importlib.util.find_spec("vaderSentiment") is not None
        except (ImportError, ValueError):
            found = False
        if found:
            return None
        return (
            "the NLP services need the feedback extra (pip install 'abi-engine[feedback]');"
            " missing: vaderSentiment"
        )

    @property
    def analyzer(self) -> Any:
        """The VADER analyzer with the feedback lexicon (shared, loaded on first use)."""
        return _vader()

    def matcher(self, taxonomy: Mapping[str, Topic]) -> TopicMatcher:
        """The compiled keyword matcher for ``taxonomy`` (cached)."""
        key = tuple(taxonomy.values())
        found = self._matchers.get(key)
        if found is None:
            if len(self._matchers) >= 64:
                self._matchers.clear()
            found = self._matchers[key] = TopicMatcher(key)
        return found

    def compound(self, text: str) -> float:
        """VADER's compound for ``text`` with the phrase rules applied."""
        value: float = self.analyzer.polarity_scores(text)["compound"]
        extra = sum(v for pattern, v in PHRASES if pattern.search(text))
        if extra:
            value = _normalise(_raw(value) + extra)
        return value

    def analyze(self, text: str, request: AnalysisRequest) -> Analysis:
        """Analyse one feedback text (see the module docs for how)."""
        parts = split_aspects(text) or [text.strip()]
        compounds = [self.compound(p) for p in parts]
        scores = [aspect_score(c) for c in compounds]
        topics = self.topics(parts, compounds, request) if request.topics else [[] for _ in parts]
        aspects = [
            Aspect(
                text=part,
                sentiment=label(c) if request.sentiment else None,
                score=s if request.sentiment else None,
                topics=t,
            )
            for part, c, s, t in zip(parts, compounds, scores, topics, strict=True)
        ]
        if not request.sentiment:
            return Analysis(sentiment=None, sentiment_score=None, aspects=aspects)
        sentiment, score = overall(compounds, scores)
        return Analysis(sentiment=sentiment, sentiment_score=score, aspects=aspects)

    def topics(
        self, parts: list[str], compounds: list[float], request: AnalysisRequest
    ) -> list[list[TopicMatch]]:
        """Each aspect's topics: keywords, else the previous aspect's, else the fallback."""
        matcher = self.matcher(request.taxonomy)
        found: list[list[TopicMatch]] = []
        previous: list[TopicMatch] = []
        for part, c in zip(parts, compounds, strict=True):
            names = matcher.find(part)
            if names:
                matches = [TopicMatch(topic=n, confidence=1.0) for n in names]
                previous = matches
            elif abs(c) >= NEUTRAL_BAND and previous:
                matches = [TopicMatch(topic=m.topic, confidence=0.6) for m in previous]
            elif abs(c) >= NEUTRAL_BAND and FALLBACK_TOPIC in request.taxonomy:
                matches = [TopicMatch(topic=FALLBACK_TOPIC, confidence=0.5)]
            else:
                matches = []
            found.append(matches)
        return found
