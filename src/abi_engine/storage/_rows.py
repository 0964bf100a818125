"""Rows of the core tables (workflows, tokens) as models: shared by the SQLite and PostgreSQL stores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from abi_engine.models import (
    ConcurrencyRule,
    Scope,
    Token,
    Workflow,
    WorkflowIntegration,
    WorkflowStats,
    WorkflowStatus,
)
from abi_engine.storage._codec import from_ms, loads

_WORKFLOW_COLUMNS = (
    "id, name, description, type, status, configuration, integrations, metadata,"
    " created_at, updated_at, activated_at, deactivated_at, created_by,"
    " runs_total, runs_success, runs_failed, duration_total_ms, retention_days,"
    " max_concurrency, concurrency_key, concurrency_limit"
)

_TOKEN_COLUMNS = "id, user_id, scopes, name, created_at, parent_id"


def _token_tree(placeholder: str) -> str:
    """A ``WITH RECURSIVE tree (id)`` of every token descended from the one named by the parameter.

    Children are found through ``idx_tokens_parent``; the walk goes through
    revoked tokens too (their live descendants still belong to the tree).
    """
    return (
        "WITH RECURSIVE tree (id) AS ("
        f"SELECT id FROM tokens WHERE parent_id = {placeholder}"
        " UNION SELECT t.id FROM tokens AS t JOIN tree ON t.parent_id = tree.id)"
    )


def _row_to_workflow(row: Sequence[Any]) -> Workflow:
    (
        wf_id,
        name,
        description,
        wf_type,
        status,
        configuration,
        integrations,
        metadata,
        created_at,
        updated_at,
        activated_at,
        deactivated_at,
        created_by,
        runs_total,
        runs_success,
        runs_failed,
        duration_total,
        retention_days,
        max_concurrency,
        concurrency_key,
        concurrency_limit,
    ) = row
    return Workflow(
        id=wf_id,
        name=name,
        description=description,
        type=wf_type,
        status=WorkflowStatus(status),
        configuration=loads(configuration),
        integrations=[
            WorkflowIntegration(id=item["id"], required=item["required"])
            for item in loads(integrations)
        ],
        metadata=loads(metadata),
        stats=WorkflowStats(
            runs_total=runs_total,
            runs_success=runs_success,
            runs_failed=runs_failed,
            average_duration_ms=round(duration_total / runs_total) if runs_total else 0,
        ),
        created_at=from_ms(created_at),  # type: ignore[arg-type]
        updated_at=from_ms(updated_at),  # type: ignore[arg-type]
        activated_at=from_ms(activated_at),
        deactivated_at=from_ms(deactivated_at),
        created_by=created_by,
        retention_days=retention_days,
        max_concurrency=max_concurrency,
        concurrency=None
        if concurrency_key is None
        else ConcurrencyRule(key=concurrency_key, limit=concurrency_limit),
    )


def _concurrency(workflow: Workflow) -> tuple[int | None, str | None, int | None]:
    """The columns ``max_concurrency, concurrency_key, concurrency_limit`` of ``workflow``."""
    rule = workflow.concurrency
    return (
        workflow.max_concurrency,
        None if rule is None else rule.key,
        None if rule is None else rule.limit,
    )


def _department(metadata: dict[str, Any]) -> str | None:
    value = metadata.get("department")
    return value if isinstance(value, str) else None


def _row_to_token(row: Sequence[Any]) -> Token:
    return Token(
        id=row[0],
        user_id=row[1],
        scopes=frozenset(Scope(s) for s in loads(row[2])),
        name=row[3],
        created_at=from_ms(row[4]),  # type: ignore[arg-type]
        parent_id=row[5],
    )
