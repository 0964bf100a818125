"""The plugin host: what a workflow type or a step may use of the engine that loaded it.

An :class:`Host` is handed to each workflow type when the engine registers it
(:meth:`~abi_engine.WorkflowType.bind`) and to each step as ``ctx.host``. It
is deliberately narrow and typed: the engine's outbound URL policy and a
guarded HTTP client, clients of integration connections, what plugins
registered through a hook, and a few read-only queries. Nothing in it
writes; a plugin needing more asks for it here rather than reaching into
the :class:`~abi_engine.Engine`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

import httpx

from abi_engine.models import (
    Execution,
    ExecutionSummary,
    Integration,
    NotificationTemplate,
    Page,
)
from abi_engine.netguard import check_url, guarded_client

__all__ = ["ChildStarter", "ExecutionReader", "Host", "TemplateReader", "provider_client"]


class ExecutionReader(Protocol):
    """The executions a host reads (``engine.executions`` is one)."""

    def get(self, execution_id: str) -> Awaitable[Execution]: ...

    def list(
        self,
        *,
        workflow_id: str | None = None,
        status: str | Sequence[str] | None = None,
        start_date: Any = None,
        end_date: Any = None,
        page: Any = 1,
        page_size: Any = 10,
    ) -> Awaitable[Page[ExecutionSummary]]: ...


class ChildStarter(Protocol):
    """What starts a step's child executions (``engine.executions`` is one)."""

    def start_child(
        self, parent_execution_id: str, workflow_id: str, parameters: Mapping[str, Any], key: str
    ) -> Awaitable[str]: ...


class TemplateReader(Protocol):
    """The managed notification templates a host reads (``engine.notification_templates``)."""

    def find(self, ids: Iterable[str]) -> Awaitable[dict[str, NotificationTemplate]]: ...

    def cached(self, template_id: str) -> NotificationTemplate | None: ...


#: ``collect(hook_name, kind)``: what the implementations of a registration hook register.
Collector = Callable[[str, str], Mapping[str, Any]]


def provider_client(provider: Any, config: Mapping[str, Any], allow_private_urls: bool) -> Any:
    """``provider.client(config)``, told the engine's outbound URL setting when it takes it.

    Providers written before ``allow_private_urls`` existed get ``config`` alone.
    """
    try:
        takes_flag = "allow_private_urls" in inspect.signature(provider.client).parameters
    except (TypeError, ValueError):
        takes_flag = False
    if takes_flag:
        return provider.client(config, allow_private_urls=allow_private_urls)
    return provider.client(config)


