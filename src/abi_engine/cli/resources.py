"""``abi-engine executions|workflows|schedules|deliveries ...``: the operators' look at an
engine, on its database (``--db``) or through a running server (``--url --token``).

Each command runs one operation of the REST API (:mod:`abi_engine.cli._client`)
and prints a table that fits the terminal, or its JSON with ``--json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from abi_engine.cli._client import remote_parent, run
from abi_engine.cli._common import EXIT_OK, _positive_int
from abi_engine.cli._output import Column, print_json, table
from abi_engine.cli.backfill import add_backfill

__all__ = ["add_commands"]

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


def _get(*keys: str) -> Any:
    def get(row: Mapping[str, Any]) -> Any:
        value: Any = row
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value

    return get


EXECUTION_COLUMNS: Sequence[Column] = (
    ("ID", _get("execution_id")),
    ("WORKFLOW", _get("workflow_id")),
    ("STATUS", _get("status")),
    ("STARTED", _get("started_at")),
    ("COMPLETED", _get("completed_at")),
    ("MS", _get("duration_ms")),
)
WORKFLOW_COLUMNS: Sequence[Column] = (
    ("ID", _get("id")),
    ("NAME", _get("name")),
    ("TYPE", _get("type")),
    ("STATUS", _get("status")),
    ("RUNS", _get("stats", "runs_total")),
    ("FAILED", _get("stats", "runs_failed")),
    ("CREATED", _get("created_at")),
)
SCHEDULE_COLUMNS: Sequence[Column] = (
    ("ID", _get("id")),
    ("WORKFLOW", _get("workflow_id")),
    ("NAME", _get("name")),
    ("TYPE", _get("schedule_type")),
    ("ENABLED", _get("enabled")),
    ("NEXT RUN", _get("next_execution")),
)
HISTORY_COLUMNS: Sequence[Column] = (
    ("DUE", _get("due_at")),
    ("RECORDED", _get("recorded_at")),
    ("OUTCOME", _get("outcome")),
    ("EXECUTION", _get("execution_id")),
    ("DETAIL", _get("detail")),
)
BACKFILL_COLUMNS: Sequence[Column] = (
    ("ID", _get("id")),
    ("STATUS", _get("status")),
    ("START", _get("start")),
    ("END", _get("end")),
    ("TOTAL", _get("total")),
    ("STARTED", _get("started")),
    ("SKIPPED", _get("skipped")),
    ("FAILED", _get("failed")),
    ("CREATED", _get("created_at")),
)
DELIVERY_COLUMNS: Sequence[Column] = (
    ("ID", _get("id")),
    ("EVENT", _get("event_type")),
    ("STATUS", _get("status")),
    ("ATTEMPTS", _get("attempt_count")),
    ("NEXT ATTEMPT", _get("next_attempt_at")),
    ("CREATED", _get("created_at")),
)


def _page_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page", type=_positive_int, default=1, help="page (from 1)")
    parser.add_argument(
        "--page-size", type=_positive_int, default=20, help="items per page (1..100; default 20)"
    )


def _show_page(args: argparse.Namespace, data: Any, columns: Sequence[Column]) -> int:
    if args.json:
        print_json(data)
        return EXIT_OK
    print(table(data["items"], columns))
    p = data["pagination"]
    print(f"page {p['page']}/{max(p['total_pages'], 1)}, {p['total_items']} in all")
    return EXIT_OK


def _show_one(args: argparse.Namespace, data: Any) -> int:
    if args.json or not isinstance(data, Mapping):
        print_json(data)
        return EXIT_OK
    rows = [{"field": k, "value": v} for k, v in data.items()]
    print(table(rows, (("FIELD", _get("field")), ("VALUE", _get("value")))))
    return EXIT_OK


# -- executions ------------------------------------------------------------------------


def _executions_list(args: argparse.Namespace) -> int:
    query = {
        "workflow_id": args.workflow,
        "status": args.status,
        "page": args.page,
        "page_size": args.page_size,
    }
    return _show_page(args, run(args, "list_executions", query=query), EXECUTION_COLUMNS)


def _executions_show(args: argparse.Namespace) -> int:
    data = run(args, "get_execution", path={"execution_id": args.execution_id})
    return _show_one(args, data)


def _executions_cancel(args: argparse.Namespace) -> int:
    data = run(args, "cancel_execution", path={"execution_id": args.execution_id})
    if args.json:
        print_json(data)
    else:
        print(f"{data.get('execution_id', args.execution_id)}\t{data.get('status')}")
    return EXIT_OK


def _add_executions(commands: Commands, parents: list[argparse.ArgumentParser]) -> None:
    group = commands.add_parser("executions", help="list, show and cancel executions")
    sub = group.add_subparsers(dest="executions_command", required=True, metavar="COMMAND")
    listing = sub.add_parser("list", parents=parents, help="executions, newest first")
    listing.add_argument("--workflow", metavar="WORKFLOW_ID", help="only this workflow's")
    listing.add_argument("--status", help="only these statuses (comma-separated)")
    _page_options(listing)
    listing.set_defaults(handler=_executions_list)
    show = sub.add_parser("show", parents=parents, help="one execution, with its steps")
    show.add_argument("execution_id", metavar="EXECUTION_ID")
    show.set_defaults(handler=_executions_show)
    cancel = sub.add_parser("cancel", parents=parents, help="cancel a running or queued execution")
    cancel.add_argument("execution_id", metavar="EXECUTION_ID")
    cancel.set_defaults(handler=_executions_cancel)


# -- workflows, schedules, deliveries --------------------------------------------------------


def _workflows_list(args: argparse.Namespace) -> int:
    query = {
        "status": args.status,
        "type": args.type,
        "page": args.page,
        "page_size": args.page_size,
    }
    return _show_page(args, run(args, "list_workflows", query=query), WORKFLOW_COLUMNS)


def _schedules_list(args: argparse.Namespace) -> int:
    query = {"workflow_id": args.workflow, "page": args.page, "page_size": args.page_size}
    return _show_page(args, run(args, "list_schedules", query=query), SCHEDULE_COLUMNS)


def _schedules_history(args: argparse.Namespace) -> int:
    data = run(
        args,
        "schedule_history",
        path={"schedule_id": args.schedule_id},
        query={"page": args.page, "page_size": args.page_size},
    )
    return _show_page(args, data, HISTORY_COLUMNS)


def _schedules_backfills(args: argparse.Namespace) -> int:
    data = run(
        args,
        "list_schedule_backfills",
        path={"schedule_id": args.schedule_id},
        query={"status": args.status, "page": args.page, "page_size": args.page_size},
    )
    return _show_page(args, data, BACKFILL_COLUMNS)


def _deliveries_list(args: argparse.Namespace) -> int:
    data = run(
        args,
        "list_webhook_deliveries",
        path={"webhook_id": args.webhook},
        query={"page": args.page, "page_size": args.page_size},
    )
    return _show_page(args, data, DELIVERY_COLUMNS)


def _deliveries_redeliver(args: argparse.Namespace) -> int:
    data = run(
        args,
        "redeliver_webhook_delivery",
        path={"webhook_id": args.webhook, "delivery_id": args.delivery_id},
    )
    if args.json:
        print_json(data)
    else:
        print(f"{data.get('id', args.delivery_id)}\t{data.get('status')}")
    return EXIT_OK


def _add_others(commands: Commands, parents: list[argparse.ArgumentParser]) -> None:
    workflows = commands.add_parser("workflows", help="list workflows")
    sub = workflows.add_subparsers(dest="workflows_command", required=True, metavar="COMMAND")
    listing = sub.add_parser("list", parents=parents, help="workflows, newest first")
    listing.add_argument("--status", choices=("active", "inactive"))
    listing.add_argument("--type", help="only workflows of this type")
    _page_options(listing)
    listing.set_defaults(handler=_workflows_list)

    schedules = commands.add_parser("schedules", help="list schedules and their firings")
    sub = schedules.add_subparsers(dest="schedules_command", required=True, metavar="COMMAND")
    listing = sub.add_parser("list", parents=parents, help="schedules")
    listing.add_argument("--workflow", metavar="WORKFLOW_ID", help="only this workflow's")
    _page_options(listing)
    listing.set_defaults(handler=_schedules_list)
    history = sub.add_parser("history", parents=parents, help="a schedule's firings")
    history.add_argument("schedule_id", metavar="SCHEDULE_ID")
    _page_options(history)
    history.set_defaults(handler=_schedules_history)
    backfills = sub.add_parser("backfills", parents=parents, help="a schedule's backfills")
    backfills.add_argument("schedule_id", metavar="SCHEDULE_ID")
    backfills.add_argument("--status", choices=("running", "completed", "cancelled", "failed"))
    _page_options(backfills)
    backfills.set_defaults(handler=_schedules_backfills)
    add_backfill(sub, parents)

    deliveries = commands.add_parser("deliveries", help="a webhook's deliveries")
    sub = deliveries.add_subparsers(dest="deliveries_command", required=True, metavar="COMMAND")
    listing = sub.add_parser("list", parents=parents, help="a webhook's deliveries")
    listing.add_argument("--webhook", required=True, metavar="WEBHOOK_ID")
    _page_options(listing)
    listing.set_defaults(handler=_deliveries_list)
    again = sub.add_parser("redeliver", parents=parents, help="send a delivery again")
    again.add_argument("--webhook", required=True, metavar="WEBHOOK_ID")
    again.add_argument("delivery_id", metavar="DELIVERY_ID")
    again.set_defaults(handler=_deliveries_redeliver)


def add_commands(commands: Commands, db: argparse.ArgumentParser) -> None:
    """Register ``executions``, ``workflows``, ``schedules`` and ``deliveries``."""
    parents = [db, remote_parent()]
    _add_executions(commands, parents)
    _add_others(commands, parents)
