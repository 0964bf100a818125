"""Schedules at scale: creation rate, idle tick time, firing lateness (issue #4).

Prints:
- create: N schedules (cron in several time zones and intervals, validation
  and next-run computation included) created in-process by many concurrent
  tasks, so group commit batches them: total time, creates per second (wall
  clock and per CPU second of this process), peak RSS;
- tick: ``engine.scheduler.tick()`` with those N schedules stored and none
  due, median and p99 over 200 ticks;
- lateness: 200 fixed-time schedules due on three consecutive second
  boundaries a few seconds ahead, with 10,000 more stored (due much later),
  engine running; lateness = the execution's ``started_at`` minus the due
  time in the schedule's history; p50, p99 and max, and the full garbage
  collections that ran meanwhile (after ``gc.freeze()``, as ``abi-engine
  serve`` does once started; ``--no-freeze`` to compare).

Targets (issue #4): >= 10,000 creates/s, tick < 2 ms, p99 lateness < 20 ms.

Without a subscription to ``schedule.created`` (nor an ``abi_event`` hook) the
events are not built; ``--with-events`` adds a hook so that they are.

Usage: python benchmarks/schedules.py [--count 100000] [--with-events] [--no-freeze]
       [--profile create|tick|lateness]
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import statistics
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio

from abi_engine import Engine, hookimpl
from abi_engine.cli import freeze_startup_objects
from abi_engine.events import Event
from abi_engine.ids import format_time, utcnow

ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
WORKFLOW = {
    "name": "Bench",
    "type": "custom",
    "configuration": {
        "steps": [{"name": "echo", "action": "transform", "expressions": {"n": "parameters['n']"}}]
    },
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def far_body(i: int, hours_now: dict[str, int], rrule: bool = False) -> dict[str, Any]:
    """A schedule first due more than an hour from now, in a realistic mix.

    Half daily crons, then weekday crons, monthly crons and intervals (minutes
    to days), in several zones; cron hours avoid the current and the next
    hour of their zone, so nothing comes due while the benchmark runs.
    """
    rng = random.Random(i)
    kind = i % 20
    if rrule and i % 4 == 0:  # --rrule: a quarter are simple RFC 5545 rules
        zone = ZONES[i % len(ZONES)]
        hour = (hours_now[zone] + rng.randrange(2, 24)) % 24
        return {
            "name": f"rrule {i}",
            "schedule_type": "rrule",
            "rrule": f"FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR={hour};BYMINUTE={rng.randrange(60)}",
            "timezone": zone,
            "parameters": {"n": i},
        }
    if kind >= 5:
        zone = ZONES[i % len(ZONES)]
        hour = (hours_now[zone] + rng.randrange(2, 24)) % 24
        minute = rng.randrange(60)
        if kind >= 10:
            expression = f"{minute} {hour} * * *"
        elif kind >= 7:
            expression = f"{minute} {hour} * * 1-5"
        else:
            expression = f"{minute} {hour} {rng.randrange(1, 29)} * *"
        return {
            "name": f"cron {i}",
            "schedule_type": "cron",
            "cron_expression": expression,
            "timezone": zone,
            "parameters": {"n": i},
        }
    unit, low, high = rng.choice([("minutes", 90, 600), ("hours", 2, 48), ("days", 1, 30)])
    return {
        "name": f"interval {i}",
        "schedule_type": "interval",
        "interval_value": rng.randrange(low, high),
        "interval_unit": unit,
        "parameters": {"n": i},
    }


def profiled(name: str, wanted: str | None) -> AbstractContextManager[Any]:
    if wanted != name:
        return nullcontext()
    from pyinstrument import Profiler

    class _Profile:
        def __enter__(self) -> None:
            self.profiler = Profiler(async_mode="enabled")
            self.profiler.start()

        def __exit__(self, *exc: object) -> None:
            self.profiler.stop()
            print(self.profiler.output_text(unicode=False, color=False, show_all=False))

    return _Profile()


def make_bodies(count: int, rrule: bool = False) -> list[dict[str, Any]]:
    now = utcnow()
    hours_now = {zone: now.astimezone(ZoneInfo(zone)).hour for zone in ZONES}
    return [far_body(i, hours_now, rrule) for i in range(count)]


async def create_many(
    engine: Engine, workflow_id: str, bodies: list[dict[str, Any]], tasks: int = 500
) -> None:
    """Create the schedules from ``tasks`` concurrent tasks (group commit batches them)."""

    async def worker(k: int) -> None:
        for i in range(k, len(bodies), tasks):
            await engine.schedules.create(workflow_id, bodies[i])

    async with anyio.create_task_group() as tg:
        for k in range(tasks):
            tg.start_soon(worker, k)


class EventListener:
    """An ``abi_event`` hook that only counts: every schedule event is then built and stored."""

    def __init__(self) -> None:
        self.seen = 0

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.seen += 1


async def bench_create_and_tick(
    db: Path, count: int, profile: str | None, with_events: bool = False, rrule: bool = False
) -> None:
    listener = EventListener()
    engine = Engine(db, plugins=[listener] if with_events else [])
    try:
        workflow = await engine.workflows.create(WORKFLOW)
        await engine.workflows.activate(workflow.id)
        async with engine:
            bodies = make_bodies(count, rrule)
            cpu, wall = time.process_time(), time.perf_counter()
            with profiled("create", profile):
                await create_many(engine, workflow.id, bodies)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if with_events:
                assert listener.seen >= count, listener.seen
            print(
                f"create {count:,} schedules{' (events built: a hook listens)' if with_events else ''}"
                f"{' (a quarter rrule)' if rrule else ''}:"
                f" {wall:.2f} s wall, {count / wall:,.0f}/s"
                f" ({cpu:.2f} s CPU, {count / cpu:,.0f} per CPU second);"
                f" peak RSS {peak_rss_mb():.0f} MB;"
                f" {engine.runtime.committer.batches} commits"
            )
            stored = (await engine.schedules.list()).pagination.total_items
            assert stored >= count, stored

            times = []
            with profiled("tick", profile):
                for _ in range(200):
                    started = time.perf_counter()
                    more = await engine.scheduler.tick()
                    times.append((time.perf_counter() - started) * 1000)
                    assert more is False
            print(
                f"tick with {stored:,} schedules, none due: median {statistics.median(times):.3f} ms,"
                f" p99 {percentile(times, 0.99):.3f} ms, max {max(times):.3f} ms"
            )
    finally:
        engine.close()


class FullCollections:
    """Pauses of full (generation 2) garbage collections while inside the block."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif info["generation"] == 2:
            self.pauses.append((time.perf_counter() - self._started) * 1000)

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def __str__(self) -> str:
        if not self.pauses:
            return "no full garbage collection"
        return f"{len(self.pauses)} full garbage collection(s), longest {max(self.pauses):.0f} ms"


