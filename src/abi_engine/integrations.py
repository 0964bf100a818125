"""Integration connections and their providers.

A workflow names the integrations it uses by id (``int_zendesk``); the engine
*connects* an id when the host (``engine.integrations.put``) or an admin over
REST stores a connection for it: a provider name and the provider's config.
Providers come from the ``abi_integration_providers`` hook; the built-in
``http`` provider (``base_url``, ``headers``, ``auth``) is always there.
Secret fields are stored but never returned.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import attrs
import httpx

from abi_engine.converter import structure
from abi_engine.errors import IntegrationNotFound, InvalidRequest
from abi_engine.host import provider_client
from abi_engine.ids import utcnow
from abi_engine.models import Integration, Page
from abi_engine.netguard import check_host, check_url, guarded_client
from abi_engine.services import Service, check_page
from abi_engine.storage.base import Store
from abi_engine.types import prefixed_fields

__all__ = ["MASK", "HttpProvider", "IntegrationProvider", "IntegrationService", "provider_client"]

MASK = "********"
_ID = re.compile(r"^int_[A-Za-z0-9_.\-]{1,120}\Z")  # \Z: no final newline
_SENSITIVE_HEADER = re.compile(r"authorization|cookie|token|secret|key|password", re.I)


def check_integration_id(integration_id: str, field: str = "id") -> None:
    """Raise ``InvalidRequest`` unless the id looks like ``int_<name>``."""
    if not isinstance(integration_id, str) or not _ID.match(integration_id):
        raise InvalidRequest(
            f"Integration ids look like 'int_<name>' (letters, digits, _ . -), got {integration_id!r}",
            {"field": field},
        )


class IntegrationProvider:
    """Base of integration providers.

    Subclasses set ``name``, ``Config`` (an attrs class checked with the
    engine's converter) and override :meth:`mask` when their config holds
    secrets, and :meth:`client` to give steps a ready client.

    A provider that connects somewhere names the config fields that say
    where: ``url_fields`` (URLs it sends requests to) and ``host_fields``
    (host names or addresses it opens connections to), as dotted paths into
    the config (``"base_url"``, ``"server.host"``). The engine checks them
    against its outbound URL rules (:mod:`abi_engine.netguard`) whenever a
    connection is put, so ``10.0.0.1`` or ``169.254.169.254`` is refused
    there (400 ``INVALID_REQUEST`` naming ``config.<field>``) unless the
    engine allows private URLs; a provider whose addresses live elsewhere
    overrides :meth:`check_outbound`. The rules must be applied again when
    connecting (a name's addresses change): :func:`~abi_engine.netguard.guarded_client`
    for httpx, :func:`~abi_engine.netguard.resolve_checked` otherwise.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type[Any] | None] = None
    #: Config fields holding a URL requests go to (dotted paths), checked at put.
    url_fields: ClassVar[tuple[str, ...]] = ()
    #: Config fields holding a host name or address connected to, checked at put.
    host_fields: ClassVar[tuple[str, ...]] = ()

    def validate(self, config: Mapping[str, Any]) -> Any:
        """Check ``config``; raise ``InvalidRequest`` naming ``config.<field>``."""
        if self.Config is None:
            return dict(config)
        with prefixed_fields("config"):
            return structure(dict(config), self.Config)

    def check_outbound(self, config: Mapping[str, Any], *, allow_private_urls: bool) -> None:
        """Apply the outbound URL rules to where ``config`` connects (after :meth:`validate`).

        The default checks ``url_fields`` with :func:`~abi_engine.netguard.check_url` and
        ``host_fields`` with :func:`~abi_engine.netguard.check_host`; a field that is
        missing or ``None`` is skipped.

        :raises InvalidRequest: naming ``config.<field>``.
        """
        for path in self.url_fields:
            value = _field(config, path)
            if value is not None:
                check_url(value, field=f"config.{path}", allow_private=allow_private_urls)
        for path in self.host_fields:
            value = _field(config, path)
            if value is not None:
                check_host(value, field=f"config.{path}", allow_private=allow_private_urls)

    def mask(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config as it may be shown: secrets replaced by :data:`MASK`."""
        return dict(config)

    def client(self, config: Mapping[str, Any], *, allow_private_urls: bool = False) -> Any:
        """An object steps use to talk to the system (provider-specific).

        A provider that opens network connections applies the engine's
        outbound URL rules (:func:`abi_engine.netguard.guarded_client` for
        httpx): ``allow_private_urls`` is the engine's setting.
        """
        return dict(config)


@attrs.define(kw_only=True)
class HttpAuth:
    type: Literal["bearer", "basic", "header"]
    token: str | None = None
    username: str | None = None
    password: str | None = None
    header: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.type == "bearer" and not self.token:
            raise ValueError("bearer auth needs 'token'")
        if self.type == "basic" and (self.username is None or self.password is None):
            raise ValueError("basic auth needs 'username' and 'password'")
        if self.type == "header" and not (self.header and self.token):
            raise ValueError("header auth needs 'header' and 'token'")


@attrs.define(kw_only=True)
class HttpConfig:
    base_url: str
    headers: dict[str, str] = attrs.Factory(dict)
    auth: HttpAuth | None = None
    timeout_seconds: float = 10.0


def _field(config: Mapping[str, Any], path: str) -> Any:
    """The value at the dotted ``path`` of ``config`` (``None`` when a part is missing)."""
    value: Any = config
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


class HttpProvider(IntegrationProvider):
    """A generic HTTP API: ``base_url``, default ``headers``, optional ``auth``.

    ``auth`` is ``{"type": "bearer", "token"}``, ``{"type": "basic",
    "username", "password"}`` or ``{"type": "header", "header", "token"}``.
    ``auth.token``, ``auth.password`` and sensitive-looking header values are
    secrets.
    """

    name = "http"
    description = "Generic HTTP API (base_url, headers, auth)"
    Config = HttpConfig
    url_fields = ("base_url",)

    def validate(self, config: Mapping[str, Any]) -> Any:
        parsed: HttpConfig = super().validate(config)
        # The URL's form here; where it points (private or not), in check_outbound.
        check_url(parsed.base_url, field="config.base_url", allow_private=True)
        return parsed

    def mask(self, config: Mapping[str, Any]) -> dict[str, Any]:
        shown = dict(config)
        if isinstance(shown.get("headers"), dict):
            shown["headers"] = {
                k: (MASK if _SENSITIVE_HEADER.search(k) else v) for k, v in shown["headers"].items()
            }
        if isinstance(shown.get("auth"), dict):
            shown["auth"] = {
                k: (MASK if k in ("token", "password") and v is not None else v)
                for k, v in shown["auth"].items()
            }
        return shown

    def client(
        self, config: Mapping[str, Any], *, allow_private_urls: bool = False
    ) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` on the base URL, with the headers and auth set.

        Every request goes through the outbound URL rules, the connection
        pinned to the address checked (:class:`~abi_engine.netguard.GuardedTransport`).
        """
        parsed: HttpConfig = structure(dict(config), HttpConfig)
        headers = dict(parsed.headers)
        auth: httpx.Auth | None = None
        if parsed.auth is not None:
            if parsed.auth.type == "bearer":
                headers["Authorization"] = f"Bearer {parsed.auth.token}"
            elif parsed.auth.type == "header":
                headers[parsed.auth.header or ""] = parsed.auth.token or ""
            else:
                auth = httpx.BasicAuth(parsed.auth.username or "", parsed.auth.password or "")
        return guarded_client(
            allow_private=allow_private_urls,
            base_url=parsed.base_url,
            headers=headers,
            auth=auth,
            timeout=parsed.timeout_seconds,
        )


class IntegrationService(Service):
    """Connections by id: put, get, list, delete (``engine.integrations``)."""

    def __init__(
        self,
        store: Store,
        providers: Mapping[str, IntegrationProvider],
        allow_private_urls: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(store)
        self.providers = providers
        self._allow_private_urls = allow_private_urls

    def _provider(self, name: str) -> IntegrationProvider:
        provider = self.providers.get(name)
        if provider is None:
            raise InvalidRequest(
                f"Unknown integration provider {name!r}",
                {"field": "provider", "allowed": sorted(self.providers)},
            )
        return provider

    def _shown(self, integration: Integration) -> Integration:
        provider = self.providers.get(integration.provider)
        config = provider.mask(integration.config) if provider else {}
        return attrs.evolve(integration, config=config)

    async def put(
        self, integration_id: str, provider: str, config: Mapping[str, Any]
    ) -> Integration:
        """Create or replace the connection ``integration_id`` (secrets masked in the answer).

        The provider checks ``config`` (:meth:`IntegrationProvider.validate`) and where it
        connects (:meth:`IntegrationProvider.check_outbound`, with the engine's
        ``allow_private_urls``).
        """
        check_integration_id(integration_id)
        if not isinstance(provider, str):
            raise InvalidRequest("'provider' must be a string", {"field": "provider"})
        if not isinstance(config, Mapping):
            raise InvalidRequest("'config' must be an object", {"field": "config"})
        chosen = self._provider(provider)
        chosen.validate(config)
        chosen.check_outbound(config, allow_private_urls=self._allow_private_urls())
        now = utcnow()
        existing = await self._store.get_integration(integration_id)
        record = Integration(
            id=integration_id,
            provider=provider,
            config=dict(config),
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
        await self._store.put_integration(record)
        return self._shown(record)

    async def get(self, integration_id: str) -> Integration:
        """The connection, secrets masked; ``IntegrationNotFound`` when missing."""
        found = await self._store.get_integration(integration_id)
        if found is None:
            raise IntegrationNotFound(integration_id)
        return self._shown(found)

    async def get_secret(self, integration_id: str) -> Integration | None:
        """The connection with its secrets, for steps; ``None`` when missing."""
        return await self._store.get_integration(integration_id)

    async def list(self, page: int = 1, page_size: int = 10) -> Page[Integration]:
        """One page of connections, ordered by id, secrets masked."""
        page, page_size = check_page(page, page_size)
        items, total = await self._store.list_integrations(page, page_size)
        return Page.build([self._shown(i) for i in items], page, page_size, total)

    async def delete(self, integration_id: str) -> None:
        """Remove a connection; workflows using it show ``pending`` again."""
        if not await self._store.delete_integration(integration_id):
            raise IntegrationNotFound(integration_id)

    async def connected(self, ids: builtins.list[str]) -> set[str]:
        """Which of ``ids`` are connected."""
        return await self._store.existing_integration_ids(ids)
