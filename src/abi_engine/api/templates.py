"""REST operations of notification templates and workflow types (registered into
:data:`abi_engine.api.OPERATIONS`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi_engine.api.operations import PAGE_QUERY, ApiRequest, body_object, operation, page_json
from abi_engine.auth import Principal
from abi_engine.converter import unstructure
from abi_engine.models import (
    DeleteResult,
    NotificationTemplate,
    Page,
    Scope,
    WorkflowTypeInfo,
)
from abi_engine.notification_templates import TEMPLATE_ID, TemplateRequest
from abi_engine.services import check_page

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__ = ["workflow_type_infos"]

# -- notification templates ------------------------------------------------------------------

_TEMPLATE_PATH = {"template_id": {"type": "string", **TEMPLATE_ID.json_schema()}}


@operation(
    method="PUT",
    path="/notification_templates/{template_id}",
    path_schemas=_TEMPLATE_PATH,
    scope=Scope.WORKFLOWS_WRITE,
    summary="Create or replace a notification template",
    request_model=TemplateRequest,
    response_model=NotificationTemplate,
    tag="notification_templates",
    errors=("INVALID_REQUEST", "INVALID_STATE"),
)
async def put_notification_template(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """Workflows that name this id (``"templates": {"email": "<id>"}``) show it
    ``available`` and can be executed; a placeholder the type cannot read is
    refused (400 naming ``body`` or ``subject``); an id a plugin registered is
    409 ``INVALID_STATE``."""
    template = await engine.notification_templates.put(
        request.path["template_id"], body_object(request)
    )
    return unstructure(template)


@operation(
    method="GET",
    path="/notification_templates",
    scope=Scope.WORKFLOWS_READ,
    summary="List notification templates, by id",
    response_model=NotificationTemplate,
    paginated=True,
    query=PAGE_QUERY,
    tag="notification_templates",
    errors=("INVALID_REQUEST",),
)
async def list_notification_templates(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    q = request.query
    return page_json(
        await engine.notification_templates.list(q.get("page", 1), q.get("page_size", 10)), engine
    )


@operation(
    method="GET",
    path="/notification_templates/{template_id}",
    path_schemas=_TEMPLATE_PATH,
    scope=Scope.WORKFLOWS_READ,
    summary="Get a notification template",
    response_model=NotificationTemplate,
    tag="notification_templates",
    errors=("NOT_FOUND",),
)
async def get_notification_template(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.notification_templates.get(request.path["template_id"]))


@operation(
    method="DELETE",
    path="/notification_templates/{template_id}",
    path_schemas=_TEMPLATE_PATH,
    scope=Scope.WORKFLOWS_WRITE,
    summary="Delete a notification template (workflows naming it show it pending again)",
    response_model=DeleteResult,
    tag="notification_templates",
    errors=("NOT_FOUND",),
)
async def delete_notification_template(
    engine: Engine, actor: Principal, request: ApiRequest
) -> Any:
    template_id = request.path["template_id"]
    await engine.notification_templates.delete(template_id)
    return {"id": template_id, "deleted": True}


# -- workflow types ------------------------------------------------------------------------


def workflow_type_infos(engine: Engine) -> list[WorkflowTypeInfo]:
    """Every installed workflow type with its JSON Schemas and documentation, by name."""
    infos = []
    for name in sorted(engine.workflow_types):
        wtype = engine.workflow_types[name]
        infos.append(
            WorkflowTypeInfo(
                name=name,
                description=wtype.description,
                configuration_schema=wtype.configuration_schema(),
                parameters_schema=wtype.parameters_schema(),
                docs_url=wtype.docs_url,
                plugin=engine.registry.origins.get(("workflow type", name)),
            )
        )
    return infos


@operation(
    method="GET",
    path="/workflow_types",
    scope=Scope.WORKFLOWS_READ,
    summary="List the installed workflow types with their configuration and parameters schemas",
    response_model=WorkflowTypeInfo,
    paginated=True,
    query=PAGE_QUERY,
    tag="workflows",
    errors=("INVALID_REQUEST",),
)
async def list_workflow_types(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """Each type's ``configuration_schema`` describes a workflow's ``configuration``
    and ``parameters_schema`` an execution's ``parameters`` (JSON Schema, draft
    2020-12); ``docs_url`` is where the type is documented."""
    q = request.query
    page, page_size = check_page(q.get("page", 1), q.get("page_size", 10))
    infos = workflow_type_infos(engine)
    start = (page - 1) * page_size
    return page_json(
        Page.build(infos[start : start + page_size], page, page_size, len(infos)), engine
    )
