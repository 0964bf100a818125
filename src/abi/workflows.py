"""The seed's Python API: workflows, executions and schedules, synchronously.

Each class takes ``access_token=`` and finds the engine in this order:

1. ``engine=``: an in-process :class:`abi_engine.Engine` (the caller owns it),
   or ``base_url=``: a remote REST API, the root under which ``/api/v1`` lives;
2. the environment: ``ABI_ENGINE_URL`` (remote), else ``ABI_ENGINE_DB`` (embedded);
3. an embedded engine on ``./abi-engine.db``.

In-process and remote calls give the same objects (the models of
:mod:`abi_engine.models`) and raise the same exceptions
(:mod:`abi_engine.errors`): both run the operations of the REST API by name
and turn the same JSON into objects. Embedded engines are shared by every
object of the process that uses the same database, start in a background
thread on first use, and are closed when the interpreter exits. Lists return
a :class:`~abi_engine.models.Page` with ``.items`` and ``.pagination``.

Example::

    from abi.workflows import WorkflowManager, WorkflowConfig

    manager = WorkflowManager(access_token=token)
    workflow = manager.create_workflow(
        WorkflowConfig(name="Nightly report", type="custom", configuration={...})
    )
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from abi._client import (
    Record,
    _check_id,
    _Client,
    _drop_none,
    _integration_spec,
    _structure,
)
from abi._executor import WorkflowExecutor
from abi._scheduler import WorkflowScheduler
from abi._transport import EngineConnectionError
from abi._webhooks import WebhookManager
from abi_engine.converter import unstructure
from abi_engine.errors import (
    AbiError,
    TemplateNotFound,
    WorkflowNotFound,
)
from abi_engine.models import (
    ActivationResult,
    DeleteResult,
    NotificationTemplate,
    Page,
    Workflow,
    WorkflowConcurrency,
    WorkflowSummary,
    WorkflowTypeInfo,
)

__all__ = [
    "EngineConnectionError",
    "Record",
    "WebhookManager",
    "WorkflowConfig",
    "WorkflowExecutor",
    "WorkflowManager",
    "WorkflowScheduler",
]


@attrs.define(kw_only=True)
class WorkflowConfig:
    """What :meth:`WorkflowManager.create_workflow` needs to create a workflow.

    Fields: ``name``, ``description``, ``type`` (a registered workflow type),
    ``configuration`` (checked by the type), ``integrations`` (``{"id":
    "int_...", "required": bool}`` mappings), ``metadata`` (free-form;
    ``metadata["department"]`` can be filtered on), ``max_concurrency`` (how
    many of its executions may run at once) and ``concurrency`` (a limit per
    key: ``{"key": "parameters.customer_id", "limit": 1}``), ``rate_limit``
    (``{"key": ..., "limit": N, "period_seconds": S}``: at most N starts per S
    seconds) and ``debounce`` (``{"key": ..., "seconds": S}``: of a burst, only
    the last runs); see docs/flow-control.md.
    """

    name: str
    description: str | None = None
    type: str
    configuration: dict[str, Any] = attrs.Factory(dict)
    integrations: list[Any] = attrs.Factory(list)
    metadata: dict[str, Any] = attrs.Factory(dict)
    max_concurrency: int | None = None
    concurrency: Mapping[str, Any] | None = None
    rate_limit: Mapping[str, Any] | None = None
    debounce: Mapping[str, Any] | None = None


class WorkflowManager(_Client):
    """Create, read, list, update, activate, deactivate and delete workflows.

    :param access_token: the bearer token to act with (scopes
        ``workflows:read`` / ``workflows:write``).
    :param engine: an in-process :class:`abi_engine.Engine` to use.
    :param base_url: the root URL of a remote REST API (``/api/v1`` lives under it).
    :param timeout: seconds a remote call may take.
    """

    def create_workflow(self, config: WorkflowConfig | Mapping[str, Any]) -> Workflow:
        """Create an ``inactive`` workflow and return it.

        :param config: a :class:`WorkflowConfig` or the REST request body as a mapping.
        :raises InvalidWorkflowConfig: unknown type or configuration the type refuses.
        :raises InvalidRequest: missing or malformed fields.
        """
        if isinstance(config, WorkflowConfig):
            body: Any = {
                "name": config.name,
                "description": config.description,
                "type": config.type,
                "configuration": config.configuration,
                "integrations": [_integration_spec(i) for i in config.integrations],
                "metadata": config.metadata,
                "max_concurrency": config.max_concurrency,
                "concurrency": None if config.concurrency is None else dict(config.concurrency),
                "rate_limit": None if config.rate_limit is None else dict(config.rate_limit),
                "debounce": None if config.debounce is None else dict(config.debounce),
            }
        else:
            body = config
        return _structure(self._transport.request("create_workflow", body=body), Workflow)

    def get_workflow(self, workflow_id: str) -> Workflow:
        """The workflow with this id.

        :raises WorkflowNotFound: no such workflow (or it was deleted).
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        return _structure(self._transport.request("get_workflow", path=path), Workflow)

    def list_workflows(
        self,
        status: str | None = None,
        type: str | None = None,
        department: str | None = None,
        page: int = 1,
        page_size: int = 10,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> Page[WorkflowSummary]:
        """One page of workflows, newest first unless ``sort_by``/``sort_order`` say otherwise.

        :param status: ``"active"`` or ``"inactive"``.
        :param type: a workflow type name.
        :param department: matches ``metadata["department"]``.
        :param page: the page number, from 1.
        :param page_size: items per page, 1 to 100.
        :param sort_by: ``created_at``, ``updated_at`` or ``name``.
        :param sort_order: ``asc`` or ``desc``.
        :raises InvalidRequest: a filter, page or sort value out of range.
        """
        query = {
            "status": status,
            "type": type,
            "department": department,
            "page": page,
            "page_size": page_size,
            "sort_by": sort_by,
            "sort_order": sort_order,
        }
        data = self._transport.request("list_workflows", query=query)
        return _structure(data, Page[WorkflowSummary])

    def update_workflow(self, workflow: Workflow) -> Workflow:
        """Save a changed workflow: its name, description, configuration, integrations,
        metadata, ``max_concurrency``, ``concurrency``, ``rate_limit`` and ``debounce``.

        Change the fields of a workflow got from this API, then pass it here.
        Its ``type`` cannot change.

        :raises WorkflowNotFound: the workflow no longer exists.
        :raises InvalidWorkflowConfig: the type refuses the new configuration.
        """
        path = {"workflow_id": _check_id(workflow.id, WorkflowNotFound)}
        body = {
            "name": workflow.name,
            "description": workflow.description,
            "type": workflow.type,
            "configuration": workflow.configuration,
            "integrations": [_integration_spec(i) for i in workflow.integrations],
            "metadata": workflow.metadata,
            "max_concurrency": workflow.max_concurrency,
            "concurrency": unstructure(workflow.concurrency),
            "rate_limit": unstructure(workflow.rate_limit),
            "debounce": unstructure(workflow.debounce),
        }
        data = self._transport.request("update_workflow", path=path, body=body)
        return _structure(data, Workflow)

    def get_workflow_concurrency(self, workflow_id: str) -> WorkflowConcurrency:
        """The workflow's concurrency limits and the executions holding its slots now
        (``slots``: ``execution_id``, ``key``, ``status``, ``since``).

        :raises WorkflowNotFound: no such workflow.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        data = self._transport.request("get_workflow_concurrency", path=path)
        return _structure(data, WorkflowConcurrency)

    def activate_workflow(self, workflow_id: str) -> ActivationResult:
        """Make the workflow executable.

        :raises WorkflowNotFound: no such workflow.
        :raises InvalidState: the workflow is already active.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        data = self._transport.request("activate_workflow", path=path)
        return _structure(data, ActivationResult)

    def deactivate_workflow(self, workflow_id: str) -> ActivationResult:
        """Stop the workflow from being executed or scheduled.

        :raises WorkflowNotFound: no such workflow.
        :raises InvalidState: the workflow is already inactive.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        data = self._transport.request("deactivate_workflow", path=path)
        return _structure(data, ActivationResult)

    def delete_workflow(self, workflow_id: str) -> DeleteResult:
        """Delete the workflow; its past executions stay readable.

        :raises WorkflowNotFound: no such workflow.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        data = self._transport.request("delete_workflow", path=path)
        return _structure(data, DeleteResult)

    def list_workflow_types(self, page: int = 1, page_size: int = 100) -> Page[WorkflowTypeInfo]:
        """The installed workflow types, by name, with their configuration and parameters
        JSON Schemas and their documentation link."""
        query = {"page": page, "page_size": page_size}
        data = self._transport.request("list_workflow_types", query=query)
        return _structure(data, Page[WorkflowTypeInfo])

    # -- notification templates ------------------------------------------------------------

    def put_notification_template(
        self,
        template_id: str,
        body: str,
        subject: str | None = None,
        description: str | None = None,
    ) -> NotificationTemplate:
        """Create or replace the notification template ``template_id``.

        Workflows whose configuration names it (``"templates": {"email":
        "template_123"}``) show it ``available`` and can be executed.

        :raises InvalidRequest: a bad id, or a body/subject the notification type
            cannot read (``details["field"]``).
        :raises InvalidState: a plugin registered a template of that id.
        """
        path = {"template_id": _check_id(template_id, _template_not_found)}
        body_json = _drop_none({"body": body, "subject": subject, "description": description})
        data = self._transport.request("put_notification_template", path=path, body=body_json)
        return _structure(data, NotificationTemplate)

    def get_notification_template(self, template_id: str) -> NotificationTemplate:
        """The template with this id.

        :raises TemplateNotFound: no such template (``NOT_FOUND``).
        """
        path = {"template_id": _check_id(template_id, _template_not_found)}
        data = self._transport.request("get_notification_template", path=path)
        return _structure(data, NotificationTemplate)

    def list_notification_templates(
        self, page: int = 1, page_size: int = 10
    ) -> Page[NotificationTemplate]:
        """One page of notification templates, by id."""
        query = {"page": page, "page_size": page_size}
        data = self._transport.request("list_notification_templates", query=query)
        return _structure(data, Page[NotificationTemplate])

    def delete_notification_template(self, template_id: str) -> DeleteResult:
        """Delete the template; workflows naming it show it ``pending`` again.

        :raises TemplateNotFound: no such template (``NOT_FOUND``).
        """
        path = {"template_id": _check_id(template_id, _template_not_found)}
        data = self._transport.request("delete_notification_template", path=path)
        return _structure(data, DeleteResult)


def _template_not_found(template_id: str) -> AbiError:
    return TemplateNotFound(template_id)
