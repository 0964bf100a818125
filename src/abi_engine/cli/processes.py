"""``abi-engine serve --processes N``: N server processes on one socket and one database.

The parent binds the listening socket, opens the database once (so migrations
run once and a bad ``--db`` is one line, exit 2) and starts N children, each
``abi-engine serve`` on the inherited socket: a full engine (workers,
scheduler, webhook delivery) and uvicorn, as one ``serve`` would be. The
kernel hands each new connection to one of them; executions, schedule
firings and deliveries are claimed across processes exactly as between
separate ``serve`` commands on one database (docs/deployment.md).

The parent announces the server once every child is ready, forwards SIGTERM
and SIGINT to them and exits 0 when they have stopped. When a child ends on
its own, the parent stops the others and exits 1 (a supervisor, systemd or
Kubernetes, then restarts the whole). The children run in their own session,
so a Ctrl-C in a terminal reaches the parent only. Each child holds the read end of a
pipe whose write end only the parent has: if the parent is killed, the pipe
closes and the children stop too.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from abi_engine.cli._common import (
    ENV_DB,
    EXIT_FAILURE,
    EXIT_OK,
    CliError,
    _open_engine,
    _positive_int,
)

__all__ = ["add_options", "inherited_socket", "report_ready", "supervise", "watch_parent"]


class _Stoppable(Protocol):
    """What :func:`watch_parent` needs of a server (uvicorn's ``Server``)."""

    should_exit: bool


#: How long stopping children may take before they are killed (seconds).
STOP_SECONDS = 60.0


def add_options(add: Callable[..., Any]) -> None:
    """``--processes`` and the children's hidden options."""
    add(
        "--processes",
        type=_positive_int,
        default=1,
        metavar="N",
        help="serve from N processes sharing the port and the database, each a full engine"
        " (default: 1; docs/deployment.md)",
    )
    add("--child-fds", nargs=3, type=int, default=None, help=argparse.SUPPRESS)


def _child_argv(args: argparse.Namespace, fds: tuple[int, int, int]) -> list[str]:
    """The ``serve`` command line of a child (the database goes in its environment)."""
    argv = [sys.executable, "-m", "abi_engine", "serve", "--host", args.host]
    argv += ["--durability", args.durability, "--log-level", args.log_level]
    argv += ["--log-format", args.log_format, "--forwarded-allow-ips", args.forwarded_allow_ips]
    argv += ["--loop", getattr(args, "loop", "auto"), "--http", getattr(args, "http", "auto")]
    for flag, value in (
        ("--rate-limit", args.rate_limit),
        ("--workers", args.workers),
        ("--lease-seconds", args.lease_seconds),
        ("--otlp-endpoint", getattr(args, "otlp_endpoint", None)),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if args.allow_private_urls:
        argv.append("--allow-private-urls")
    if not args.dashboard:
        argv.append("--no-dashboard")
    return [*argv, "--child-fds", *map(str, fds)]


def _check(args: argparse.Namespace) -> None:
    if args.metrics_port is not None:
        raise CliError(
            "--metrics-port serves one process's metrics: with --processes, scrape"
            " GET /api/v1/metrics or run one serve per process instead"
        )
    if args.db == ":memory:":
        raise CliError("--processes needs a database the processes share, not :memory:")


class _Children:
    """The child processes and the pipes the parent keeps."""

    def __init__(self, args: argparse.Namespace, sock: socket.socket) -> None:
        self.ready_r, ready_w = os.pipe()
        parent_r, self.parent_w = os.pipe()  # the children's lifeline
        fds = (sock.fileno(), ready_w, parent_r)
        env = {**os.environ, ENV_DB: os.path.abspath(args.db) if "://" not in args.db else args.db}
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(args.processes):
                self.procs.append(
                    subprocess.Popen(
                        _child_argv(args, fds),
                        pass_fds=fds,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        # Signals to the terminal's process group (Ctrl-C) reach the parent
                        # only, which passes one SIGTERM on: never two to a child.
                        start_new_session=True,
                    )
                )
        finally:
            os.close(ready_w)
            os.close(parent_r)

    def ended(self) -> subprocess.Popen[bytes] | None:
        return next((p for p in self.procs if p.poll() is not None), None)

    def wait_ready(self, stopping: Callable[[], bool]) -> bool:
        """Wait until every child said it serves; ``False`` when one ended or a signal came."""
        ready = 0
        while ready < len(self.procs):
            if stopping() or self.ended() is not None:
                return False
            readable, _, _ = select.select([self.ready_r], [], [], 0.5)
            if readable:
                got = os.read(self.ready_r, 64)
                if not got:  # every child closed its end: none will say more
                    return False
                ready += len(got)
        return True

    def stop(self) -> list[int]:
        """SIGTERM to every child still running; their exit codes (killed after STOP_SECONDS)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        os.close(self.ready_r)
        os.close(self.parent_w)
        return codes


def supervise(
    args: argparse.Namespace, sock: socket.socket, announce: Callable[[str], None]
) -> int:
    """Run ``args.processes`` children on ``sock`` until SIGTERM or SIGINT (see the module)."""
    _check(args)
    _open_engine(  # migrations once, and a database that cannot be used is one line
        args.db, create_dirs=args.create_dirs, durability=args.durability
    ).close()
    stop: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.append(signum)

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    children = _Children(args, sock)
    try:
        if children.wait_ready(lambda: bool(stop)):
            announce(f"processes: {len(children.procs)}")
            while not stop and children.ended() is None:
                time.sleep(0.2)
        failed = children.ended() if not stop else None
    finally:
        codes = children.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed is not None or any(code != 0 for code in codes):
        print(
            f"abi-engine: error: a server process ended (exit codes {codes})",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILURE
    return EXIT_OK


# -- in a child ----------------------------------------------------------------------


def inherited_socket(args: argparse.Namespace) -> socket.socket | None:
    """A child's listening socket (``None`` in a plain ``serve``)."""
    if args.child_fds is None:
        return None
    return socket.socket(fileno=args.child_fds[0])


def report_ready(args: argparse.Namespace) -> None:
    """Tell the parent this child serves (one byte on the ready pipe)."""
    fd = args.child_fds[1]
    os.write(fd, b".")
    os.close(fd)


def watch_parent(args: argparse.Namespace, server: _Stoppable) -> None:
    """Stop serving when the parent is gone (its end of the lifeline pipe closed)."""
    import asyncio

    if args.child_fds is None:
        return
    fd = args.child_fds[2]

    def gone() -> None:
        asyncio.get_running_loop().remove_reader(fd)
        server.should_exit = True

    asyncio.get_running_loop().add_reader(fd, gone)
