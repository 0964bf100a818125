"""The ``abi-engine`` command line: serve the REST API, manage tokens, run a demo, and
operate an engine (executions, workflows, schedules, deliveries, pruning, the audit log).

``abi-engine serve`` runs the engine and its REST API (the ``abi_asgi``
adapter under uvicorn) until SIGTERM or SIGINT, then stops the server and
exits the engine cleanly. ``abi-engine token create`` prints a new access
token. ``abi-engine demo`` prepares a token and an example workflow, prints
copy-paste ``curl`` commands, and serves like ``serve``. The operators'
commands (``executions``, ``workflows``, ``schedules``, ``deliveries``,
``prune``, ``audit``) work on a database (``--db``) or on a running server
(``--url`` and ``--token``); see ``docs/cli.md``.

One module per command group: :mod:`~abi_engine.cli.serve`,
:mod:`~abi_engine.cli.tokens`, :mod:`~abi_engine.cli.demo`,
:mod:`~abi_engine.cli.resources` (executions, workflows, schedules,
deliveries), :mod:`~abi_engine.cli.maintenance` (prune, audit verify);
:mod:`~abi_engine.cli._common` and :mod:`~abi_engine.cli._output` are what
they share.

Exit codes: 0 success (including a stop by SIGTERM or SIGINT), 1 the server
failed while starting or running (or a command's target failed: an audit
chain broken, an execution not found), 2 bad input (arguments, a database
that cannot be opened, an address that cannot be listened on).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from abi_engine import __version__
from abi_engine.cli import demo, maintenance, resources, serve, tokens
from abi_engine.cli._common import DEFAULT_DB, CliError, _db_parent, _open_engine
from abi_engine.cli.serve import _server_parent, freeze_startup_objects

__all__ = [
    "DEFAULT_DB",
    "CliError",
    "_open_engine",
    "build_parser",
    "freeze_startup_objects",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``abi-engine`` argument parser (defaults read from the environment now)."""
    parser = argparse.ArgumentParser(
        prog="abi-engine", description="abi-engine: an embeddable, durable workflow engine."
    )
    parser.add_argument("--version", action="version", version=f"abi-engine {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    db, server = _db_parent(), _server_parent()
    serve.add_commands(commands, db, server)
    tokens.add_commands(commands, db)
    demo.add_commands(commands, db, server)
    resources.add_commands(commands, db)
    maintenance.add_commands(commands, db)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``abi-engine`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except CliError as exc:
        print(f"abi-engine: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
