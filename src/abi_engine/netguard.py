"""Outbound URL rules: webhooks, callbacks, HTTP steps and integrations must not reach the host's network.

The one place where outbound URLs and hosts are judged. A URL is parsed the
way the sending client (httpx) parses it, so what is checked is what would be
connected to. It is refused when

- httpx would refuse it, or it holds whitespace or a non-printable character
  (control characters, U+2028, zero-width and bidirectional marks...), or it
  is longer than :data:`MAX_URL` characters;
- its scheme is not http or https, it has no host, it carries credentials, or
  its port is not 1 to 65535;
- its host is not a well-formed host name (letters, digits, ``-`` and ``_``
  in dot-separated labels, IDNA labels that decode) or IP literal.

Unless the engine allows private URLs (``--allow-private-urls``), it is also
refused when its host is, in any form the system resolver accepts as an
address literal (``127.1``, ``0x7f000001``, ``2130706433``, ``0177.0.0.1``,
``[::ffff:127.0.0.1]``, a trailing dot...), a loopback, private, link-local,
shared, multicast, reserved, documentation or unspecified address (an
IPv4-mapped or NAT64 address judged as the IPv4 address it stands for; 6to4
refused), or when it names
the local host, a host without a domain (resolved through the search domains
of the host's network), or a cloud metadata service.

These checks need no DNS, so they run at registration. A name may still
resolve to a forbidden address, or come to: every connection resolves the
name again, refuses it if any of its addresses is forbidden, and connects to
the address it checked (:class:`GuardedTransport`), so a DNS answer that
changes between the check and the connection cannot redirect it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import httpx
import idna

from abi_engine.errors import InvalidRequest

__all__ = [
    "MAX_RESPONSE_BYTES",
    "MAX_URL",
    "GuardedTransport",
    "ResponseTooLarge",
    "URLRefused",
    "address_literal",
    "check_host",
    "check_url",
    "guarded_client",
    "is_forbidden_address",
    "pinned_address",
    "resolve_checked",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The longest outbound URL accepted, in characters.
MAX_URL = 2048
_MAX_HOST = 253  # DNS: a name's text form

_LOCAL_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "metadata.google.internal",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".localdomain")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_INET_PART = re.compile(r"0x[0-9a-f]*|0[0-7]*|[1-9][0-9]*")

#: Blocks refused beside what :mod:`ipaddress` flags (its tables vary with the Python version).
_FORBIDDEN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network": 0.0.0.0 reaches the local host
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "240.0.0.0/4",  # reserved, and the broadcast address
        "::/8",  # reserved: IPv4-compatible and -translated forms, loopback, unspecified
        "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments (Teredo among them)
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4 (deprecated; relays reach whatever IPv4 address it embeds)
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _fail(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{field}': {message}", {"field": field})


# -- addresses ----------------------------------------------------------------------------


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, or NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_forbidden_address(address: str | IPAddress) -> bool:
    """Whether an IP address is one outbound requests must not reach.

    Loopback, private, link-local, shared (100.64/10), multicast, reserved,
    documentation, benchmarking and unspecified addresses are, every
    address outside the global unicast space, and deprecated forms that
    embed an IPv4 address (6to4 ``2002::/16``, IPv4-compatible ``::a.b.c.d``).
    An IPv6 address that stands for an IPv4 one (``::ffff:a.b.c.d``, NAT64
    ``64:ff9b::a.b.c.d``) is judged as that IPv4 address. A zone
    (``fe80::1%eth0``) does not change the verdict. The verdict does not
    depend on the Python version's tables.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            ip = ipaddress.IPv6Address(int(ip))
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_forbidden_address(embedded)
    return bool(
        not ip.is_global
        or ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
        or any(ip.version == net.version and ip in net for net in _FORBIDDEN_NETWORKS)
    )


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """``text`` read as the C library's ``inet_aton`` reads it (or ``None``).

    One to four parts separated by dots, each decimal, octal (a leading
    ``0``) or hexadecimal (``0x``); the last part fills the remaining bytes:
    ``127.1``, ``0x7f000001``, ``2130706433``, ``0177.0.0.1``, ``127.0.0.0x1``.
    A bare ``0x`` counts as 0 (as URL parsers read it): stricter than glibc.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_PART.fullmatch(p) for p in parts):
        return None
    values = [
        int(p[2:] or "0", 16) if p.startswith("0x") else int(p, 8 if p[:1] == "0" else 10)
        for p in parts
    ]
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def address_literal(host: str) -> IPAddress | None:
    """The address ``host`` names when it is an address literal, in any form the resolver reads.

    IPv4 in every form ``inet_aton`` accepts (see above), with or without a
    trailing dot; IPv6 with or without brackets, with or without a zone
    (``fe80::1%eth0``). ``None`` for a host name. Case does not matter.

    :raises ValueError: when ``host`` looks like a number (its last label is
        digits, or ``0x`` and hex digits) but is not a valid IPv4 address,
        such as ``08`` or ``1.2.3.4.5`` or ``4294967296``: the resolvers of
        different systems read such names differently, so none is accepted.
    """
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    if text.endswith("."):
        text = text[:-1]
    last = text.rsplit(".", 1)[-1]
    if not _NUMERIC_LABEL.fullmatch(last):
        return None
    address = _inet_aton(text)
    if address is None:
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    return address


# -- hosts and URLs -----------------------------------------------------------------------


def _check_text(value: object, field: str, what: str, longest: int) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(field, f"expected {what}")
    if len(value) > longest:
        raise _fail(field, f"longer than {longest} characters")
    for index, char in enumerate(value):
        if char.isspace() or not char.isprintable():
            raise _fail(
                field,
                f"whitespace or a non-printable character ({char!a}) at position {index}",
            )
    return value


def _judge_host(host: str, field: str, allow_private: bool) -> None:
    """Check a host in its ASCII form (IDNA labels encoded, IPv6 without brackets)."""
    try:
        literal = address_literal(host)
    except ValueError as exc:
        raise _fail(field, str(exc)) from None
    if literal is not None:
        if isinstance(literal, ipaddress.IPv6Address) and literal.scope_id is not None:
            raise _fail(field, "IPv6 zone identifiers are not allowed")
        if not allow_private and is_forbidden_address(literal):
            raise _fail(field, "the address is not allowed (loopback, private or reserved)")
        return
    name = host.lower()
    if len(name) > _MAX_HOST or not all(
        _LABEL.fullmatch(label) for label in name.rstrip(".").split(".")
    ):
        raise _fail(field, "not a valid host name")
    if any(label.startswith("xn--") for label in name.split(".")):
        try:
            idna.decode(name.rstrip("."))
        except idna.IDNAError:
            raise _fail(field, "not a valid internationalised (IDNA) host name") from None
    if allow_private:
        return
    name = name.rstrip(".")
    if name in _LOCAL_NAMES or name.endswith(_LOCAL_SUFFIXES):
        raise _fail(field, "local and internal host names are not allowed")
    if "." not in name:
        raise _fail(field, "a host name without a domain is not allowed (it names a local host)")


def check_host(host: object, *, field: str, allow_private: bool) -> str:
    """Validate a host an outbound connection goes to (e.g. an SMTP server); return it unchanged.

    ``host`` is an ASCII host name (internationalised names in their
    ``xn--`` form), an IPv4 address in any form the resolver accepts, or an
    IPv6 address without brackets, as the system resolver takes it. The same
    rules as the host of :func:`check_url`.

    :raises InvalidRequest: naming ``field``.
    """
    text = _check_text(host, field, "a host name or address", _MAX_HOST + 2)
    if not text.isascii():
        raise _fail(field, "use the ASCII (xn--) form of an internationalised host name")
    if text.startswith("["):
        raise _fail(field, "give an IPv6 address without brackets")
    _judge_host(text, field, allow_private)
    return text


def check_url(url: object, *, field: str, allow_private: bool) -> str:
    """Validate an outbound URL at registration; return it unchanged.

    The URL is parsed as httpx parses it when sending, and its host judged
    in the form httpx connects to (see the module's docstring).

    :raises InvalidRequest: naming ``field`` when the URL is malformed, not
        http(s), or (unless ``allow_private``) aimed at a private address.
    """
    text = _check_text(url, field, "an absolute http(s) URL", MAX_URL)
    try:
        parsed = httpx.URL(text)
        _ = parsed.host  # decodes IDNA labels: refuses a malformed one such as "xn--"
        split = urlsplit(text)  # other readers of the URL must not fail on it either
        split_port = split.port
    except (httpx.InvalidURL, ValueError) as exc:  # idna.IDNAError is a ValueError
        raise _fail(field, f"malformed URL ({_one_line(exc)})") from None
    if parsed.scheme not in ("http", "https"):
        raise _fail(field, "only http and https URLs are allowed")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise _fail(field, "the URL has no host")
    if parsed.userinfo:
        raise _fail(field, "credentials in URLs are not allowed")
    port = parsed.port
    if port is not None and not 1 <= port <= 65535:
        raise _fail(field, "the port must be between 1 and 65535")
    if split_port is not None and split_port != (port or split_port):
        raise _fail(field, "malformed URL (ambiguous port)")
    _judge_host(host, field, allow_private)
    return text


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# -- resolution and connections ----------------------------------------------------------


def resolve_checked(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Resolve ``host`` and return its addresses; raise if any is forbidden.

    Callers connect only to these addresses, so a DNS answer that changes
    between the check and the connection cannot redirect it. The error says
    that the address is not allowed, never which address the name resolved to.

    :raises InvalidRequest: (``field`` ``url``) when an address is forbidden
        or ``host`` cannot be a host name.
    :raises OSError: when the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (UnicodeError, ValueError):  # the idna codec refuses the name
        raise InvalidRequest(f"{host}: not a valid host name", {"field": "url"}) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} has no address")
    if not allow_private and any(is_forbidden_address(a) for a in addresses):
        raise InvalidRequest(
            f"{host}: the address is not allowed (loopback, private or reserved)",
            {"field": "url"},
        )
    return addresses


class URLRefused(httpx.TransportError):
    """An outbound request the URL rules refuse (scheme, or a forbidden address)."""


#: The most bytes an outbound answer may have (after decompression) when read through
#: :class:`GuardedTransport`: a step's HTTP request, an approval's notification, a
#: connection's requests. Larger answers fail with :class:`ResponseTooLarge`.
MAX_RESPONSE_BYTES = 10 * 1024 * 1024
_PIECE = 64 * 1024
_ACCEPTED_ENCODINGS = "gzip, deflate"


class ResponseTooLarge(httpx.TransportError):
    """An outbound answer was larger than the transport's ``max_response_bytes``."""


class _CappedStream(httpx.AsyncByteStream):
    """An answer's body, decoded here (gzip, deflate) and cut at ``limit`` bytes."""

    def __init__(
        self, inner: httpx.AsyncByteStream, limit: int, encoding: str, request: httpx.Request
    ) -> None:
        self._inner = inner
        self._limit = limit
        self._request = request
        if encoding == "gzip":
            self._decoder: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            self._decoder = None

    def _too_large(self) -> ResponseTooLarge:
        return ResponseTooLarge(
            f"the answer is larger than {self._limit} bytes", request=self._request
        )

    def _pieces(self, chunk: bytes) -> Iterator[bytes]:
        if self._decoder is None:
            yield chunk
            return
        try:
            while chunk:
                piece = self._decoder.decompress(chunk, _PIECE)
                yield piece
                chunk = self._decoder.unconsumed_tail
        except zlib.error as exc:
            raise httpx.DecodingError(f"malformed compressed answer ({exc})") from None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._inner:
            for piece in self._pieces(chunk):
                size += len(piece)
                if size > self._limit:
                    raise self._too_large()
                if piece:
                    yield piece
        if self._decoder is not None:
            rest = self._decoder.flush()
            if size + len(rest) > self._limit:
                raise self._too_large()
            if rest:
                yield rest

    async def aclose(self) -> None:
        await self._inner.aclose()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that applies the outbound URL rules to every request.

    Each request's URL is checked (:func:`check_url`); unless private URLs
    are allowed, its host is resolved here and the connection goes to the
    first address that passed, with the original ``Host`` header and TLS
    server name, so a DNS answer that changes after the check cannot point
    the request elsewhere. Redirects are not followed by the clients that
    use it, and would be checked again if they were. A refused request
    raises :class:`URLRefused` (an ``httpx.TransportError``).

    Answers are bounded: at most ``max_response_bytes`` (default
    :data:`MAX_RESPONSE_BYTES`) after decompression, else reading the body
    raises :class:`ResponseTooLarge`, so a hostile server can exhaust neither
    memory nor the database. The transport asks for ``gzip``, ``deflate`` or
    no compression and decodes them itself, with the bound (a small
    compressed answer can expand to gigabytes); an answer in another encoding
    is refused (``httpx.DecodingError``).
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        **options: Any,
    ) -> None:
        self.allow_private = allow_private
        self.max_response_bytes = max_response_bytes
        self._inner = httpx.AsyncHTTPTransport(**options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        try:
            check_url(str(url), field="url", allow_private=self.allow_private)
        except InvalidRequest as exc:
            raise URLRefused(f"URL refused: {exc.message}", request=request) from None
        if not self.allow_private:
            try:
                host, address = await pinned_address(url)
            except URLRefused as exc:
                raise URLRefused(str(exc), request=request) from None
            if url.scheme == "https":
                request.extensions = {**request.extensions, "sni_hostname": host}
            request.url = url.copy_with(host=address)  # Host header keeps the name
        request.headers["Accept-Encoding"] = _ACCEPTED_ENCODINGS
        response = await self._inner.handle_async_request(request)
        return await self._bounded(response, request)

    async def _bounded(self, response: httpx.Response, request: httpx.Request) -> httpx.Response:
        encoding = response.headers.get("content-encoding", "").strip().lower() or "identity"
        declared = response.headers.get("content-length", "")
        refused: httpx.HTTPError | None = None
        if encoding not in ("identity", "gzip", "deflate"):
            refused = httpx.DecodingError(
                f"the answer's Content-Encoding {encoding[:40]!r} was not asked for",
                request=request,
            )
        elif (
            encoding == "identity"
            and declared.isdigit()
            and int(declared) > self.max_response_bytes
        ):
            refused = ResponseTooLarge(
                f"the answer is larger than {self.max_response_bytes} bytes"
                f" (Content-Length {declared})",
                request=request,
            )
        if refused is not None:
            await response.aclose()
            raise refused
        assert isinstance(response.stream, httpx.AsyncByteStream)
        headers = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name.lower() not in ("content-encoding", "content-length")
        ]
        return httpx.Response(
            response.status_code,
            headers=headers,
            stream=_CappedStream(response.stream, self.max_response_bytes, encoding, request),
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


async def pinned_address(url: httpx.URL) -> tuple[str, str]:
    """``(host, address)``: the URL's host as sent (IDNA-encoded) and the checked address to connect to.

    :raises URLRefused: when the host resolves to a forbidden address, or not at all.
    """
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    resolve = functools.partial(resolve_checked, host, port, allow_private=False)
    try:
        if _is_ip(host):
            addresses = resolve()
        else:  # resolving a name may block: in a thread
            addresses = await anyio.to_thread.run_sync(resolve)
    except (InvalidRequest, OSError) as exc:
        message = exc.message if isinstance(exc, InvalidRequest) else _one_line(exc)
        raise URLRefused(f"URL refused: {message}") from None
    return host, addresses[0]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


#: httpx.AsyncClient options :func:`guarded_client` sets itself.
_FIXED_OPTIONS = frozenset({"transport", "follow_redirects", "trust_env", "mounts", "proxy"})


def guarded_client(
    *,
    allow_private: bool,
    max_response_bytes: int = MAX_RESPONSE_BYTES,
    **options: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose every request goes through the outbound URL rules.

    The one recipe for outbound HTTP: a :class:`GuardedTransport` (each URL
    checked, the connection pinned to the address checked, answers bounded to
    ``max_response_bytes``), redirects not followed, and no proxy taken from
    the environment (``trust_env=False``: a proxy would bypass the rules).
    ``options`` go to ``httpx.AsyncClient`` (``base_url``, ``headers``,
    ``auth``, ``timeout``...); ``transport``, ``mounts``, ``proxy``,
    ``follow_redirects`` and ``trust_env`` are this function's to set.
    Close the client when done (``async with``).

    :raises TypeError: when ``options`` names one of those.
    """
    fixed = sorted(_FIXED_OPTIONS.intersection(options))
    if fixed:
        raise TypeError(f"guarded_client() sets {', '.join(fixed)} itself")
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        transport=GuardedTransport(
            allow_private=allow_private, max_response_bytes=max_response_bytes
        ),
        **options,
    )
