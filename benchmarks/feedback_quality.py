"""Quality of the feedback_analysis NLP services on the labelled evaluation set.

Runs every text of ``tests/data/feedback_eval.jsonl`` through the
``feedback_analysis`` workflow type (its steps, in memory) with each service,
and prints, per service and per split (``dev``: the texts rules were tuned on;
``test``: held out), the polarity accuracy (positive / negative / neutral /
mixed) and the topic precision and recall (micro-averaged over texts: the
topics of the result's ``feedback_components`` against the labelled topics).

    python benchmarks/feedback_quality.py [--service default advanced] [--errors]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from abi_engine import Engine

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "feedback_eval.jsonl"


def load(path: Path = DATA) -> list[dict[str, Any]]:
    """The evaluation items, one per line."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def score(items: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, float]:
    """Polarity accuracy and topic precision / recall of ``results`` against ``items``."""
    right = tp = fp = fn = 0
    for item, result in zip(items, results, strict=True):
        right += result["sentiment"] == item["polarity"]
        predicted = {c["topic"] for c in result["feedback_components"]}
        gold = set(item["topics"])
        tp += len(predicted & gold)
        fp += len(predicted - gold)
        fn += len(gold - predicted)
    return {
        "n": len(items),
        "polarity_accuracy": right / len(items) if items else 0.0,
        "topic_precision": tp / (tp + fp) if tp + fp else 0.0,
        "topic_recall": tp / (tp + fn) if tp + fn else 0.0,
    }


async def analyse(
    engine: Engine, service: str, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each item's result with ``service``."""
    workflow_type: Any = engine.workflow_types["feedback_analysis"]
    configuration = {"nlp_service": service, "language": "en"}
    return [
        await workflow_type.run_inline(configuration, {"feedback_text": item["text"]})
        for item in items
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", nargs="+", default=["default", "advanced"])
    parser.add_argument("--errors", action="store_true", help="print every miss")
    parser.add_argument("--split", choices=["dev", "test", "all"], default=None)
    args = parser.parse_args(argv)
    items = load()
    if args.split and args.split != "all":
        items = [i for i in items if i["split"] == args.split]
    print(f"{len(items)} texts: {dict(Counter(i['polarity'] for i in items))}")
    engine = Engine(":memory:")
    try:
        for service in args.service:
            reason = getattr(engine.registry.nlp_services[service], "unavailable_reason", None)
            if reason and reason():
                print(f"{service}: not available: {reason()}")
                continue
            started = time.perf_counter()
            results = anyio.run(analyse, engine, service, items)
            elapsed = time.perf_counter() - started
            print(f"\n== {service} ({elapsed:.1f} s)")
            print(f"{'split':6} {'n':>4} {'polarity':>9} {'topic P':>8} {'topic R':>8}")
            for split in ("dev", "test", "all"):
                chosen = [
                    (i, r)
                    for i, r in zip(items, results, strict=True)
                    if split == "all" or i["split"] == split
                ]
                if not chosen:
                    continue
                m = score([i for i, _ in chosen], [r for _, r in chosen])
                print(
                    f"{split:6} {m['n']:>4} {m['polarity_accuracy']:>9.1%}"
                    f" {m['topic_precision']:>8.1%} {m['topic_recall']:>8.1%}"
                )
            if args.errors:
                for item, result in zip(items, results, strict=True):
                    predicted = sorted({c["topic"] for c in result["feedback_components"]})
                    if result["sentiment"] != item["polarity"] or predicted != sorted(
                        item["topics"]
                    ):
                        print(
                            f"  {item['id']} {item['polarity']}->{result['sentiment']}"
                            f" {sorted(item['topics'])}->{predicted}: {item['text'][:90]}"
                        )
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
