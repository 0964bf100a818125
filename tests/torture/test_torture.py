"""The torture suite: engine processes on one database, faults, kills, and the exactly-once checks.

Each test is one scenario, run on SQLite and on PostgreSQL for a few seeds
(``ABI_TORTURE_SEEDS``, default 2); ``ABI_TORTURE_SEED=<n>`` runs that seed only
and ``ABI_TORTURE_SOAK=<seconds>`` keeps running new seeds for that long. A
failing seed stops the test with every broken invariant, the plan it ran and
the command that replays it. See ``README.md`` here.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from postgres_testing import create_schema, drop_schema
from torture_cluster import pidns_unavailable
from torture_harness import Result, run_seed
from torture_plan import Scenario

pytestmark = pytest.mark.slow

#: Problems shown in a failure message (all of them go to problems.txt).
SHOWN = 10

SCENARIOS = {
    # Every kind of request at once; short poll interval so pollers race the signals.
    "load": Scenario(
        name="load",
        nodes=2,
        runtime={"poll_interval": 0.05, "lease_seconds": 5, "workers": 4, "shutdown_grace": 1},
        load_seconds=4,
        mix={"sync": 5, "async": 8, "signal": 16, "approval": 8, "cancel": 3, "replay": 2},
        schedules=2,
    ),
    # Schedules every 1-2 s; another process edits their descriptions all along.
    "schedules": Scenario(
        name="schedules",
        nodes=2,
        runtime={"poll_interval": 0.2, "lease_seconds": 5},
        load_seconds=5,
        mix={"async": 3},
        schedules=10,
        edits=True,
    ),
    # Store calls fail (before or after taking effect) with the drivers' own errors.
    "faults": Scenario(
        name="faults",
        nodes=2,
        runtime={"poll_interval": 0.2, "lease_seconds": 3, "shutdown_grace": 1},
        load_seconds=4,
        mix={"sync": 4, "async": 10, "signal": 6, "approval": 3, "cancel": 2},
        schedules=2,
        faults=3,
    ),
    # kill -9 and restart; on PostgreSQL also pg_terminate_backend of every engine connection.
    "kills": Scenario(
        name="kills",
        nodes=3,
        runtime={"poll_interval": 0.2, "lease_seconds": 3, "shutdown_grace": 1},
        load_seconds=4,
        mix={"sync": 4, "async": 12, "signal": 6, "approval": 3},
        sleeps=(0.1, 0.4),
        schedules=2,
        kills=2,
        terminations=2,
    ),
    # A step blocks the event loop (time.sleep) longer than the lease, on two processes.
    "blocking": Scenario(
        name="blocking",
        nodes=2,
        runtime={"poll_interval": 0.2, "lease_seconds": 2},
        load_seconds=4,
        mix={"block": 2, "async": 2},
        block_seconds=3.5,
    ),
    # Two engines, each PID 1 of its own PID namespace, on one host and one SQLite file.
    "pidns": Scenario(
        name="pidns",
        nodes=2,
        runtime={"poll_interval": 0.2, "lease_seconds": 5},
        load_seconds=4,
        mix={"async": 10, "signal": 4},
        sleeps=(0.3, 0.8),
        pidns=True,
    ),
}


def _seeds() -> Iterator[int]:
    """The seeds to run: one given, new ones for a soak, else the CI handful."""
    if os.environ.get("ABI_TORTURE_SEED"):
        yield int(os.environ["ABI_TORTURE_SEED"])
        return
    soak = float(os.environ.get("ABI_TORTURE_SOAK", "0") or 0)
    if soak > 0:
        end = time.monotonic() + soak
        while time.monotonic() < end:
            yield secrets.randbelow(1_000_000)
        return
    yield from range(1, int(os.environ.get("ABI_TORTURE_SEEDS", "2")) + 1)


def _report(result: Result, backend: str, nodeid: str) -> str:
    """The failure message: seed and replay command first, then what broke (all of it in
    ``problems.txt`` beside the ledger), the plan and what the run did."""
    plan = result.plan
    replay = f"ABI_TORTURE_SEED={plan.seed} python -m pytest {shlex.quote(nodeid)}"
    (result.workdir / "problems.txt").write_text("\n".join(result.problems) + "\n")
    shown = [f"  - {p}" for p in result.problems[:SHOWN]]
    if len(result.problems) > SHOWN:
        shown.append(f"  ... {len(result.problems) - SHOWN} more in {result.workdir}/problems.txt")
    notes = "".join(f"\n  note: {n}" for n in result.notes)
    return (
        f"torture scenario {plan.scenario!r} on {backend}, seed {plan.seed}:"
        f" {len(result.problems)} problem(s)\nreplay: {replay}\n"
        + "\n".join(shown)
        + f"\nplan: {plan.describe()}\n"
        f"run: {result.summary} in {result.seconds:.1f}s; ledger and process logs in"
        f" {result.workdir}{notes}"
    )


@contextmanager
def _database(
    backend: str, every_database: Callable[..., str | Path], server: str | None, seed: int
) -> Iterator[str | Path]:
    """A fresh database per seed: a SQLite file, or a PostgreSQL schema dropped after it."""
    if server is None:
        yield every_database(f"seed-{seed}.db")
        return
    schema, url = create_schema(server, prefix="torture")
    try:
        yield url
    finally:
        drop_schema(server, schema)


def _torture(
    name: str,
    request: pytest.FixtureRequest,
    every_database: Callable[..., str | Path],
    tmp_path: Path,
) -> None:
    backend = request.node.callspec.params["every_database"]
    server = request.getfixturevalue("postgres_server") if backend == "postgresql" else None
    soak = bool(os.environ.get("ABI_TORTURE_SOAK"))
    ran = []
    for seed in _seeds():
        workdir = tmp_path / f"seed-{seed}"
        with _database(backend, every_database, server, seed) as db:
            result = run_seed(SCENARIOS[name], seed, backend, db, workdir, server)
        ran.append(f"seed {seed}: {result.summary} {result.seconds:.1f}s")
        if result.problems:
            pytest.fail(_report(result, backend, request.node.nodeid), pytrace=False)
        # A clean run must have exercised something.
        assert result.summary["step_runs"] > 0, _report(result, backend, request.node.nodeid)
        if soak:  # keep the disk for the seed that fails
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{name} on {backend}: {len(ran)} seed(s)\n" + "\n".join(ran))


def test_load_runs_every_step_once(
    request: pytest.FixtureRequest, every_database: Callable[..., str | Path], tmp_path: Path
) -> None:
    """Sync, async, signalled, approved, cancelled and replayed executions on two processes: every step runs once."""
    _torture("load", request, every_database, tmp_path)


def test_schedule_edits_never_refire_a_due_time(
    request: pytest.FixtureRequest, every_database: Callable[..., str | Path], tmp_path: Path
) -> None:
    """Schedules firing every 1-2 s while another process edits them: each due time fires once."""
    _torture("schedules", request, every_database, tmp_path)


def test_store_faults_rerun_only_interrupted_steps(
    request: pytest.FixtureRequest, every_database: Callable[..., str | Path], tmp_path: Path
) -> None:
    """Store calls failing before or after their effect: nothing is stuck, only hit steps rerun."""
    _torture("faults", request, every_database, tmp_path)


def test_kills_and_dropped_connections_rerun_only_interrupted_steps(
    request: pytest.FixtureRequest, every_database: Callable[..., str | Path], tmp_path: Path
) -> None:
    """kill -9, restarts and terminated PostgreSQL connections: only steps in flight rerun."""
    _torture("kills", request, every_database, tmp_path)


def test_step_blocking_longer_than_the_lease_runs_once(
    request: pytest.FixtureRequest, every_database: Callable[..., str | Path], tmp_path: Path
) -> None:
    """A step blocking the event loop past the lease is not taken over by another process."""
    _torture("blocking", request, every_database, tmp_path)


@pytest.mark.sqlite_only
def test_same_hostname_pid_namespaces_take_nothing_over(
    request: pytest.FixtureRequest, every_database: Callable[..., str | Path], tmp_path: Path
) -> None:
    """Two engines, both PID 1 of their PID namespaces on one host: neither takes the other's work."""
    reason = pidns_unavailable()
    if reason is not None:
        pytest.skip(f"PID namespaces unavailable: {reason}")
    _torture("pidns", request, every_database, tmp_path)
