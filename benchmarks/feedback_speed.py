"""Speed of the feedback_analysis ``default`` NLP service on short texts, one core.

Analyses per second of ``VaderService.analyze`` (aspects, VADER with the
feedback lexicon, keyword topics) on the evaluation set's short texts (at
most 120 characters), after a warm-up, in this one process (one core: the
service is pure Python and single-threaded). ``--workflow`` also times the
whole in-memory step sequence of the workflow type (parse configuration and
parameters, the three steps).

    python benchmarks/feedback_speed.py [--seconds 3] [--workflow]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from abi_engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from feedback_quality import load


def rate(fn: Any, texts: list[str], seconds: float) -> float:
    """Calls of ``fn(text)`` per second, cycling through ``texts`` for ``seconds``."""
    for text in texts:  # warm-up: lexicon, regexes, caches
        fn(text)
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for text in texts:
            fn(text)
        done += len(texts)
    return done / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workflow", action="store_true")
    args = parser.parse_args(argv)
    texts = [i["text"] for i in load() if len(i["text"]) <= 120]
    mean = sum(len(t) for t in texts) / len(texts)
    print(f"{len(texts)} short texts, {mean:.0f} characters on average")
    engine = Engine(":memory:")
    try:
        workflow_type: Any = engine.workflow_types["feedback_analysis"]
        service = engine.registry.nlp_services["default"]
        config = workflow_type.parse_configuration({"nlp_service": "default"})
        request = workflow_type.request(config)
        per_second = rate(lambda t: service.analyze(t, request), texts, args.seconds)
        print(f"default service: {per_second:,.0f} analyses/s")
        if args.workflow:

            async def run_all() -> float:
                done = 0
                started = time.perf_counter()
                while time.perf_counter() - started < args.seconds:
                    for text in texts:
                        await workflow_type.run_inline(
                            {"nlp_service": "default"}, {"feedback_text": text}
                        )
                    done += len(texts)
                return done / (time.perf_counter() - started)

            print(f"workflow steps in memory: {anyio.run(run_all):,.0f} executions/s")
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
