"""The resources of abi-engine as attrs classes.

The single converter in :mod:`abi_engine.converter` turns each into exactly the
JSON the seed shows. Field names are the JSON names. Every documented field is
always in the JSON: one that has no value (``completed_at`` while running,
``last_execution`` before a first run, ``activated_at`` of a workflow never
activated...) is ``null``, never left out.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import attrs

from abi_engine.limits import Items, Number, Text
from abi_engine.models_schedules import (
    BackfillItem,
    FiringFailure,
    FoldPolicy,
    GapPolicy,
    IntervalUnit,
    LastExecution,
    MisfirePolicy,
    OverlapPolicy,
    ResumeMode,
    Schedule,
    ScheduleBackfill,
    ScheduleHistoryEntry,
    ScheduleOccurrence,
    SchedulePreview,
    ScheduleSummary,
    ScheduleType,
)
from abi_engine.models_status import (
    ExecutionStatus,
    IntegrationStatus,
    StepStatus,
    WorkflowStatus,
)

__all__ = [
    "ActivationResult",
    "BackfillItem",
    "ConcurrencyRule",
    "ConcurrencySlot",
    "CreatedToken",
    "DebounceRule",
    "DeleteResult",
    "Execution",
    "ExecutionError",
    "ExecutionStatus",
    "ExecutionSummary",
    "FiringFailure",
    "FoldPolicy",
    "GapPolicy",
    "Integration",
    "IntegrationStatus",
    "IntervalUnit",
    "LastExecution",
    "MisfirePolicy",
    "NotificationTemplate",
    "OverlapPolicy",
    "Page",
    "Pagination",
    "RateLimitRule",
    "ResumeMode",
    "RevokeResult",
    "Schedule",
    "ScheduleBackfill",
    "ScheduleHistoryEntry",
    "ScheduleOccurrence",
    "SchedulePreview",
    "ScheduleSummary",
    "ScheduleType",
    "Scope",
    "SignalDelivery",
    "Step",
    "StepError",
    "StepStatus",
    "TemplateStatus",
    "Token",
    "TokenCreateRequest",
    "User",
    "Workflow",
    "WorkflowConcurrency",
    "WorkflowIntegration",
    "WorkflowStats",
    "WorkflowStatus",
    "WorkflowSummary",
    "WorkflowTemplate",
    "WorkflowTypeInfo",
]

T = TypeVar("T")


class Scope(enum.StrEnum):
    WORKFLOWS_READ = "workflows:read"
    WORKFLOWS_WRITE = "workflows:write"
    EXECUTIONS_READ = "executions:read"
    EXECUTIONS_WRITE = "executions:write"
    SCHEDULES_READ = "schedules:read"
    SCHEDULES_WRITE = "schedules:write"
    WEBHOOKS_ADMIN = "webhooks:admin"
    INTEGRATIONS_ADMIN = "integrations:admin"
    AUDIT_READ = "audit:read"
    METRICS_READ = "metrics:read"


@attrs.define(kw_only=True)
class WorkflowIntegration:
    """An integration a workflow uses.

    ``id`` is an integration connection id (``int_...``); ``required`` means an
    execution needs it connected; ``status`` is ``pending`` until the engine has
    a connection of that id, then ``connected``.
    """

    id: str
    required: bool = False
    status: IntegrationStatus = IntegrationStatus.PENDING


class TemplateStatus(enum.StrEnum):
    PENDING = "pending"
    AVAILABLE = "available"


@attrs.define(kw_only=True)
class WorkflowTemplate:
    """A notification template a workflow uses by id.

    ``status`` is ``pending`` until a template of that id exists
    (``PUT /api/v1/notification_templates/{id}``), then ``available``; a
    workflow whose template is pending cannot be executed (409
    ``INVALID_STATE``).
    """

    id: str
    status: TemplateStatus = TemplateStatus.PENDING


@attrs.define(kw_only=True)
class WorkflowStats:
    """Run counters of a workflow, kept up to date as executions finish."""

    runs_total: int = 0
    runs_success: int = 0
    runs_failed: int = 0
    average_duration_ms: int = 0


@attrs.define(kw_only=True)
class ConcurrencyRule:
    """A workflow's limit per key: ``{"key": "parameters.customer_id", "limit": 1}``.

    ``key`` is a safe expression over ``parameters`` (evaluated once, when an
    execution is requested); at most ``limit`` executions with the same key
    value run at once.
    """

    key: Annotated[str, Text(max_length=500, min_length=1)]
    limit: Annotated[int, Number(minimum=1, maximum=100_000)]


@attrs.define(kw_only=True)
class RateLimitRule:
    """A workflow's rate limit: ``{"key": "parameters.customer_id", "limit": 10,
    "period_seconds": 60}``.

    At most ``limit`` executions with the same key value (all of them without a
    ``key``) start in any ``period_seconds``; the others wait queued
    (``queued_reason`` ``rate_limit``) until the window allows them, never refused.
    """

    key: Annotated[str, Text(max_length=500, min_length=1)] | None = None
    limit: Annotated[int, Number(minimum=1, maximum=100_000)]
    period_seconds: Annotated[float, Number(minimum=0.001, maximum=2_678_400)]


@attrs.define(kw_only=True)
class DebounceRule:
    """A workflow's debounce: ``{"key": "parameters.customer_id", "seconds": 5}``.

    Of executions with the same key value (all of them without a ``key``)
    requested less than ``seconds`` apart, only the last runs, ``seconds`` after
    it was requested; the others end ``skipped`` with ``debounced_by`` naming it.
    """

    key: Annotated[str, Text(max_length=500, min_length=1)] | None = None
    seconds: Annotated[float, Number(minimum=0.001, maximum=86_400)]


@attrs.define(kw_only=True)
class ConcurrencySlot:
    """A slot of a workflow's concurrency held by an execution: its ``key`` (``null``
    without one), ``status`` (``queued``: granted, about to run; ``running``) and
    ``since`` (when it started, or else was requested)."""

    execution_id: str
    key: str | None = None
    status: ExecutionStatus
    since: datetime


@attrs.define(kw_only=True)
class WorkflowConcurrency:
    """A workflow's concurrency limits and who holds its slots now (``GET
    /workflows/{id}/concurrency``)."""

    workflow_id: str
    max_concurrency: int | None = None
    concurrency: ConcurrencyRule | None = None
    slots: list[ConcurrencySlot] = attrs.Factory(list)
    #: Its rate limit (see :class:`RateLimitRule`), ``null`` if none.
    rate_limit: RateLimitRule | None = None


@attrs.define(kw_only=True)
class Workflow:
    """A workflow: a configured instance of a workflow type.

    Fields: ``id`` (``wf_...``), ``name``, ``description``, ``type`` (a
    registered workflow type), ``configuration`` (validated by the type),
    ``integrations``, ``notification_templates`` (the managed templates its
    configuration names by id, each ``pending`` or ``available``; empty for
    types that use none), ``metadata`` (free-form; ``metadata.department`` is
    filterable), ``status`` (``active``/``inactive``), ``stats``, timestamps,
    ``created_by`` (the user id of the token that created it), and
    ``retention_days`` (finished executions older than this many days are
    pruned; ``null`` keeps them all), ``max_concurrency`` (how many of its
    executions may run at once; ``null``: no limit) and ``concurrency`` (a
    limit per key: see :class:`ConcurrencyRule`).
    """

    id: str
    name: str
    description: str | None = None
    type: str
    configuration: dict[str, Any] = attrs.Factory(dict)
    integrations: list[WorkflowIntegration] = attrs.Factory(list)
    notification_templates: list[WorkflowTemplate] = attrs.Factory(list)
    metadata: dict[str, Any] = attrs.Factory(dict)
    status: WorkflowStatus = WorkflowStatus.INACTIVE
    stats: WorkflowStats = attrs.Factory(WorkflowStats)
    created_at: datetime
    updated_at: datetime
    activated_at: datetime | None = None
    deactivated_at: datetime | None = None
    created_by: str | None = None
    retention_days: int | None = None
    max_concurrency: int | None = None
    concurrency: ConcurrencyRule | None = None
    #: At most so many starts per period (see :class:`RateLimitRule`); ``null``: none.
    rate_limit: RateLimitRule | None = None
    #: Only the last of a burst runs (see :class:`DebounceRule`); ``null``: none.
    debounce: DebounceRule | None = None


@attrs.define(kw_only=True)
class WorkflowSummary:
    """A workflow as list endpoints show it."""

    id: str
    name: str
    description: str | None = None
    type: str
    status: WorkflowStatus
    metadata: dict[str, Any] = attrs.Factory(dict)
    created_at: datetime
    updated_at: datetime


@attrs.define(kw_only=True)
class ActivationResult:
    """The answer to activate/deactivate: the workflow's status and when it was last
    activated and deactivated (``None``: never)."""

    id: str
    status: WorkflowStatus
    activated_at: datetime | None = None
    deactivated_at: datetime | None = None
    updated_at: datetime


@attrs.define(kw_only=True)
class DeleteResult:
    """The answer to a delete."""

    id: str
    deleted: bool = True


@attrs.define(kw_only=True)
class StepError:
    """Why a step failed: the exception type and its message (never secrets)."""

    type: str
    message: str


@attrs.define(kw_only=True)
class Step:
    """One step of an execution, as recorded."""

    name: str
    status: StepStatus = StepStatus.PENDING
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    attempts: int | None = None
    error: StepError | None = None
    #: The execution whose stored result this step reused, in a rerun (``null``: it ran).
    reused_from: str | None = None


@attrs.define(kw_only=True)
class ExecutionError:
    """Why an execution did not complete.

    ``code`` is ``WORKFLOW_EXECUTION_ERROR`` (a step failed),
    ``EXECUTION_TIMEOUT`` or ``CANCELLED``; ``step`` the step concerned;
    ``type`` the exception's class name; ``message`` never carries secrets.
    """

    code: str
    message: str
    step: str | None = None
    type: str | None = None


@attrs.define(kw_only=True)
class Execution:
    """One run of a workflow."""

    execution_id: str
    workflow_id: str
    workflow_name: str | None = None
    status: ExecutionStatus
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    parameters: dict[str, Any] = attrs.Factory(dict)
    result: Any = None
    error: ExecutionError | None = None
    steps: list[Step] | None = None
    callback_url: str | None = None
    schedule_id: str | None = None
    #: The due time a schedule started it for (its logical time; ``None`` if not scheduled).
    scheduled_for: datetime | None = None
    created_by: str | None = None
    created_at: datetime | None = None
    #: The execution this one reruns (``POST .../rerun``), ``null`` for a first run.
    rerun_of: str | None = None
    #: Why a queued execution waits (``worker_pool``, ``paused``, ``concurrency_limit``,
    #: ``rate_limit``, ``debounce``, ``priority``), ``null`` unless queued.
    queued_reason: str | None = None
    #: The value of its workflow's ``concurrency.key`` for this execution, ``null`` if none.
    concurrency_key: str | None = None
    #: Since when a queued execution waits, ``null`` unless queued.
    queued_since: datetime | None = None
    #: The execution whose step started this one (``ctx.run_workflow``), ``null`` if none.
    parent_execution_id: str | None = None
    #: The value of its workflow's ``rate_limit.key`` for this execution, ``null`` if none.
    rate_limit_key: str | None = None
    #: The value of its workflow's ``debounce.key`` for this execution, ``null`` if none.
    debounce_key: str | None = None
    #: The later execution that replaced this ``skipped`` one (debounce), else ``null``.
    debounced_by: str | None = None


@attrs.define(kw_only=True)
class ExecutionSummary:
    """An execution as list endpoints show it (``queued_reason``, ``queued_since``:
    why and since when a queued one waits, ``null`` unless queued)."""

    execution_id: str
    workflow_id: str
    workflow_name: str | None = None
    status: ExecutionStatus
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    queued_reason: str | None = None
    queued_since: datetime | None = None


@attrs.define(kw_only=True)
class SignalDelivery:
    """What became of a signal addressed by correlation key (``POST /signals``).

    ``status`` is ``delivered`` (``execution_id`` is the execution it woke) or
    ``pending`` (no execution waits on the key yet: kept until ``expires_at``
    for the first wait on it).
    """

    signal_id: str
    name: str
    correlation_key: str
    status: str
    execution_id: str | None = None
    expires_at: datetime | None = None


@attrs.define(kw_only=True)
class Integration:
    """A connection to an outside system, by id (``int_...``).

    ``config`` holds the provider's settings; the fields a provider marks as
    secret are stored but never returned (they show as ``"********"``).
    """

    id: str
    provider: str
    config: dict[str, Any] = attrs.Factory(dict)
    created_at: datetime
    updated_at: datetime


@attrs.define(kw_only=True)
class User:
    """A user (``usr_...``); tokens act on their behalf."""

    id: str
    created_at: datetime


@attrs.define(kw_only=True)
class Token:
    """An access token as stored and listed: id (``tok_...``), user, scopes, name; never the token.

    ``parent_id`` is the ``tok_`` id of the token that created this one through
    the self-service operation (``POST /api/v1/tokens``), ``None`` for a token
    made by the command line or ``engine.tokens.create_token``. Revoking a
    token revokes every live token descended from it. Only the token's SHA-256
    hash is kept, and it is never shown either.
    """

    id: str
    user_id: str
    scopes: frozenset[Scope]
    created_at: datetime
    name: str | None = None
    parent_id: str | None = None


@attrs.define(kw_only=True)
class CreatedToken(Token):
    """A new access token: its fields and ``token``, the secret itself, shown in this answer only.

    Only the token's hash is stored: it cannot be shown again.
    """

    token: str


@attrs.define(kw_only=True)
class TokenCreateRequest:
    """The body of ``POST /api/v1/tokens`` (every field optional).

    ``scopes`` defaults to the calling token's scopes; each one given must be
    a scope the calling token has (a token cannot grant more than it holds).
    """

    name: Annotated[str, Text(max_length=200)] | None = None
    scopes: Annotated[list[Scope], Items(min_items=1, max_items=len(Scope))] | None = None


@attrs.define(kw_only=True)
class RevokeResult:
    """The answer to a token revocation.

    ``revoked_descendants`` counts the live tokens descended from the revoked
    one (created from it, or from those, and so on) that were revoked with it.
    """

    id: str
    revoked: bool = True
    revoked_descendants: int = 0


@attrs.define(kw_only=True)
class Pagination:
    page: int
    page_size: int
    total_items: int
    total_pages: int


@attrs.define(kw_only=True)
class Page(Generic[T]):
    """One page of a list: ``items`` and ``pagination``."""

    items: list[T]
    pagination: Pagination

    @classmethod
    def build(cls, items: list[T], page: int, page_size: int, total: int) -> Page[T]:
        pages = (total + page_size - 1) // page_size if total else 0
        return cls(
            items=items,
            pagination=Pagination(
                page=page, page_size=page_size, total_items=total, total_pages=pages
            ),
        )


@attrs.define(kw_only=True)
class NotificationTemplate:
    """A message template of the ``notification`` type, managed by id.

    ``body`` (and the optional ``subject``) are written with ``$name`` /
    ``${name}`` placeholders filled from the execution's parameters (see
    ``docs/notification.md``); ``description`` is free text for people.
    """

    id: str
    subject: str | None = None
    body: str
    description: str | None = None
    created_at: datetime
    updated_at: datetime


@attrs.define(kw_only=True)
class WorkflowTypeInfo:
    """An installed workflow type, as ``GET /api/v1/workflow_types`` lists it.

    ``configuration_schema`` and ``parameters_schema`` are JSON Schemas
    (draft 2020-12) of a workflow's ``configuration`` and an execution's
    ``parameters``, generated from the type's attrs classes; ``docs_url``
    points at its documentation (``None`` when the type names none);
    ``plugin`` names the plugin that registered it.
    """

    name: str
    description: str
    configuration_schema: dict[str, Any]
    parameters_schema: dict[str, Any]
    docs_url: str | None = None
    plugin: str | None = None
