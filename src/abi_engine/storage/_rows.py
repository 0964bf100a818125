"""Rows of the core tables (workflows, tokens) as models: shared by the SQLite and PostgreSQL stores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from abi_engine.models import (
    ConcurrencyRule,
    DebounceRule,
    RateLimitRule,
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
    " max_concurrency, concurrency_key, concurrency_limit, rate_limit_key, rate_limit,"
    " rate_period_ms, debounce_key, debounce_ms"
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
        *shaping,
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
        **_shaping_rules(shaping),
    )


def _shaping_rules(columns: Sequence[Any]) -> dict[str, Any]:
    """``rate_limit`` and ``debounce`` of a workflow from its columns ``rate_limit_key,
    rate_limit, rate_period_ms, debounce_key, debounce_ms``."""
    rate_key, rate_limit, period_ms, debounce_key, debounce_ms = columns
    return {
        "rate_limit": None
        if rate_limit is None
        else RateLimitRule(key=rate_key, limit=rate_limit, period_seconds=period_ms / 1000),
        "debounce": None
        if debounce_ms is None
        else DebounceRule(key=debounce_key, seconds=debounce_ms / 1000),
    }


def _shaping(workflow: Workflow) -> tuple[Any, ...]:
    """The columns ``rate_limit_key, rate_limit, rate_period_ms, debounce_key,
    debounce_ms`` of ``workflow``."""
    rate, debounce = workflow.rate_limit, workflow.debounce
    return (
        None if rate is None else rate.key,
        None if rate is None else rate.limit,
        None if rate is None else round(rate.period_seconds * 1000),
        None if debounce is None else debounce.key,
        None if debounce is None else round(debounce.seconds * 1000),
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
