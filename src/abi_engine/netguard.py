"""Outbound URL rules: webhooks, callbacks and HTTP steps must not reach the host's network.

A URL is refused when its scheme is not http or https, or when its host is,
or resolves to, a loopback, private, link-local, multicast, reserved or
cloud-metadata address, unless the engine allows private URLs
(``--allow-private-urls``). Registration checks what it can without waiting
on DNS; delivery checks again, on the addresses actually connected to.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from abi_engine.errors import InvalidRequest

__all__ = ["check_url", "is_forbidden_address", "resolve_checked"]

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
