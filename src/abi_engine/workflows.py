"""Workflow management: create, get, list, update, activate, deactivate, delete."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import attrs

from abi_engine.auth import Principal
from abi_engine.converter import structure, unstructure
from abi_engine.errors import (
    AbiError,
    InvalidRequest,
    InvalidState,
    InvalidWorkflowConfig,
    WorkflowNotFound,
)
from abi_engine.events import Event, EventPolicy
from abi_engine.expressions import check_key_expression
from abi_engine.ids import new_id, utcnow
from abi_engine.integrations import IntegrationService, check_integration_id
from abi_engine.limits import DESCRIPTION, METADATA, NAME, Items, Json, Number, Text, UniqueBy
from abi_engine.models import (
    ActivationResult,
    ConcurrencyRule,
    ConcurrencySlot,
    DebounceRule,
    DeleteResult,
    ExecutionStatus,
    IntegrationStatus,
    Page,
    RateLimitRule,
    TemplateStatus,
    Workflow,
    WorkflowConcurrency,
    WorkflowIntegration,
    WorkflowStatus,
    WorkflowTemplate,
)
from abi_engine.notification_templates import NotificationTemplateService
from abi_engine.services import Service, check_page
from abi_engine.storage.base import Store, WorkflowQuery
from abi_engine.types import WorkflowType

__all__ = ["IntegrationSpec", "WorkflowRequest", "WorkflowService"]

MAX_NAME = NAME.max_length
MAX_DESCRIPTION = DESCRIPTION.max_length
#: Field limits of :class:`WorkflowRequest` (see :mod:`abi_engine.limits`).
TYPE_NAME = Text(max_length=100)
CONFIGURATION = Json(max_bytes=65_536)
INTEGRATIONS = Items(max_items=50)
INTEGRATION_ID = Text(
    max_length=124,
    pattern=r"^int_[A-Za-z0-9_.\-]{1,120}$",
    hint="must look like 'int_<name>' (letters, digits, _ . -)",
)
SORT_KEYS = ("created_at", "updated_at", "name")
UPDATABLE = (
    "name",
    "description",
    "type",
    "configuration",
    "integrations",
    "metadata",
    "retention_days",
    "max_concurrency",
    "concurrency",
    "rate_limit",
    "debounce",
)
#: The most ``retention_days`` may be (100 years).
MAX_RETENTION_DAYS = 36_500
RETENTION_DAYS = Number(minimum=1, maximum=MAX_RETENTION_DAYS)
#: The most ``max_concurrency`` and ``concurrency.limit`` may be.
MAX_CONCURRENCY = 100_000
#: The longest ``rate_limit.period_seconds`` (31 days) and ``debounce.seconds`` (a day).
MAX_RATE_PERIOD = 2_678_400
MAX_DEBOUNCE = 86_400


@attrs.define(kw_only=True)
class IntegrationSpec:
    """An integration a workflow asks for: ``{"id": "int_...", "required": bool}``."""

    id: Annotated[str, INTEGRATION_ID]
    required: bool = False


@attrs.define(kw_only=True)
class WorkflowRequest:
    """The body of ``POST /api/v1/workflows`` (and, merged, of ``PUT``)."""

    name: Annotated[str, NAME]
    description: Annotated[str, DESCRIPTION] | None = None
    type: Annotated[str, TYPE_NAME]
    configuration: Annotated[dict[str, Any], CONFIGURATION] = attrs.Factory(dict)
    integrations: Annotated[list[IntegrationSpec], INTEGRATIONS, UniqueBy("id")] = attrs.Factory(
        list
    )
    metadata: Annotated[dict[str, Any], METADATA] = attrs.Factory(dict)
    #: Days finished executions are kept (1..36500); ``null`` keeps them all; left out at
    #: creation, the engine's default (``RetentionSettings.execution_retention_days``).
    retention_days: Annotated[int, RETENTION_DAYS] | None = None
    #: How many of its executions may run at once (>= 1); ``null``: no limit.
    max_concurrency: Annotated[int, Number(minimum=1, maximum=MAX_CONCURRENCY)] | None = None
    #: A limit per key: ``{"key": "parameters.customer_id", "limit": 1}``; ``null``: none.
    concurrency: ConcurrencyRule | None = None
    #: At most ``limit`` starts per ``period_seconds`` (per ``key`` if given); ``null``: none.
    rate_limit: RateLimitRule | None = None
    #: Of a burst with one ``key``, only the last runs, ``seconds`` later; ``null``: none.
    debounce: DebounceRule | None = None


def _check_key(field: str, key: str | None) -> None:
    problem = None if key is None else check_key_expression(key)
    if problem is not None:
        raise InvalidRequest(f"'{field}' {problem}", {"field": field})


def _check_shaping(req: WorkflowRequest) -> None:
    """``rate_limit`` and ``debounce``: bounds the converter's constraints check too
    (for an object built in Python), and safe key expressions."""
    rate = req.rate_limit
    if rate is not None:
        if not 1 <= rate.limit <= MAX_CONCURRENCY:
            raise InvalidRequest(
                f"'rate_limit.limit' must be between 1 and {MAX_CONCURRENCY}",
                {"field": "rate_limit.limit"},
            )
        if not 0.001 <= rate.period_seconds <= MAX_RATE_PERIOD:
            raise InvalidRequest(
                f"'rate_limit.period_seconds' must be between 0.001 and {MAX_RATE_PERIOD}",
                {"field": "rate_limit.period_seconds"},
            )
        _check_key("rate_limit.key", rate.key)
    debounce = req.debounce
    if debounce is not None:
        if not 0.001 <= debounce.seconds <= MAX_DEBOUNCE:
            raise InvalidRequest(
                f"'debounce.seconds' must be between 0.001 and {MAX_DEBOUNCE}",
                {"field": "debounce.seconds"},
            )
        _check_key("debounce.key", debounce.key)


def _check_concurrency(req: WorkflowRequest) -> None:
    if req.max_concurrency is not None and not 1 <= req.max_concurrency <= MAX_CONCURRENCY:
        raise InvalidRequest(
            f"'max_concurrency' must be between 1 and {MAX_CONCURRENCY}, or null",
            {"field": "max_concurrency"},
        )
    rule = req.concurrency
    if rule is None:
        return
    if not 1 <= rule.limit <= MAX_CONCURRENCY:
        raise InvalidRequest(
            f"'concurrency.limit' must be between 1 and {MAX_CONCURRENCY}",
            {"field": "concurrency.limit"},
        )
    problem = check_key_expression(rule.key)
    if problem is not None:
        raise InvalidRequest(f"'concurrency.key' {problem}", {"field": "concurrency.key"})


def _check_request(req: WorkflowRequest) -> None:
    if not req.name.strip():
        raise InvalidRequest("'name' must not be empty", {"field": "name"})
    if len(req.name) > MAX_NAME:
        raise InvalidRequest(f"'name' is longer than {MAX_NAME} characters", {"field": "name"})
    if req.description is not None and len(req.description) > MAX_DESCRIPTION:
        raise InvalidRequest(
            f"'description' is longer than {MAX_DESCRIPTION} characters", {"field": "description"}
        )
    days = req.retention_days
    if days is not None and not 1 <= days <= MAX_RETENTION_DAYS:
        raise InvalidRequest(
            f"'retention_days' must be between 1 and {MAX_RETENTION_DAYS}, or null",
            {"field": "retention_days"},
        )
    _check_concurrency(req)
    _check_shaping(req)
    seen: set[str] = set()
    for index, spec in enumerate(req.integrations):
        field = f"integrations[{index}].id"
        check_integration_id(spec.id, field)
        if spec.id in seen:
            raise InvalidRequest(f"Integration {spec.id!r} is listed twice", {"field": field})
        seen.add(spec.id)


class WorkflowService(Service):
    """The business rules of workflows (``engine.workflows``)."""

    def __init__(
        self,
        store: Store,
        types: Mapping[str, WorkflowType],
        integrations: IntegrationService,
        events: EventPolicy,
        templates: NotificationTemplateService | None = None,
        *,
        default_retention_days: int | None = None,
    ) -> None:
        super().__init__(store)
        #: The ``retention_days`` of a workflow created without one.
        self.default_retention_days = default_retention_days
        self._types = types
        self._integrations = integrations
        self._event_policy = events
        self._templates = templates

    # -- helpers ------------------------------------------------------------------

    def find_type(self, name: str) -> WorkflowType | None:
        """The registered type ``name``, ``None`` when unknown."""
        return self._types.get(name)

    def workflow_type(self, name: str) -> WorkflowType:
        """The registered type ``name``; ``InvalidWorkflowConfig`` when unknown."""
        found = self._types.get(name)
        if found is None:
            raise InvalidWorkflowConfig(
                f"Unknown workflow type {name!r}",
                {"field": "type", "allowed": sorted(self._types)},
            )
        return found

    def _validate(self, req: WorkflowRequest) -> None:
        _check_request(req)
        self.workflow_type(req.type).parse_configuration(req.configuration)

    def template_ids(self, workflow: Workflow) -> list[str]:
        """The managed notification templates the workflow's configuration names."""
        wtype = self._types.get(workflow.type)
        if wtype is None or type(wtype).template_ids is WorkflowType.template_ids:
            return []  # (no configuration parsed for types that use no templates)
        try:
            config = wtype.parse_configuration(workflow.configuration)
        except AbiError:  # a stored configuration its type no longer accepts
            return []
        return list(dict.fromkeys(wtype.template_ids(config)))

    async def _with_status(self, workflow: Workflow) -> Workflow:
        ids = [i.id for i in workflow.integrations]
        connected = await self._integrations.connected(ids) if ids else set()
        for item in workflow.integrations:
            item.status = (
                IntegrationStatus.CONNECTED if item.id in connected else IntegrationStatus.PENDING
            )
        template_ids = self.template_ids(workflow)
        found = (
            await self._templates.find(template_ids)
            if template_ids and self._templates is not None
            else {}
        )
        workflow.notification_templates = [
            WorkflowTemplate(
                id=template_id,
                status=TemplateStatus.AVAILABLE if template_id in found else TemplateStatus.PENDING,
            )
            for template_id in template_ids
        ]
        return workflow

    async def _load(self, workflow_id: str) -> Workflow:
        if not isinstance(workflow_id, str):
            raise WorkflowNotFound(str(workflow_id))
        found = await self._store.get_workflow(workflow_id)
        if found is None:
            raise WorkflowNotFound(workflow_id)
        return found

    def _events(self, kind: str, workflow: Workflow) -> list[Event]:
        """The event of a change, if anything consumes it (else none is built or stored)."""
        kind = f"workflow.{kind}"
        if not self._event_policy.wants(kind):
            return []
        return [Event(type=kind, data=unstructure(workflow))]

    async def _commit(
        self, write: Callable[..., Awaitable[Any]], *args: Any, events: list[Event]
    ) -> Any:
        result = await write(*args, events)
        self._event_policy.emit(events)
        return result

    # -- operations -----------------------------------------------------------------

    async def create(
        self, data: Mapping[str, Any] | WorkflowRequest, *, actor: Principal | None = None
    ) -> Workflow:
        """Create an ``inactive`` workflow from the seed's request body."""
        req = data if isinstance(data, WorkflowRequest) else structure(data, WorkflowRequest)
        if isinstance(data, Mapping) and "retention_days" not in data:
            req = attrs.evolve(req, retention_days=self.default_retention_days)
        self._validate(req)
        now = utcnow()
        workflow = Workflow(
            id=new_id("wf_"),
            name=req.name,
            description=req.description,
            type=req.type,
            configuration=req.configuration,
            integrations=[
                WorkflowIntegration(id=i.id, required=i.required) for i in req.integrations
            ],
            metadata=req.metadata,
            status=WorkflowStatus.INACTIVE,
            created_at=now,
            updated_at=now,
            created_by=actor.user_id if actor else None,
            retention_days=req.retention_days,
            max_concurrency=req.max_concurrency,
            concurrency=req.concurrency,
            rate_limit=req.rate_limit,
            debounce=req.debounce,
        )
        await self._with_status(workflow)
        await self._commit(
            self._store.insert_workflow, workflow, events=self._events("created", workflow)
        )
        return workflow

    async def get(self, workflow_id: str) -> Workflow:
        """The workflow with its stats and integration statuses."""
        return await self._with_status(await self._load(workflow_id))

    async def concurrency(self, workflow_id: str) -> WorkflowConcurrency:
        """The workflow's concurrency limits and the executions holding its slots now
        (queued with a live grant, or running), oldest first."""
        workflow = await self._load(workflow_id)
        held = await self._store.concurrency_slots(workflow_id)
        return WorkflowConcurrency(
            workflow_id=workflow.id,
            max_concurrency=workflow.max_concurrency,
            concurrency=workflow.concurrency,
            rate_limit=workflow.rate_limit,
            slots=[
                ConcurrencySlot(
                    execution_id=ex_id,
                    key=key,
                    status=ExecutionStatus(status),
                    since=since,
                )
                for ex_id, key, since, status in held
            ],
        )

    async def list(
        self,
        *,
        page: Any = 1,
        page_size: Any = 10,
        sort_by: str = "created_at",
        sort_order: str = "desc",
        status: str | None = None,
        type: str | None = None,
        department: str | None = None,
    ) -> Page[Workflow]:
        """One page of workflows, filtered and sorted as the seed's query parameters say."""
        page, page_size = check_page(page, page_size)
        if sort_by not in SORT_KEYS:
            raise InvalidRequest(
                f"'sort_by' must be one of {', '.join(SORT_KEYS)}", {"field": "sort_by"}
            )
        if sort_order not in ("asc", "desc"):
            raise InvalidRequest("'sort_order' must be asc or desc", {"field": "sort_order"})
        status_value = None
        if status is not None:
            try:
                status_value = WorkflowStatus(status)
            except ValueError:
                raise InvalidRequest(
                    "'status' must be active or inactive", {"field": "status"}
                ) from None
        query = WorkflowQuery(
            page=page,
            page_size=page_size,
            sort_by=sort_by,  # type: ignore[arg-type]
            sort_order=sort_order,  # type: ignore[arg-type]
            status=status_value,
            type=type,
            department=department,
        )
        items, total = await self._store.list_workflows(query)
        return Page.build(items, page, page_size, total)

    async def update(
        self, workflow_id: str, data: Mapping[str, Any], *, actor: Principal | None = None
    ) -> Workflow:
        """Apply a PUT body: given fields replace the current ones; ``type`` cannot change."""
        if not isinstance(data, Mapping):
            raise InvalidRequest("The request body must be a JSON object", {"field": "(body)"})
        current = await self._load(workflow_id)
        unknown = sorted(set(data) - set(UPDATABLE))
        if unknown:
            raise InvalidRequest(
                f"Unknown or read-only field(s): {', '.join(unknown)}",
                {
                    "field": unknown[0],
                    "errors": [
                        {"field": f, "message": "unknown or read-only field"} for f in unknown
                    ],
                },
            )
        if "type" in data and data["type"] != current.type:
            raise InvalidRequest(
                "A workflow's type cannot change", {"field": "type", "current": current.type}
            )
        merged = _as_request(current)
        merged.update(data)
        req = structure(merged, WorkflowRequest)
        self._validate(req)
        updated = attrs.evolve(
            current,
            name=req.name,
            description=req.description,
            configuration=req.configuration,
            integrations=[
                WorkflowIntegration(id=i.id, required=i.required) for i in req.integrations
            ],
            metadata=req.metadata,
            retention_days=req.retention_days,
            max_concurrency=req.max_concurrency,
            concurrency=req.concurrency,
            rate_limit=req.rate_limit,
            debounce=req.debounce,
            updated_at=utcnow(),
        )
        await self._with_status(updated)
        if not await self._commit(
            self._store.update_workflow, updated, events=self._events("updated", updated)
        ):
            raise WorkflowNotFound(workflow_id)
        return updated

    async def _set_status(self, workflow_id: str, status: WorkflowStatus) -> ActivationResult:
        current = await self._load(workflow_id)
        if current.status is status:
            raise InvalidState(
                f"Workflow {workflow_id!r} is already {status.value}",
                {"workflow_id": workflow_id, "status": current.status.value},
            )
        now = utcnow()
        active = status is WorkflowStatus.ACTIVE
        updated = attrs.evolve(
            current,
            status=status,
            updated_at=now,
            activated_at=now if active else current.activated_at,
            deactivated_at=now if not active else current.deactivated_at,
        )
        await self._with_status(updated)
        kind = "activated" if active else "deactivated"
        if not await self._commit(
            self._store.update_workflow, updated, events=self._events(kind, updated)
        ):
            raise WorkflowNotFound(workflow_id)
        return ActivationResult(
            id=workflow_id,
            status=status,
            activated_at=updated.activated_at,
            deactivated_at=updated.deactivated_at,
            updated_at=now,
        )

    async def activate(self, workflow_id: str) -> ActivationResult:
        """Make an inactive workflow executable; ``InvalidState`` when already active."""
        return await self._set_status(workflow_id, WorkflowStatus.ACTIVE)

    async def deactivate(self, workflow_id: str) -> ActivationResult:
        """Stop an active workflow from being executed or scheduled."""
        return await self._set_status(workflow_id, WorkflowStatus.INACTIVE)

    async def delete(self, workflow_id: str) -> DeleteResult:
        """Delete a workflow. Its past executions stay readable; it cannot be used again."""
        current = await self._load(workflow_id)
        events = self._events("deleted", current)
        if not await self._commit(
            self._store.delete_workflow, workflow_id, utcnow(), events=events
        ):
            raise WorkflowNotFound(workflow_id)
        return DeleteResult(id=workflow_id, deleted=True)


def _as_request(current: Workflow) -> dict[str, Any]:
    """The body of a ``PUT`` that would leave ``current`` as it is."""
    return {
        "name": current.name,
        "description": current.description,
        "type": current.type,
        "configuration": current.configuration,
        "integrations": [{"id": i.id, "required": i.required} for i in current.integrations],
        "metadata": current.metadata,
        "retention_days": current.retention_days,
        "max_concurrency": current.max_concurrency,
        "concurrency": None
        if current.concurrency is None
        else {"key": current.concurrency.key, "limit": current.concurrency.limit},
        "rate_limit": None if current.rate_limit is None else unstructure(current.rate_limit),
        "debounce": None if current.debounce is None else unstructure(current.debounce),
    }
