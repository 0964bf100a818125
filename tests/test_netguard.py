"""Outbound URL rules (netguard): URLs parsed as httpx parses them, every literal form of an
address the resolver reads, names that stay local, and errors that do not say where a name
resolved to.

The properties compare our reading of a host with the system's own: ``socket.inet_aton``
and ``getaddrinfo(..., AI_NUMERICHOST)`` (the C library's parsers; no DNS, no traffic).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from abi_engine.errors import InvalidRequest
from abi_engine.netguard import (
    GuardedTransport,
    URLRefused,
    address_literal,
    check_host,
    check_url,
    is_forbidden_address,
    resolve_checked,
)

#: Blocks no outbound request may reach (a sample of each kind).
FORBIDDEN_V4 = [
    ipaddress.IPv4Network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "192.0.0.0/24",
        "198.18.0.0/15",
    )
]
FORBIDDEN_V6 = [
    ipaddress.IPv6Network(n)
    for n in (
        "::1/128",
        "::/128",
        "fe80::/10",
        "fc00::/7",
        "ff00::/8",
        "fec0::/10",
        "2001:db8::/32",
    )
]


def _numeric(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """What the C library's resolver reads ``host`` as, without DNS (``None``: not a literal)."""
    try:
        infos = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None
    return ipaddress.ip_address(str(infos[0][4][0]).split("%", 1)[0])


@st.composite
def addresses_in(draw: st.DrawFn, networks: list[Any]) -> Any:
    """An address of one of ``networks``."""
    network = draw(st.sampled_from(networks))
    return network[draw(st.integers(0, network.num_addresses - 1))]


@st.composite
def inet_aton_forms(draw: st.DrawFn, address: ipaddress.IPv4Address) -> str:
    """``address`` written as inet_aton reads it: 1 to 4 parts, each decimal, octal or hex."""
    count = draw(st.integers(1, 4))
    packed = address.packed
    values = [*packed[: count - 1], int.from_bytes(packed[count - 1 :], "big")]

    def render(value: int) -> str:
        style = draw(st.sampled_from(["dec", "oct", "hex", "HEX"]))
        zeros = "0" * draw(st.integers(0, 3))
        if style == "dec":
            return str(value)
        if style == "oct":
            return "0" + zeros + format(value, "o")
        if style == "hex":
            return "0x" + zeros + format(value, "x")
        return "0X" + zeros + format(value, "X")

    return ".".join(render(v) for v in values)


@st.composite
def forbidden_ipv4_forms(draw: st.DrawFn) -> tuple[ipaddress.IPv4Address, str]:
    """A forbidden IPv4 address and one of its literal forms (maybe with a trailing dot)."""
    address = draw(addresses_in(FORBIDDEN_V4))
    return address, draw(inet_aton_forms(address)) + draw(st.sampled_from(["", "."]))


@st.composite
def forbidden_ipv6_forms(draw: st.DrawFn) -> tuple[Any, str]:
    """A forbidden address written as IPv6: its own forms, or an IPv4 one mapped, NAT64'd,
    6to4'd or IPv4-compatible; compressed or exploded, in either case."""
    kind = draw(st.sampled_from(["v6", "mapped", "mapped-hex", "nat64", "6to4", "compat"]))
    if kind == "v6":
        address: Any = draw(addresses_in(FORBIDDEN_V6))
        text = draw(st.sampled_from([address.compressed, address.exploded]))
    else:
        address = draw(addresses_in(FORBIDDEN_V4))
        n = int(address)
        if kind == "mapped":
            text = f"::ffff:{address}"
        elif kind == "mapped-hex":
            text = ipaddress.IPv6Address((0xFFFF << 32) | n).exploded
        elif kind == "nat64":
            text = f"64:ff9b::{address}"
        elif kind == "6to4":
            text = str(
                ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | draw(st.integers(0, 2**80 - 1)))
            )
        else:
            text = f"::{address}"
    return address, draw(st.sampled_from([text, text.upper()]))


# -- literal forms --------------------------------------------------------------------------


@given(forbidden_ipv4_forms(), st.integers(1, 65535), st.sampled_from(["", "/", "/hook?x=1"]))
def test_every_ipv4_form_of_a_forbidden_address_is_refused(
    form: tuple[ipaddress.IPv4Address, str], port: int, path: str
) -> None:
    """Decimal, octal, hex, short (127.1) and trailing-dot forms of a private address are
    refused at registration (URL and host), naming the field."""
    _, host = form
    for url in (f"http://{host}{path}", f"https://{host}:{port}{path}"):
        with pytest.raises(InvalidRequest) as caught:
            check_url(url, field="callback_url", allow_private=False)
        assert caught.value.details == {"field": "callback_url"}
    with pytest.raises(InvalidRequest) as caught:
        check_host(host, field="config.host", allow_private=False)
    assert caught.value.details == {"field": "config.host"}


