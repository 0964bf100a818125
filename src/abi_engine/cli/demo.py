"""``abi-engine demo``: a token and an example workflow, ``curl`` examples, then serve."""

from __future__ import annotations

import argparse
import logging
import shlex
import sqlite3
from typing import TYPE_CHECKING, Any

from abi_engine.cli._common import DEMO_MARK, DEMO_USER, CliError, _redact
from abi_engine.cli.serve import _serve
from abi_engine.errors import AbiError

if TYPE_CHECKING:
    from abi_engine.engine import Engine
    from abi_engine.models import Workflow


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    db: argparse.ArgumentParser,
    server: argparse.ArgumentParser,
) -> None:
    """Register ``demo``."""
    demo = commands.add_parser(
        "demo",
        parents=[db, server],
        help="create a demo token and example workflow, print curl examples, and serve",
    )
    demo.set_defaults(handler=_cmd_demo)


_FEEDBACK_EXAMPLE: dict[str, Any] = {
    "name": "Customer Feedback Analysis",
    "description": "Analyzes customer feedback and generates insights",
    "type": "feedback_analysis",
    "configuration": {
        "nlp_service": "default",
        "sentiment_analysis": True,
        "topic_extraction": True,
        "language": "en",
        "response_threshold": 0.7,
    },
    "metadata": {"department": "customer_success", "priority": "medium", "example": DEMO_MARK},
}
_FEEDBACK_PARAMETERS: dict[str, Any] = {
    "feedback_id": "f_12345",
    "customer_id": "c_67890",
    # The specification's own example text; the default service answers "mixed": the
    # product praised (positive), the user interface criticised (negative).
    "feedback_text": (
        "I really love your product, but the latest update made the user interface more"
        " complicated. It's still a great service overall though!"
    ),
    "source": "email",
    "include_recommendations": True,
}
_CUSTOM_EXAMPLE: dict[str, Any] = {
    "name": "Add two numbers",
    "description": "A declarative custom workflow: its result is parameters a + b",
    "type": "custom",
    "configuration": {
        "steps": [
            {
                "name": "total",
                "action": "transform",
                "expressions": {"sum": "parameters['a'] + parameters['b']"},
            }
        ]
    },
    "metadata": {"department": "demo", "example": DEMO_MARK},
}
_CUSTOM_PARAMETERS: dict[str, Any] = {"a": 2, "b": 3}


async def _find_demo_workflow(engine: Engine) -> Workflow | None:
    page = 1
    while True:
        found = await engine.workflows.list(page=page, page_size=100, sort_order="asc")
        for workflow in found.items:
            if workflow.metadata.get("example") == DEMO_MARK:
                return workflow
        if page >= found.pagination.total_pages:
            return None
        page += 1


async def _create_demo_workflow(engine: Engine) -> Workflow:
    from abi_engine.auth import Principal

    actor = Principal(user_id=DEMO_USER)
    if "feedback_analysis" in engine.workflow_types:
        try:
            return await engine.workflows.create(_FEEDBACK_EXAMPLE, actor=actor)
        except AbiError as exc:
            logging.getLogger("abi_engine.cli").warning(
                "the feedback_analysis example was refused (%s); using a custom workflow",
                exc.message,
            )
    return await engine.workflows.create(_CUSTOM_EXAMPLE, actor=actor)


async def _demo_workflow(engine: Engine) -> Workflow:
    """The demo's example workflow (created when missing), active."""
    from abi_engine.models import WorkflowStatus

    workflow = await _find_demo_workflow(engine) or await _create_demo_workflow(engine)
    if workflow.status is not WorkflowStatus.ACTIVE:
        await engine.workflows.activate(workflow.id)
    return workflow


def _can_execute() -> bool:
    from abi_engine.api import OPERATIONS

    return any(
        op.method == "POST" and op.path == "/workflows/{workflow_id}/execute"
        for op in OPERATIONS.values()
    )


def _curl(token: str, url: str, body: dict[str, Any] | None = None) -> str:
    import json

    parts = ["curl", "-s", "-H", f"Authorization: Bearer {token}"]
    if body is not None:
        parts += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    return " ".join(shlex.quote(part) for part in [*parts, url])


def _demo_text(token: str, workflow: Workflow, root_url: str, db: str) -> str:
    api = f"{root_url}/api/v1"
    lines = [
        f"abi-engine demo: an access token for {DEMO_USER} (all scopes) and an example workflow",
        f"database: {db}",
        f"token: {token}",
        f"workflow: {workflow.id} ({workflow.name}, type {workflow.type}, active)",
        "",
        "Try it from another terminal:",
        f"  curl -s {api}/health",
        f"  {_curl(token, f'{api}/workflows')}",
        f"  {_curl(token, f'{api}/workflows/{workflow.id}')}",
    ]
    if _can_execute():
        params = _FEEDBACK_PARAMETERS if workflow.type == "feedback_analysis" else None
        body = {
            "parameters": params or _CUSTOM_PARAMETERS,
            "execution_options": {"wait_for_completion": True, "timeout_seconds": 30},
        }
        lines.append(f"  {_curl(token, f'{api}/workflows/{workflow.id}/execute', body)}")
    lines += [
        f"The OpenAPI document: {api}/openapi.json",
        f"The dashboard: {root_url}/ui/ (sign in with the token above)",
        "Stop with Ctrl+C.",
        "",
    ]
    return "\n".join(lines)


async def _demo_prepare(engine: Engine, root_url: str) -> None:
    try:
        token = engine.tokens.create_token(DEMO_USER, None, name=DEMO_MARK)
        workflow = await _demo_workflow(engine)
    except (AbiError, sqlite3.Error) as exc:
        raise CliError(f"cannot prepare the demo: {exc}") from None
    print(_demo_text(token, workflow, root_url, _redact(engine.db_url)), flush=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    return _serve(args, _demo_prepare)
