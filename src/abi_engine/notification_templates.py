"""Notification templates managed by id (``engine.notification_templates``).

A ``notification`` workflow names its templates by id (``"email":
"template_123"``). A template of that id comes from the workflow's own
``template_library``, from a plugin (the ``abi_notification_templates``
hook), or from here: created or replaced over REST (``PUT
/api/v1/notification_templates/{id}``, scope ``workflows:write``) or by the
host. A workflow may name a template before it exists: the workflow shows it
``pending`` and cannot be executed (409 ``INVALID_STATE``) until it does, as
with integrations.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

import attrs

from abi_engine.converter import structure
from abi_engine.errors import InvalidRequest, InvalidState, TemplateNotFound
from abi_engine.ids import utcnow
from abi_engine.limits import Text
from abi_engine.models import NotificationTemplate, Page
from abi_engine.services import Service, check_page
from abi_engine.types import WorkflowType

if TYPE_CHECKING:
    from abi_engine.storage.base import Store

__all__ = [
    "MAX_DESCRIPTION_CHARS",
    "MAX_TEMPLATE_CHARS",
    "TEMPLATE_ID",
    "NotificationTemplateService",
    "TemplateRequest",
    "check_template_id",
    "is_template_id",
]

#: The longest subject or body accepted, in characters.
MAX_TEMPLATE_CHARS = 20_000
#: The longest description accepted, in characters.
MAX_DESCRIPTION_CHARS = 5_000
#: A template id, as the OpenAPI document declares it (path parameter ``template_id``).
TEMPLATE_ID = Text(
    min_length=1,
    max_length=100,
    pattern=r"^[A-Za-z0-9_.\-]{1,100}$",
    hint="1 to 100 letters, digits, '_', '.' or '-'",
)
_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,100}\Z")
#: Templates kept in memory as last read (for the types' synchronous checks).
_CACHE_SIZE = 4096


def is_template_id(value: Any) -> bool:
    """Whether ``value`` is a template id: 1 to 100 letters, digits, ``_``, ``.``, ``-``."""
    return isinstance(value, str) and bool(_ID.match(value))


def check_template_id(template_id: Any) -> str:
    """``template_id`` when it is a valid template id, else ``InvalidRequest``."""
    if not is_template_id(template_id):
        raise InvalidRequest(
            "Template ids are 1 to 100 letters, digits, '_', '.' or '-',"
            f" got {str(template_id)[:120]!r}",
            {"field": "id"},
        )
    return str(template_id)


@attrs.define(kw_only=True)
class TemplateRequest:
    """The body of ``PUT /api/v1/notification_templates/{id}``.

    ``body`` (required) and ``subject`` use ``$name`` / ``${name}``
    placeholders (``$$`` is a literal ``$``); ``description`` is for people.
    """

    body: Annotated[str, Text(min_length=1, max_length=MAX_TEMPLATE_CHARS)]
    subject: Annotated[str, Text(max_length=MAX_TEMPLATE_CHARS)] | None = None
    description: Annotated[str, Text(max_length=MAX_DESCRIPTION_CHARS)] | None = None


def _check_text(value: str | None, field: str, limit: int) -> None:
    if value is None:
        return
    if len(value) > limit:
        raise InvalidRequest(
            f"Invalid value for '{field}': at most {limit} characters", {"field": field}
        )
    if "\x00" in value:
        raise InvalidRequest(
            f"Invalid value for '{field}': NUL characters (U+0000) are not allowed",
            {"field": field},
        )


class NotificationTemplateService(Service):
    """Templates by id: put, get, list, delete, and lookups for the workflow types."""

    def __init__(
        self,
        store: Store,
        *,
        registered: Mapping[str, Any],
        origins: Mapping[tuple[str, str], str],
        workflow_types: Mapping[str, WorkflowType],
    ) -> None:
        """``registered``: the templates plugins register by name; ``origins``: which
        plugin registered each name; ``workflow_types``: the registered types."""
        super().__init__(store)
        self._registered = registered
        self._origins = origins
        self._types = workflow_types
        self._cache: dict[str, NotificationTemplate | None] = {}

    # -- the resource ---------------------------------------------------------------------

    async def put(
        self, template_id: str, data: Mapping[str, Any] | TemplateRequest
    ) -> NotificationTemplate:
        """Create or replace the template ``template_id`` (``workflows:write`` over REST).

        :raises InvalidRequest: a bad id, a missing or malformed field, or a
            template a workflow type refuses (its placeholders, say).
        :raises InvalidState: a plugin registered a template of that id (it
            cannot be replaced over the API).
        """
        check_template_id(template_id)
        req = data if isinstance(data, TemplateRequest) else structure(data, TemplateRequest)
        if not req.body:
            raise InvalidRequest("Invalid value for 'body': must not be empty", {"field": "body"})
        _check_text(req.body, "body", MAX_TEMPLATE_CHARS)
        _check_text(req.subject, "subject", MAX_TEMPLATE_CHARS)
        _check_text(req.description, "description", MAX_DESCRIPTION_CHARS)
        if template_id in self._registered:
            plugin = self._origins.get(("notification template", template_id), "a plugin")
            raise InvalidState(
                f"Template {template_id!r} is registered by {plugin}; choose another id",
                {"template_id": template_id, "plugin": plugin},
            )
        now = utcnow()
        existing = await self._store.get_template(template_id)
        template = NotificationTemplate(
            id=template_id,
            subject=req.subject,
            body=req.body,
            description=req.description,
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
        for workflow_type in self._types.values():
            if type(workflow_type).check_template is not WorkflowType.check_template:
                workflow_type.check_template(template)
        await self._store.put_template(template)
        self._remember(template_id, template)
        return template

    async def get(self, template_id: str) -> NotificationTemplate:
        """The template; ``TemplateNotFound`` (404 ``NOT_FOUND``) when there is none."""
        found = await self._store.get_template(str(template_id))
        if found is None:
            raise TemplateNotFound(str(template_id))
        self._remember(found.id, found)
        return found

    async def list(self, page: Any = 1, page_size: Any = 10) -> Page[NotificationTemplate]:
        """One page of templates, ordered by id."""
        page, page_size = check_page(page, page_size)
        items, total = await self._store.list_templates(page, page_size)
        return Page.build(items, page, page_size, total)

    async def delete(self, template_id: str) -> None:
        """Remove a template; workflows using it show it ``pending`` again."""
        if not await self._store.delete_template(str(template_id)):
            raise TemplateNotFound(str(template_id))
        self._remember(str(template_id), None)

    # -- lookups --------------------------------------------------------------------------

    async def find(self, ids: Iterable[str]) -> dict[str, NotificationTemplate]:
        """The templates among ``ids`` that exist now, by id (one read).

        What it reads is also what :meth:`cached` answers afterwards.
        """
        wanted = builtins.list(dict.fromkeys(ids))
        if not wanted:
            return {}
        found = await self._store.find_templates(wanted)
        for template_id in wanted:
            self._remember(template_id, found.get(template_id))
        return found

    async def missing(self, ids: Collection[str]) -> builtins.list[str]:
        """Which of ``ids`` name no template (in the order given)."""
        found = await self.find(ids)
        return [i for i in dict.fromkeys(ids) if i not in found]

    def cached(self, template_id: str) -> NotificationTemplate | None:
        """The template as this process last read or wrote it; ``None`` if unknown here.

        For the synchronous checks of a workflow type (``check_parameters``):
        the engine reads a workflow's templates (:meth:`find`) just before it
        checks an execution's parameters. Steps read them with :meth:`find`.
        """
        return self._cache.get(template_id)

    def _remember(self, template_id: str, template: NotificationTemplate | None) -> None:
        if template_id not in self._cache and len(self._cache) >= _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[template_id] = template
