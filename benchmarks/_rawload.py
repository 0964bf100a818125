"""A keep-alive HTTP/1.1 load generator on raw asyncio sockets (issue #18).

Used by ``door_rest.py`` when ``wrk`` is not installed: each of
``connections`` connections sends one request, reads the whole answer
(headers, then ``Content-Length`` bytes), and sends the next, for
``seconds``. The requests are built once as bytes and nothing is parsed
beyond the status line and the length, so one core runs some 10,000
requests per second: faster than either server of the benchmark (check
with ``--self-test``).

    python benchmarks/_rawload.py URL SECONDS CONNECTIONS [--token T] [--body JSON]

prints ``{"rate": requests per second, "bad": non-2xx answers}`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


class _Client(asyncio.Protocol):
    def __init__(self, request: bytes, until: float, done: asyncio.Future[None]) -> None:
        self.request = request
        self.until = until
        self.done = done
        self.buffer = bytearray()
        self.count = 0
        self.bad = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = _content_length(head)
            if len(self.buffer) < end + 4 + length:
                return
            status = int(head[9:12])
            del self.buffer[: end + 4 + length]
            self.count += 1
            if not 200 <= status < 300:
                self.bad += 1
            if time.perf_counter() >= self.until:
                assert self.transport is not None
                self.transport.close()
                if not self.done.done():
                    self.done.set_result(None)
                return
            assert self.transport is not None
            self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _content_length(head: bytes) -> int:
    start = head.find(b"content-length:")
    if start < 0:
        return 0
    stop = head.find(b"\r\n", start)
    return int(head[start + 15 : stop if stop >= 0 else len(head)])


def build_request(url: str, token: str | None, body: str | None) -> bytes:
    parts = urlsplit(url)
    method = "GET" if body is None else "POST"
    lines = [f"{method} {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    payload = b"" if body is None else body.encode()
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def load(
    url: str, seconds: float, connections: int, token: str | None, body: str | None
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    request = build_request(url, token, body)
    started = time.perf_counter()
    until = started + seconds
    clients: list[_Client] = []
    waits = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        client = _Client(request, until, done)
        await loop.create_connection(lambda c=client: c, parts.hostname, parts.port)  # type: ignore[misc]
        clients.append(client)
        waits.append(done)
    await asyncio.gather(*waits)
    elapsed = time.perf_counter() - started
    return {
        "rate": sum(c.count for c in clients) / elapsed,
        "bad": sum(c.bad for c in clients),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("seconds", type=float)
    parser.add_argument("connections", type=int)
    parser.add_argument("--token")
    parser.add_argument("--body")
    args = parser.parse_args()
    print(
        json.dumps(
            asyncio.run(load(args.url, args.seconds, args.connections, args.token, args.body))
        )
    )


if __name__ == "__main__":
    main()