async def bench_lateness(
    db: Path, others: int, due: int, profile: str | None, freeze: bool = True
) -> None:
    engine = Engine(db)
    try:
        workflow = await engine.workflows.create(WORKFLOW)
        await engine.workflows.activate(workflow.id)
        async with engine:
            await create_many(engine, workflow.id, make_bodies(others))
            start = utcnow().replace(microsecond=0) + timedelta(seconds=3)
            ids = []
            for i in range(due):
                at = start + timedelta(seconds=i % 3)
                schedule = await engine.schedules.create(
                    workflow.id,
                    {
                        "name": f"soon {i}",
                        "schedule_type": "fixed_time",
                        "execution_time": format_time(at),
                        "parameters": {"n": i},
                    },
                )
                ids.append(schedule.id)
            assert utcnow() < start, "creating the due schedules took too long"
            if freeze:  # as `abi-engine serve` does once started
                freeze_startup_objects()
            with profiled("lateness", profile), FullCollections() as collections:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    done = [await engine.schedules.get(i) for i in ids]
                    last = [s.last_execution for s in done]
                    if all(e is not None and e.started_at is not None for e in last):
                        break
                    await anyio.sleep(0.2)
            lateness = []
            for schedule_id in ids:
                [entry] = (await engine.schedules.history(schedule_id)).items
                assert entry.outcome == "fired", entry
                assert entry.execution_id is not None
                execution = await engine.executions.get(entry.execution_id)
                assert execution.started_at is not None
                assert entry.due_at is not None
                lateness.append((execution.started_at - entry.due_at).total_seconds() * 1000)
            print(
                f"lateness of {due} runs due on 3 second boundaries, {others:,} more stored:"
                f" p50 {percentile(lateness, 0.5):.1f} ms, p99 {percentile(lateness, 0.99):.1f} ms,"
                f" max {max(lateness):.1f} ms, min {min(lateness):.1f} ms;"
                f" {collections}{'' if freeze else ' (gc not frozen)'}"
            )
    finally:
        engine.close()


def machine_reference() -> str:
    """CPU seconds of a fixed pure-Python loop, to compare machines (~0.2 s on a quiet modern core)."""
    cpu = time.process_time()
    total = 0
    for i in range(5_000_000):
        total += i
    cpu = time.process_time() - cpu
    wall = time.perf_counter()
    for i in range(5_000_000):
        total -= i
    wall = time.perf_counter() - wall
    return f"reference loop: {cpu:.2f} s CPU, {wall:.2f} s wall (~0.2 s on a quiet modern core)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=10_000)
    parser.add_argument("--due", type=int, default=200)
    parser.add_argument("--profile", choices=["create", "tick", "lateness"])
    parser.add_argument(
        "--no-freeze",
        action="store_true",
        help="skip gc.freeze() after set-up (abi-engine serve does it once started)",
    )
    parser.add_argument(
        "--with-events",
        action="store_true",
        help="an abi_event hook listens, so every schedule.created event is built and stored",
    )
    parser.add_argument(
        "--rrule",
        action="store_true",
        help="a quarter of the schedules created are rrule schedules (a simple weekly rule)",
    )
    args = parser.parse_args()
    print(machine_reference())
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(
            bench_create_and_tick,
            Path(tmp) / "create.db",
            args.count,
            args.profile,
            args.with_events,
            args.rrule,
        )
        anyio.run(
            bench_lateness,
            Path(tmp) / "lateness.db",
            args.others,
            args.due,
            args.profile,
            not args.no_freeze,
        )
    print(f"peak RSS of the process: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