class Host:
    """What the engine offers its plugins; one per :class:`~abi_engine.Engine`.

    Policy and clients: :attr:`allow_private_urls`, :meth:`check_url`,
    :meth:`http_client` (the one guarded ``httpx.AsyncClient`` recipe) and
    :meth:`client` (an integration connection's client). Registrations:
    :meth:`collect` (a hook a plugin declared itself) and
    :attr:`registered_templates`. Read-only queries: :meth:`get_execution`,
    :meth:`list_executions`, :meth:`find_templates`, :meth:`cached_template`.

    The engine builds it; plugins receive it and never build one.
    """

    def __init__(
        self,
        *,
        allow_private_urls: Callable[[], bool],
        providers: Mapping[str, Any],
        collect: Collector,
        registered_templates: Mapping[str, Any],
        executions: ExecutionReader,
        templates: TemplateReader,
        legacy_engine: Any = None,
        trace_headers: Callable[[], dict[str, str]] = dict,
        children: ChildStarter | None = None,
    ) -> None:
        self._children = children
        self._allow_private_urls = allow_private_urls
        self._trace_headers = trace_headers
        self._providers = providers
        self._collect = collect
        self._registered_templates = MappingProxyType(registered_templates)
        self._executions = executions
        self._templates = templates
        # Only for WorkflowType.attach(engine), deprecated: removed in the next release.
        self._legacy_engine = legacy_engine

    # -- outbound policy ----------------------------------------------------------------

    @property
    def allow_private_urls(self) -> bool:
        """Whether outbound requests may reach loopback and private addresses (the engine's setting)."""
        return bool(self._allow_private_urls())

    def check_url(self, url: object, *, field: str) -> str:
        """Validate an outbound URL against the engine's rules; return it unchanged.

        :func:`abi_engine.netguard.check_url` with the engine's
        :attr:`allow_private_urls`.

        :raises ~abi_engine.errors.InvalidRequest: naming ``field``.
        """
        return check_url(url, field=field, allow_private=self.allow_private_urls)

    def trace_headers(self) -> dict[str, str]:
        """The W3C ``traceparent`` header of the step running now, to send on a step's
        outbound requests (``{}`` when the engine does not trace)."""
        return self._trace_headers()

    def http_client(self, **options: Any) -> httpx.AsyncClient:
        """A guarded ``httpx.AsyncClient`` (:func:`abi_engine.netguard.guarded_client`).

        Every request is checked against the outbound URL rules with the
        engine's setting and pinned to the address checked, answers are
        bounded, redirects are not followed and no proxy comes from the
        environment. ``options`` go to ``httpx.AsyncClient`` (``base_url``,
        ``headers``, ``auth``, ``timeout``, and ``max_response_bytes`` for the
        transport). Close it when done (``async with host.http_client() as c:``).
        """
        return guarded_client(allow_private=self.allow_private_urls, **options)

    def client(self, connection: Integration) -> Any:
        """The client a connection's provider builds (an ``httpx.AsyncClient`` for ``http``).

        ``connection`` is one of a step's ``ctx.integrations`` (secrets
        included); a step usually calls ``ctx.client(integration_id)``.

        :raises LookupError: when no plugin provides the connection's provider.
        """
        provider = self._providers.get(connection.provider)
        if provider is None:
            raise LookupError(f"no integration provider {connection.provider!r} is installed")
        return provider_client(provider, connection.config, self.allow_private_urls)

    # -- registrations --------------------------------------------------------------------

    def collect(self, hook: str, kind: str) -> Mapping[str, Any]:
        """What the implementations of the registration hook ``hook`` register, by name.

        For a hook a plugin declared itself (:func:`~abi_engine.hookspecs.abi_hookspecs`)
        whose implementations receive ``register(name, value)``. Call it once,
        from :meth:`~abi_engine.WorkflowType.bind`: each call runs the
        implementations. A name registered twice raises ``ValueError`` naming
        ``kind`` and both plugins, an empty name ``ValueError``; a hook nobody
        declared, ``LookupError``. The answer is read-only.
        """
        return MappingProxyType(dict(self._collect(hook, kind)))

    @property
    def registered_templates(self) -> Mapping[str, Any]:
        """The notification templates plugins registered (``abi_notification_templates``), by id."""
        return self._registered_templates

    # -- child executions -----------------------------------------------------------------

    async def start_child_execution(
        self, parent_execution_id: str, workflow_id: str, parameters: Mapping[str, Any], key: str
    ) -> str:
        """Start (once per ``key``: again, the same id) an execution of ``workflow_id`` whose
        end is signalled to ``parent_execution_id``; its id. The one write a step may
        ask of the host, through :meth:`~abi_engine.StepContext.run_workflow`.

        :raises RuntimeError: when this host starts no executions.
        """
        if self._children is None:
            raise RuntimeError("this host starts no child executions")
        return await self._children.start_child(parent_execution_id, workflow_id, parameters, key)

    # -- read-only queries ----------------------------------------------------------------

    async def get_execution(self, execution_id: str) -> Execution:
        """An execution with its steps.

        :raises ~abi_engine.errors.ExecutionNotFound: when there is none.
        """
        return await self._executions.get(execution_id)

    async def list_executions(
        self,
        *,
        workflow_id: str,
        status: str | Sequence[str] | None = None,
        start_date: Any = None,
        end_date: Any = None,
        page: int = 1,
        page_size: int = 10,
    ) -> Page[ExecutionSummary]:
        """One page of a workflow's executions, newest first (as ``engine.executions.list``).

        ``status`` is one status or several; ``start_date`` / ``end_date``
        bound when they were requested (inclusive).
        """
        return await self._executions.list(
            workflow_id=workflow_id,
            status=status,
            start_date=start_date,
            end_date=end_date,
            page=page,
            page_size=page_size,
        )

    async def find_templates(self, ids: Iterable[str]) -> dict[str, NotificationTemplate]:
        """The managed notification templates among ``ids`` that exist now, by id (one read)."""
        return await self._templates.find(ids)

    def cached_template(self, template_id: str) -> NotificationTemplate | None:
        """A managed template as this process last read or wrote it; ``None`` if unknown here.

        For synchronous checks (``check_parameters``): the engine reads a
        workflow's templates just before it checks an execution's parameters.
        """
        return self._templates.cached(template_id)

    @property
    def legacy_services(self) -> Mapping[str, Any]:
        """What ``ctx.services`` held (``{"engine": engine}``), deprecated: use ``ctx.host``."""
        return MappingProxyType({"engine": self._legacy_engine})

    def __repr__(self) -> str:
        return f"<Host allow_private_urls={self.allow_private_urls}>"
