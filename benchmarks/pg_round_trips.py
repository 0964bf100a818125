"""Round trips and statements per execution on PostgreSQL (issue #18): the figure that
holds on a loaded machine, where wall-clock throughput does not.

Runs the door workload (``benchmarks/_doors.py``: three checkpointed steps, 64
submitters, ``--count`` executions, one engine) against a fresh schema reached
through a counting TCP proxy (in this process's own thread). The proxy reads the
PostgreSQL protocol the client sends and counts, after the warm-up:

- **round trips**: the times the client waits for the server's answer: a ``Sync``
  (the end of a statement, or of a pipeline's statements sent together), a ``Flush``
  (a pipeline's results wanted now) or a simple ``Query``; shown by the statements sent since the previous one;
- **statements**: ``Execute`` messages plus simple ``Query`` messages, by their SQL
  (``Parse`` names it; prepared statements are followed by name);
- **parses**: ``Parse`` messages, unnamed (parsed and planned for one use) or named
  (psycopg prepares a statement on its ``prepare_threshold``-th use on a connection).

    python benchmarks/pg_round_trips.py [--url postgresql://...] [--count 1000] [--top 15]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

sys.path.insert(0, str(Path(__file__).parent))

from door_postgres import Schema, _free_port, run_engine


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.round_trips = 0
        self.statements: Counter[str] = Counter()
        #: Parse messages: ``unnamed`` and ``named`` (prepared).
        self.parses: Counter[str] = Counter()
        #: Round trips by the statements sent together before each one.
        self.waits: Counter[str] = Counter()

    def reset(self) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
        with self.lock:
            taken = self.round_trips, self.statements, self.waits, self.parses
            self.round_trips, self.statements, self.waits = 0, Counter(), Counter()
            self.parses = Counter()
        return taken


class _Reader:
    """Parses the client's half of one connection (no TLS: the URL says sslmode=disable)."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buffer = b""
        self.started = False
        self.names: dict[bytes, str] = {}  # prepared statement name -> SQL
        self.bound = ""
        self.sent: list[str] = []  # statements since the last wait
        self.synced = False  # nothing sent since the last Sync

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if not self.started:  # untyped: SSL/GSS requests, the startup message
                if len(self.buffer) < 8:
                    return
                (length,) = struct.unpack("!i", self.buffer[:4])
                code = struct.unpack("!i", self.buffer[4:8])[0]
                if len(self.buffer) < length:
                    return
                self.buffer = self.buffer[length:]
                self.started = code == 196608  # protocol 3.0: typed from now on
                continue
            if len(self.buffer) < 5:
                return
            kind = self.buffer[:1]
            (length,) = struct.unpack("!i", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                return
            body, self.buffer = self.buffer[5 : 1 + length], self.buffer[1 + length :]
            self._message(kind, body)

    def _message(self, kind: bytes, body: bytes) -> None:
        if kind == b"P":
            name, rest = body.split(b"\0", 1)
            self.names[name] = rest.split(b"\0", 1)[0].decode(errors="replace")
            with self.counts.lock:
                self.counts.parses["named" if name else "unnamed"] += 1
        elif kind == b"B":
            _portal, statement, _ = body.split(b"\0", 2)
            self.bound = self.names.get(statement, "?")
        elif kind == b"E":
            self._count(self.bound)
        elif kind == b"Q":
            self._count(body.rstrip(b"\0").decode(errors="replace"))
        # A Flush right after a Sync (psycopg leaving a pipeline) waits for nothing more.
        synced, self.synced = self.synced, kind == b"S" or (kind == b"H" and self.synced)
        if kind in (b"S", b"Q") or (kind == b"H" and not synced):
            with self.counts.lock:
                self.counts.round_trips += 1
                self.counts.waits[" + ".join(self.sent) or "(none)"] += 1
            self.sent = []

    def _count(self, sql: str) -> None:
        key = " ".join(sql.split())[:90]
        self.sent.append(key[:32])
        with self.counts.lock:
            self.counts.statements[key] += 1


def _pipe(src: socket.socket, dst: socket.socket, on_data: object) -> None:
    try:
        while data := src.recv(65536):
            on_data(data)  # type: ignore[operator]
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def serve(port: int, target: tuple[str, int], counts: Counts) -> None:
    listener = socket.create_server(("127.0.0.1", port))

    def handle(client: socket.socket) -> None:
        upstream = socket.create_connection(target)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _Reader(counts)
        threading.Thread(target=_pipe, args=(client, upstream, reader.feed), daemon=True).start()
        threading.Thread(target=_pipe, args=(upstream, client, len), daemon=True).start()

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            handle(client)

    threading.Thread(target=accept, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=os.environ.get("ABI_ENGINE_TEST_POSTGRES_URL"))
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if not args.url:
        parser.error("give --url postgresql://... (or set ABI_ENGINE_TEST_POSTGRES_URL)")
    target = urlsplit(args.url)
    counts = Counts()
    port = _free_port()
    serve(port, (target.hostname or "127.0.0.1", target.port or 5432), counts)
    with Schema(args.url) as schema:
        parts = urlsplit(schema.url(port))
        query = [*parse_qsl(parts.query), ("sslmode", "disable")]
        url = urlunsplit(parts._replace(query=urlencode(query)))
        anyio.run(run_engine, url, 20, 0.0, 10**6)  # schema, workflow, warm-up
        counts.reset()
        clock = time.perf_counter()
        # Ended once the workflow has every run: the warm-up's 40, this one's 20 + count.
        anyio.run(run_engine, url, args.count, 0.0, 0, 40 + 20 + args.count)
        seconds = time.perf_counter() - clock
        round_trips, statements, waits, parses = counts.reset()
    # The second run's own warm-up (20 sequential executions) is counted too.
    n = args.count + 20
    print(
        f"pg_round_trips: {args.count} executions (+20 warm-up) in {seconds:.1f} s;"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    print(f"  round trips per execution: {round_trips / n:.2f}")
    for sql, number in waits.most_common(args.top):
        print(f"  {number / n:6.2f}  {sql}")
    print(
        f"  parses per execution: {parses['unnamed'] / n:.3f} unnamed,"
        f" {parses['named'] / n:.3f} prepared"
    )
    print(f"  statements per execution:  {sum(statements.values()) / n:.2f}")
    for sql, number in statements.most_common(args.top):
        print(f"  {number / n:6.2f}  {sql}")


if __name__ == "__main__":
    main()
