"""Outbound answers are bounded (#11, point 8): ``GuardedTransport`` reads at most
``max_response_bytes`` after decompression, decodes gzip and deflate itself with that bound
(a compressed answer can expand a thousandfold), and refuses encodings it did not ask for.
Against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_engine.netguard import MAX_RESPONSE_BYTES, GuardedTransport, ResponseTooLarge

LIMIT = 64 * 1024


def _encode(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return packer.compress(data) + packer.flush()
    if encoding == "deflate":
        return zlib.compress(data)
    return data


class _Handler(BaseHTTPRequestHandler):
    """``/<size>/<encoding>/<framing>``: ``size`` bytes of ``a``, in that encoding
    (``identity``, ``gzip``, ``deflate``, or ``br`` sent as is), framed by a
    Content-Length (``length``) or by closing the connection (``close``)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        _, size, encoding, framing = self.path.split("/")
        body = _encode(b"a" * int(size), encoding)
        self.server.asked.append(self.headers.get("Accept-Encoding"))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if encoding != "identity":
            self.send_header("Content-Encoding", encoding)
        if framing == "length":
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            for start in range(0, len(body), 1 << 16):
                self.wfile.write(body[start : start + (1 << 16)])
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: fine
            pass


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.asked = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


async def _get(url: str, limit: int = LIMIT) -> httpx.Response:
    transport = GuardedTransport(allow_private=True, max_response_bytes=limit)
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get(url, timeout=30)


def _url(server: Any, size: int, encoding: str, framing: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{size}/{encoding}/{framing}"


@settings(max_examples=40, deadline=None)
@given(
    size=st.one_of(
        st.integers(0, 2 * LIMIT), st.sampled_from([LIMIT - 1, LIMIT, LIMIT + 1, 50 * LIMIT])
    ),
    encoding=st.sampled_from(["identity", "gzip", "deflate"]),
    framing=st.sampled_from(["length", "close"]),
)
def test_an_answer_is_read_whole_up_to_the_bound_and_refused_past_it(
    server: Any, size: int, encoding: str, framing: str
) -> None:
    """Up to the bound the body arrives whole and decoded; one byte past it (decoded) the
    read fails with ResponseTooLarge, whatever the encoding and framing."""
    url = _url(server, size, encoding, framing)
    if size <= LIMIT:
        response = anyio.run(_get, url)
        assert response.content == b"a" * size
        assert "content-encoding" not in response.headers  # decoded here, not again by httpx
    else:
        with pytest.raises(ResponseTooLarge, match=f"larger than {LIMIT} bytes"):
            anyio.run(_get, url)


def test_a_compression_bomb_is_cut_at_the_bound(server: Any) -> None:
    """64 MiB of gzip'd zeros-like text (about 64 KiB on the wire) fails at the 64 KiB bound:
    the transport never holds more than the bound and one piece."""
    with pytest.raises(ResponseTooLarge):
        anyio.run(_get, _url(server, 64 << 20, "gzip", "length"))


def test_an_encoding_not_asked_for_is_refused(server: Any) -> None:
    """The transport asks for gzip, deflate or nothing; a brotli answer is refused."""
    with pytest.raises(httpx.DecodingError, match="not asked for"):
        anyio.run(_get, _url(server, 10, "br", "length"))
    assert server.asked[-1] == "gzip, deflate"


def test_the_default_bound_is_ten_mebibytes() -> None:
    assert MAX_RESPONSE_BYTES == 10 * 1024 * 1024
    assert GuardedTransport(allow_private=False).max_response_bytes == MAX_RESPONSE_BYTES