@given(forbidden_ipv6_forms())
def test_every_ipv6_form_of_a_forbidden_address_is_refused(form: tuple[Any, str]) -> None:
    """IPv6 forms (loopback, link-local, unique local, mapped, NAT64, 6to4, compatible) of a
    forbidden address are refused at registration."""
    _, host = form
    with pytest.raises(InvalidRequest):
        check_url(f"http://[{host}]:8080/", field="url", allow_private=False)
    with pytest.raises(InvalidRequest):
        check_host(host, field="config.host", allow_private=False)


@given(st.data())
def test_our_reading_of_ipv4_forms_is_the_resolvers(data: st.DataObject) -> None:
    """Every form generated is read by the C library (inet_aton, getaddrinfo) as the address we
    read it as: the normalisation follows the resolver, not a guess."""
    address = data.draw(st.ip_addresses(v=4))
    assert isinstance(address, ipaddress.IPv4Address)
    form = data.draw(inet_aton_forms(address))
    assert socket.inet_aton(form) == address.packed
    assert _numeric(form) == address
    assert address_literal(form) == address


_PARTS = st.one_of(
    st.integers(0, 2**32).map(str),
    st.integers(0, 2**32).map(hex),
    st.integers(0, 2**32).map(lambda v: "0" + format(v, "o")),
    st.sampled_from(["", "0", "0x", "08", "0X1F", "0xg", "1e2"]),
)
NUMERIC_HOSTS = st.one_of(
    st.tuples(
        st.lists(_PARTS, min_size=1, max_size=5).map(".".join), st.sampled_from(["", "."])
    ).map("".join),
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=6).map(lambda a: a.exploded.upper()),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
)


@given(NUMERIC_HOSTS)
def test_whatever_the_resolver_reads_as_forbidden_is_refused(host: str) -> None:
    """Whatever number-like host the resolver reads as an address, address_literal reads as the
    same address, and check_host refuses it when that address is forbidden."""
    resolved = _numeric(host)
    if resolved is None:
        return
    assert address_literal(host) == resolved
    if is_forbidden_address(resolved):
        with pytest.raises(InvalidRequest):
            check_host(host, field="host", allow_private=False)
    else:
        assert check_host(host, field="host", allow_private=False) == host


@pytest.mark.parametrize(
    "host",
    ["08", "1.2.3.4.5", "4294967296", "0x100000000", "256.1.1.1", "1.2.3.09", "example.0x1"],
)
def test_numbers_that_are_no_address_are_refused(host: str) -> None:
    """A host that looks like a number but is no valid address is refused (resolvers differ)."""
    with pytest.raises(InvalidRequest) as caught:
        check_url(f"http://{host}/", field="url", allow_private=True)
    assert caught.value.details == {"field": "url"}


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "https://hooks.example.com:8443/in?x=1",
        "https://bücher.example/x",
        "http://example.com./",
        "https://a_b.example.com/é?q=ü#frag",
        "http://8.8.8.8/",
        "http://1.1.1.1./",
        "https://[2606:4700::1111]/",
        "https://[64:ff9b::808:808]/",
        "https://[::ffff:8.8.8.8]/",
    ],
)
def test_public_urls_pass(url: str) -> None:
    """Public names and addresses (also NAT64 and mapped forms of public IPv4) pass."""
    assert check_url(url, field="url", allow_private=False) == url


@pytest.mark.parametrize("host", ["2002:808:808::1", "::8.8.8.8", "::ffff:0:8.8.8.8"])
def test_deprecated_ipv6_embeddings_are_refused_whatever_they_embed(host: str) -> None:
    """6to4, IPv4-compatible and IPv4-translated addresses are refused even around a public
    IPv4 address, whatever the Python version's address tables say."""
    with pytest.raises(InvalidRequest):
        check_url(f"https://[{host}]/", field="url", allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8000/",
        "http://LOCALHOST./",
        "http://api.localhost/",
        "http://printer.local/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://router.home.arpa/",
        "http://ip6-localhost/",
        "http://vm/",
        "http://intranet:8080/",
    ],
)
def test_local_names_are_refused_unless_allowed(url: str) -> None:
    """localhost, .local/.internal/.home.arpa names, metadata names and names without a domain
    (resolved through local search domains) are refused, and allowed with allow_private."""
    with pytest.raises(InvalidRequest):
        check_url(url, field="url", allow_private=False)
    assert check_url(url, field="url", allow_private=True) == url


