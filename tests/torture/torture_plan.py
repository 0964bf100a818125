"""The plan of a torture run: every random choice of it, drawn from the seed alone.

A :class:`Scenario` says what kind of run it is (how many processes, which
runtime settings, which mix of requests, faults, kills); :func:`make_plan`
draws the details from ``random.Random(f"{scenario}:{seed}")``: when each
request is sent and to which process, the steps' durations, which store call
of which process fails and how, when which process is killed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torture_plugin


@dataclass
class Action:
    """One request of the load, sent ``at`` seconds after the load starts, to node ``node``."""

    at: float
    kind: str  # sync | async | signal | approval | cancel | replay | block
    node: int
    params: dict[str, Any]
    cancel_after: float = 0.0
    cancel_node: int = 0


@dataclass
class Chaos:
    at: float
    kind: str  # kill | terminate
    node: int = 0
    down: float = 0.0


@dataclass
class Plan:
    scenario: str
    seed: int
    nodes: int
    runtime: dict[str, Any]
    load_seconds: float
    actions: list[Action]
    schedules: list[dict[str, Any]]
    edits: bool
    faults: list[list[dict[str, Any]]]
    chaos: list[Chaos]
    pidns: bool

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for action in self.actions:
            kinds[action.kind] = kinds.get(action.kind, 0) + 1
        faults = [
            f"n{i}:"
            + ",".join(f"{f['method']}[{f.get('op') or '*'}]#{f['nth']}/{f['mode']}" for f in fs)
            for i, fs in enumerate(self.faults)
            if fs
        ]
        chaos = [f"{c.kind}(n{c.node})@{c.at:.1f}s" for c in self.chaos]
        return (
            f"{self.nodes} processes, runtime {self.runtime}, load {self.load_seconds}s:"
            f" {kinds}; {len(self.schedules)} schedules{' + edits' if self.edits else ''};"
            f" faults {faults or 'none'}; chaos {chaos or 'none'}"
            f"{'; each process PID 1 of its own PID namespace' if self.pidns else ''}"
        )


@dataclass(frozen=True)
class Scenario:
    """What a scenario runs; :func:`make_plan` draws the details from the seed."""

    name: str
    nodes: int
    runtime: dict[str, Any]
    load_seconds: float
    mix: dict[str, int]  # action kind -> how many
    sleeps: tuple[float, float] = (0.02, 0.2)
    schedules: int = 0
    edits: bool = False
    faults: int = 0  # per process
    kills: int = 0
    terminations: int = 0  # PostgreSQL only
    pidns: bool = False
    block_seconds: float = 0.0


#: Where faults are injected: (store method, write-op class carried by ``apply``, nth range).
FAULT_TARGETS: list[tuple[str, str | None, tuple[int, int]]] = [
    ("apply", "InsertExecution", (1, 8)),
    ("apply", "ClaimExecution", (1, 10)),
    ("apply", "CheckpointStep", (1, 12)),
    ("apply", "FinishExecution", (1, 8)),
    ("apply", "SuspendExecution", (1, 4)),
    ("apply", "DeliverSignal", (1, 4)),
    ("apply", "CancelExecution", (1, 2)),
    ("apply", "FireSchedule", (1, 4)),
    ("apply", None, (5, 60)),
    ("claim_recoverable", None, (2, 12)),
    ("renew_leases", None, (1, 3)),
    ("get_execution", None, (1, 20)),
    ("get_steps", None, (1, 20)),
    ("due_schedules", None, (1, 5)),
    ("next_delivery_due", None, (1, 5)),
]
ERRORS = {"sqlite": ("locked", "ioerr"), "postgresql": ("pg_admin", "pg_closed")}


def make_plan(scenario: Scenario, seed: int, backend: str) -> Plan:
    """The run's every random choice, from ``seed`` alone."""
    rng = random.Random(f"{scenario.name}:{seed}")
    nodes = scenario.nodes
    actions: list[Action] = []
    lo, hi = scenario.sleeps
    for kind, count in sorted(scenario.mix.items()):
        for _ in range(count):
            sleeps = [round(rng.uniform(lo, hi), 3) for _ in range(torture_plugin.STEPS)]
            params: dict[str, Any] = {"kind": kind, "sleeps": sleeps}
            action = Action(
                at=round(rng.uniform(0, scenario.load_seconds * 0.8), 3),
                kind=kind,
                node=rng.randrange(nodes),
                params=params,
            )
            if kind in ("signal", "approval"):
                params["wait"] = kind
            elif kind == "cancel":
                params["sleeps"] = [round(rng.uniform(0.3, 1.0), 3) for _ in sleeps]
                action.cancel_after = round(rng.uniform(0.0, 2.0), 3)
                action.cancel_node = rng.randrange(nodes)
            elif kind == "replay":
                params["sleeps"] = [0.05, 2.5, 0.05]
                params["key"] = f"replay-{seed}-{len(actions)}"
            elif kind == "block":
                params["block"] = scenario.block_seconds
                params["sleeps"] = [0.05, 0.05, 0.05]
                action.at = round(rng.uniform(0, 1.0), 3)
            actions.append(action)
    rng.shuffle(actions)
    actions.sort(key=lambda a: a.at)
    for number, action in enumerate(actions):
        # Names the execution in the ledger's payload checks and in QUEUE_FULL answers.
        action.params["nonce"] = f"s{seed}a{number}"
    schedules = [
        {
            "name": f"torture {i}",
            "schedule_type": "interval",
            "interval_value": rng.choice((1, 1, 2)),
            "interval_unit": "seconds",
            "overlap_policy": "allow",
            "parameters": {"kind": "sched", "sleeps": [0.02, 0.02, 0.02]},
        }
        for i in range(scenario.schedules)
    ]
    faults: list[list[dict[str, Any]]] = []
    for _ in range(nodes):
        chosen = []
        for _ in range(scenario.faults):
            method, op, (first, last) = rng.choice(FAULT_TARGETS)
            chosen.append(
                {
                    "method": method,
                    "op": op,
                    "nth": rng.randint(first, last),
                    "mode": rng.choice(("before", "after")),
                    "error": rng.choice(ERRORS[backend]),
                }
            )
        faults.append(chosen)
    chaos: list[Chaos] = []
    for _ in range(scenario.kills):
        chaos.append(
            Chaos(
                at=round(rng.uniform(0.8, scenario.load_seconds - 0.5), 3),
                kind="kill",
                node=rng.randrange(nodes),
                down=round(rng.uniform(0.2, 1.5), 3),
            )
        )
    if backend == "postgresql":
        for _ in range(scenario.terminations):
            chaos.append(
                Chaos(at=round(rng.uniform(0.5, scenario.load_seconds - 0.5), 3), kind="terminate")
            )
    chaos.sort(key=lambda c: c.at)
    return Plan(
        scenario=scenario.name,
        seed=seed,
        nodes=nodes,
        runtime=dict(scenario.runtime),
        load_seconds=scenario.load_seconds,
        actions=actions,
        schedules=schedules,
        edits=scenario.edits,
        faults=faults,
        chaos=chaos,
        pidns=scenario.pidns,
    )
