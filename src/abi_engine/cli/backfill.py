"""``abi-engine schedules backfill``: run a schedule's past due times on a running server,
following the backfill with a progress bar until it is over.

The backfill runs on the server (a durable job: ``POST .../backfill`` answers its
id); this command polls ``GET .../backfills/{id}`` and draws its progress on
stderr (redrawn in place on a terminal, one line per change otherwise). Ctrl-C
asks whether to cancel it (``--cancel-on-interrupt`` cancels without asking;
without a terminal to ask on, it keeps running and the command says how to
cancel it). ``--dry-run`` lists the due times and starts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from abi_engine.cli._client import Target, open_target
from abi_engine.cli._common import EXIT_FAILURE, EXIT_OK, CliError, _positive_int
from abi_engine.cli._output import Progress, print_json
from abi_engine.errors import AbiError

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["EXIT_INTERRUPTED", "add_backfill"]

#: The exit status after Ctrl-C (128 + SIGINT), whether the backfill was cancelled or not.
EXIT_INTERRUPTED = 130


def _body(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "start": args.start,
        "end": args.end,
        "dry_run": args.dry_run,
        "max_runs": args.max_runs,
        "overlap_policy": args.overlap_policy,
    }


def _summary(run: Mapping[str, Any]) -> str:
    more = " (the range has more: run again from the next due time)" if run["truncated"] else ""
    line = (
        f"{run['id']}\t{run['status']}: {run['started']} started, {run['skipped']} skipped,"
        f" {run['failed']} failed of {run['total']}{more}"
    )
    if run.get("last_error"):
        line += f"\nlast error: {run['last_error']}"
    return line


def _print_run(args: argparse.Namespace, run: Mapping[str, Any]) -> None:
    if args.json:
        print_json(run)
    else:
        print(_summary(run))


def _follow(target: Target, args: argparse.Namespace, run: Mapping[str, Any]) -> Mapping[str, Any]:
    """Poll the backfill until it is over, drawing its progress."""
    progress = None if args.json else Progress(f"backfill {run['id']}", int(run["total"]))
    path = {"schedule_id": args.schedule_id, "backfill_id": run["id"]}
    try:
        while True:
            done = int(run["started"]) + int(run["skipped"]) + int(run["failed"])
            if progress is not None and done > progress.done:
                progress.advance(done - progress.done)
            if run["status"] != "running":
                return run
            time.sleep(args.poll_seconds)
            run = target.call("get_schedule_backfill", path=path)
    finally:
        if progress is not None:
            progress.finish()


def _ask_to_cancel(args: argparse.Namespace) -> bool:
    if args.cancel_on_interrupt:
        return True
    if not sys.stdin.isatty():
        return False
    try:
        answer = input("\nCancel the backfill (the executions started stay)? [y/N] ")
    except (EOFError, KeyboardInterrupt):
        return False
    return answer.strip().lower() in ("y", "yes")


def _interrupted(target: Target, args: argparse.Namespace, backfill_id: str) -> int:
    path = {"schedule_id": args.schedule_id, "backfill_id": backfill_id}
    if _ask_to_cancel(args):
        try:
            run = target.call("cancel_schedule_backfill", path=path)
        except AbiError as exc:  # over meanwhile
            print(f"not cancelled: {exc.code}: {exc.message}", file=sys.stderr)
            run = target.call("get_schedule_backfill", path=path)
        _print_run(args, run)
        return EXIT_INTERRUPTED
    print(
        f"backfill {backfill_id} goes on on the server; cancel it with POST"
        f" /api/v1/workflow_schedules/{args.schedule_id}/backfills/{backfill_id}/cancel",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def _cmd_backfill(args: argparse.Namespace) -> int:
    if not args.dry_run and not args.url:
        raise CliError("schedules backfill runs on a server: give --url and --token")
    target = open_target(args)
    backfill_id = None
    try:
        answer = target.call(
            "backfill_schedule", path={"schedule_id": args.schedule_id}, body=_body(args)
        )
        if args.dry_run:
            return _show_dry_run(args, answer)
        backfill_id = answer["id"]
        run = _follow(target, args, answer)
        _print_run(args, run)
        return EXIT_OK if run["status"] == "completed" else EXIT_FAILURE
    except KeyboardInterrupt:
        if backfill_id is None:
            return EXIT_INTERRUPTED
        return _interrupted(target, args, backfill_id)
    except AbiError as exc:
        raise CliError(f"{exc.code}: {exc.message}", EXIT_FAILURE) from None
    finally:
        target.close()


def _show_dry_run(args: argparse.Namespace, answer: Mapping[str, Any]) -> int:
    if args.json:
        print_json(answer)
        return EXIT_OK
    for item in answer["items"]:
        print(item["due_at"])
    more = " (the range has more)" if answer["truncated"] else ""
    print(f"{len(answer['items'])} due times would run{more}")
    return EXIT_OK


def add_backfill(sub: Commands, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``schedules backfill`` in the ``schedules`` group ``sub``."""
    backfill = sub.add_parser(
        "backfill",
        parents=parents,
        help="run a schedule's due times of a past range on a server, with a progress bar",
    )
    backfill.add_argument("schedule_id", metavar="SCHEDULE_ID")
    backfill.add_argument("--start", required=True, help="RFC 3339, the range's first instant")
    backfill.add_argument("--end", required=True, help="RFC 3339, not in the future")
    backfill.add_argument("--dry-run", action="store_true", help="list the due times only")
    backfill.add_argument(
        "--max-runs", type=_positive_int, default=100, help="due times at most (1..1000)"
    )
    backfill.add_argument("--overlap-policy", choices=("allow", "skip"), default="allow")
    backfill.add_argument(
        "--cancel-on-interrupt",
        action="store_true",
        help="Ctrl-C cancels the backfill without asking",
    )
    backfill.add_argument(
        "--poll-seconds", type=float, default=1.0, help="how often to read its progress"
    )
    backfill.set_defaults(handler=_cmd_backfill)