# -- what the sending client refuses ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://ex\x00ample.com/",
        "https://example.com/\x01",
        "https://example.com/a\x7fb",
        "https://example.com/\u2028",
        "https://example.com/\u200b",
        "https://example.com/\u202e",
        "https://example.com/a b",
        "https://example.com/\t",
        "https://xn--/",
        "https://xn--zz.example/",
        "http://0177.0.0.1/",
        "http://ex%41mple.com/",
        "http://exa$mple.com/",
        "http://example.com:0/",
        "http://example.com:65536/",
        "http://example.com:-1/",
        "http://example.com:\uff18\uff10/",  # fullwidth digits
        "http://[fe80::1%25eth0]/",
        "http://[::1/",
        "https://user:pw@example.com/",
        "https:///path",
        "ftp://example.com/",
        "",
        "h" * 3000,
    ],
)
def test_urls_the_client_cannot_send_are_refused_even_when_private_is_allowed(url: str) -> None:
    """Control and invisible characters, bad IDNA labels, bad ports, zones, credentials: refused
    whatever the private-URL setting, as INVALID_REQUEST naming the field."""
    with pytest.raises(InvalidRequest) as caught:
        check_url(url, field="url", allow_private=True)
    assert caught.value.code == "INVALID_REQUEST"
    assert caught.value.details == {"field": "url"}


@given(
    st.text(max_size=12),
    st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs"]),
    st.integers(0, 40),
)
def test_any_invisible_character_anywhere_is_refused(text: str, char: str, where: int) -> None:
    """A control, format, separator or space character anywhere in a URL is refused."""
    url = "https://example.com/" + text
    where = min(where, len(url))
    with pytest.raises(InvalidRequest):
        check_url(url[:where] + char + url[where:], field="url", allow_private=True)


@given(st.one_of(st.text(max_size=60), st.text(max_size=60).map(lambda t: "http://" + t)))
def test_check_url_fails_only_with_invalid_request(text: str) -> None:
    """Whatever the text, check_url answers it or raises InvalidRequest; what it passes, httpx
    parses (the client that sends it), to the host that was checked."""
    try:
        check_url(text, field="url", allow_private=False)
    except InvalidRequest as exc:
        refused: InvalidRequest | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.details == {"field": "url"}
        return
    parsed = httpx.URL(text)
    assert parsed.scheme in ("http", "https")
    assert parsed.host


@pytest.mark.parametrize("value", [None, 42, ["https://example.com"], {"u": 1}])
def test_non_strings_are_refused(value: Any) -> None:
    """A URL or host that is not a string is an INVALID_REQUEST, not a TypeError."""
    with pytest.raises(InvalidRequest):
        check_url(value, field="url", allow_private=True)
    with pytest.raises(InvalidRequest):
        check_host(value, field="host", allow_private=True)


@pytest.mark.parametrize("host", ["[::1]", "smtp.bücher.example", "a..b", "-x.example", "x y"])
def test_hosts_the_resolver_cannot_take_are_refused(host: str) -> None:
    """A host given alone must be what getaddrinfo takes: no brackets, ASCII, valid labels."""
    with pytest.raises(InvalidRequest):
        check_host(host, field="config.host", allow_private=True)


# -- at connection time -------------------------------------------------------------------


def test_resolution_errors_do_not_say_where_a_name_points() -> None:
    """A name resolving to a forbidden address is refused without the address it resolved to."""
    with pytest.raises(InvalidRequest) as caught:
        resolve_checked("localhost", 80, allow_private=False)
    assert "not allowed" in caught.value.message
    assert "127.0.0.1" not in caught.value.message
    assert "::1" not in caught.value.message
    assert resolve_checked("localhost", 80, allow_private=True)


def test_names_the_idna_codec_refuses_are_refused_not_crashed() -> None:
    """A name Python's resolver cannot encode is an InvalidRequest, not a UnicodeError."""
    with pytest.raises(InvalidRequest):
        resolve_checked("a..b", 80, allow_private=False)


@pytest.mark.anyio
async def test_guarded_transport_refuses_names_of_private_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The transport refuses a name resolving to a private address before connecting, and its
    error does not say the address (the resolver answers from a table: no DNS traffic)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "hooks.example.com":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    async with httpx.AsyncClient(transport=GuardedTransport(allow_private=False)) as client:
        with pytest.raises(URLRefused) as caught:
            await client.get("https://hooks.example.com/in")
    assert "not allowed" in str(caught.value)
    assert "10.0.0.7" not in str(caught.value)
