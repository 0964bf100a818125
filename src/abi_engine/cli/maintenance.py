"""``abi-engine prune`` and ``abi-engine audit verify``: retention and the audit chain,
on a database (``--db``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import anyio

from abi_engine.cli._common import EXIT_FAILURE, EXIT_OK, _open_engine, _redact
from abi_engine.cli._output import Progress, print_json

if TYPE_CHECKING:
    from abi_engine.retention import PruneReport

    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["add_commands"]


def _print_report(report: PruneReport) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    print(f"{verb} {report.total_executions} executions, {report.audit_entries} audit entries")
    for workflow_id, count in sorted(report.executions.items()):
        print(f"  {workflow_id}\t{count}")
    if not report.dry_run:
        print(f"{report.batches} batches, {report.pages} free pages given back")


def _cmd_prune(args: argparse.Namespace) -> int:
    engine = _open_engine(args.db, create_dirs=args.create_dirs)
    try:
        plan = anyio.run(engine.pruner.plan)
        if args.dry_run:
            report = plan
        else:
            progress = Progress("pruning executions", plan.total_executions)
            report = anyio.run(lambda: engine.pruner.prune(on_batch=progress.advance))
            progress.finish()
    finally:
        engine.close()
    if args.json:
        print_json(report.as_json())
    else:
        _print_report(report)
    return EXIT_OK


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    engine = _open_engine(args.db, create_dirs=args.create_dirs)
    try:
        check = anyio.run(engine.audit.verify)
    finally:
        engine.close()
    if args.json:
        print_json(
            {
                "ok": check.ok,
                "checked": check.checked,
                "first_id": check.first_id,
                "last_id": check.last_id,
                "broken_id": check.broken_id,
                "reason": check.reason,
            }
        )
    elif check.ok:
        span = f" (ids {check.first_id}..{check.last_id})" if check.checked else ""
        print(f"audit chain ok: {check.checked} entries{span} in {_redact(args.db)}")
    else:
        print(f"audit chain broken at entry {check.broken_id}: {check.reason}")
    return EXIT_OK if check.ok else EXIT_FAILURE


def add_commands(commands: Commands, db: argparse.ArgumentParser) -> None:
    """Register ``prune`` and ``audit verify``."""
    prune = commands.add_parser(
        "prune",
        parents=[db],
        help="delete finished executions past their workflow's retention_days and audit"
        " entries past audit_retention_days (a progress bar on stderr)",
    )
    prune.add_argument("--dry-run", action="store_true", help="only report what would go")
    prune.add_argument("--json", action="store_true", help="print the report as JSON")
    prune.set_defaults(handler=_cmd_prune)

    audit = commands.add_parser("audit", help="the audit log")
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = sub.add_parser(
        "verify",
        parents=[db],
        help="check the audit log's hash chain; exit 1 naming the first broken entry",
    )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(handler=_cmd_audit_verify)
