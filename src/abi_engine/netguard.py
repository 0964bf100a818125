"""Outbound URL rules: webhooks, callbacks and HTTP steps must not reach the host's network.

A URL is refused when its scheme is not http or https, or when its host is,
or resolves to, a loopback, private, link-local, multicast, reserved or
cloud-metadata address, unless the engine allows private URLs
(``--allow-private-urls``). Registration checks what it can without waiting
on DNS; delivery checks again, on the addresses actually connected to.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import httpx

from abi_engine.errors import InvalidRequest

__all__ = ["GuardedTransport", "URLRefused", "check_url", "is_forbidden_address", "resolve_checked"]

_METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}
MAX_URL = 2048


def is_forbidden_address(address: str) -> bool:
    """Whether an IP address is one outbound requests must not reach."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"))
    )


def _fail(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{field}': {message}", {"field": field})


def check_url(url: object, *, field: str, allow_private: bool) -> str:
    """Validate an outbound URL at registration; return it unchanged.

    :raises InvalidRequest: naming ``field`` when the URL is malformed, not
        http(s), or (unless ``allow_private``) aimed at a private address.
    """
    if not isinstance(url, str) or not url.strip():
        raise _fail(field, "expected an absolute http(s) URL")
    if len(url) > MAX_URL:
        raise _fail(field, f"URL longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError:
        raise _fail(field, "malformed URL") from None
    if parts.scheme not in ("http", "https"):
        raise _fail(field, "only http and https URLs are allowed")
    if not host:
        raise _fail(field, "the URL has no host")
    if parts.username or parts.password:
        raise _fail(field, "credentials in URLs are not allowed")
    if allow_private:
        return url
    lowered = host.lower().rstrip(".")
    if (
        lowered == "localhost"
        or lowered.endswith((".localhost", ".internal", ".local"))
        or lowered in _METADATA_HOSTS
    ):
        raise _fail(field, "URLs pointing at local or internal hosts are not allowed")
    try:
        literal = ipaddress.ip_address(lowered.strip("[]"))
    except ValueError:
        return url
    if is_forbidden_address(str(literal)):
        raise _fail(
            field, "URLs pointing at private, loopback or link-local addresses are not allowed"
        )
    return url


def resolve_checked(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Resolve ``host`` and return its addresses; raise if any is forbidden.

    Delivery connects only to these addresses, so a DNS answer that changes
    between the check and the connection cannot redirect it.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            if is_forbidden_address(address):
                raise InvalidRequest(
                    f"{host} resolves to a private address ({address})", {"field": "url"}
                )
    return addresses


class URLRefused(httpx.TransportError):
    """An outbound request the URL rules refuse (scheme, or a forbidden address)."""


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that applies the outbound URL rules to every request.

    Each request's URL is checked (:func:`check_url`); unless private URLs
    are allowed, its host is resolved here and the connection goes to the
    first address that passed, with the original ``Host`` header and TLS
    server name, so a DNS answer that changes after the check cannot point
    the request elsewhere. Redirects are not followed by the clients that
    use it, and would be checked again if they were. A refused request
    raises :class:`URLRefused` (an ``httpx.TransportError``).
    """

    def __init__(self, *, allow_private: bool, **options: Any) -> None:
        self.allow_private = allow_private
        self._inner = httpx.AsyncHTTPTransport(**options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        try:
            check_url(str(url), field="url", allow_private=self.allow_private)
        except InvalidRequest as exc:
            raise URLRefused(f"URL refused: {exc.message}", request=request) from None
        if not self.allow_private:
            host = url.host
            port = url.port or (443 if url.scheme == "https" else 80)
            resolve = functools.partial(resolve_checked, host, port, allow_private=False)
            try:
                if _is_ip(host):
                    addresses = resolve()
                else:  # resolving a name may block: in a thread
                    addresses = await anyio.to_thread.run_sync(resolve)
            except (InvalidRequest, OSError) as exc:
                message = exc.message if isinstance(exc, InvalidRequest) else str(exc)
                raise URLRefused(f"URL refused: {message}", request=request) from None
            if url.scheme == "https":
                request.extensions = {**request.extensions, "sni_hostname": host}
            request.url = url.copy_with(host=addresses[0])  # Host header keeps the name
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
