"""A small REST system on 127.0.0.1, standing in for a CRM or a help desk in the tests.

:class:`System` runs :class:`http.server.ThreadingHTTPServer` in a thread. It
keeps records by key and serves:

* ``GET /records`` -- every record as ``{"records": [...]}``; with
  ``page_size`` set, ``limit`` records at a time with ``next_cursor`` (an
  opaque string, ``null`` on the last page), sent back as ``?cursor=``;
* ``GET /pages?page=N`` -- page ``N`` (from 1) of ``page_size`` records as
  ``{"data": {"items": [...]}}`` (page numbers);
* ``GET /array`` -- every record as a bare JSON array;
* ``POST /records`` with a batch (``{"records": [...]}`` or a JSON array):
  each is stored (by key) and the batch recorded in :attr:`batches`;
* ``POST /records`` with one record, ``PUT|PATCH|DELETE /records/{key}`` --
  one record;
* ``POST /reports`` -- anything, recorded.

Every request is recorded (:attr:`requests`; a JSON body decoded, another as
text). An ``Idempotency-Key`` that was
already applied is answered 200 without applying the request again.
:meth:`plan` makes the next requests to a method and path fail (a status) or
hang (``("sleep", seconds)`` before answering normally; :data:`PASS` answers
normally at once); when the plan is used up, requests are served normally.

Also helpers shared by the data types' tests: :func:`connect_systems`,
:func:`create_workflow`, :func:`run`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from abi_engine import Engine, Execution

Answer = int | tuple[str, float]
#: A planned answer that serves the request normally.
PASS: Answer = ("sleep", 0.0)


@attrs.frozen
class Request:
    """One request as the system saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


class System:
    """Records by ``key``; see the module docstring for the routes."""

    def __init__(
        self, records: Iterable[dict[str, Any]] = (), *, key: str = "id", page_size: int = 0
    ) -> None:
        self.key = key
        self.page_size = page_size
        self.records: dict[str, dict[str, Any]] = {str(r[key]): dict(r) for r in records}
        self.requests: list[Request] = []
        self.batches: list[list[Any]] = []
        self.reports: list[Request] = []
        self._applied: set[str] = set()
        self._plans: dict[tuple[str, str], list[Answer]] = {}
        self._lock = threading.RLock()
        system = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body = system._handle(self.command, self.path, self.headers, raw)
                payload = b"" if body is None else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up
                    pass

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection(self, **config: Any) -> dict[str, Any]:
        """The config of an ``http`` integration connection to this system."""
        return {"base_url": self.base_url, **config}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def plan(self, method: str, path: str, answers: Sequence[Answer]) -> None:
        """The next requests ``method path`` get ``answers`` in order, then normal service."""
        with self._lock:
            self._plans[(method, path)] = list(answers)

    def received(self, method: str | None = None, path: str | None = None) -> list[Request]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and (path is None or r.path == path)
            ]

    def keys_sent(self, method: str = "POST", path: str = "/records") -> list[str]:
        """The ``Idempotency-Key`` of each such request, in arrival order."""
        return [r.headers.get("idempotency-key", "") for r in self.received(method, path)]

    # -- serving --------------------------------------------------------------------

    def _handle(self, method: str, target: str, headers: Any, raw: bytes) -> tuple[int, Any]:
        parts = urlsplit(target)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        lowered = {k.lower(): v for k, v in headers.items()}
        body: Any = None
        if raw:
            json_body = "json" in lowered.get("content-type", "")
            body = json.loads(raw) if json_body else raw.decode("utf-8")
        request = Request(method, path, query, lowered, body)
        with self._lock:
            self.requests.append(request)
            plan = self._plans.get((method, path))
            answer = plan.pop(0) if plan else None
        if isinstance(answer, tuple):
            time.sleep(answer[1])
        elif answer is not None:
            return answer, {"error": f"planned {answer}"}
        key = lowered.get("idempotency-key")
        with self._lock:
            if key is not None and key in self._applied:
                return 200, {"duplicate": True}
            status, answer_body = self._route(request)
            if key is not None and status < 400:
                self._applied.add(key)
        return status, answer_body

    def _route(self, request: Request) -> tuple[int, Any]:
        method, path = request.method, request.path
        if method == "GET" and path == "/records":
            return 200, self._cursor_page(request.query)
        if method == "GET" and path == "/pages":
            page = int(request.query.get("page", "1"))
            items = list(self.records.values())[(page - 1) * self.page_size : page * self.page_size]
            return 200, {"data": {"items": items}}
        if method == "GET" and path == "/array":
            return 200, list(self.records.values())
        if method == "POST" and path == "/records" and _is_batch(request.body):
            body = request.body
            batch = body if isinstance(body, list) else body["records"]
            self.batches.append(batch)
            for record in batch:
                self.records[str(record.get(self.key, len(self.records)))] = record
            return 200, {"accepted": len(batch)}
        if method == "POST" and path == "/reports":
            self.reports.append(request)
            return 201, {"ok": True}
        if method == "POST" and path == "/records":
            record = request.body
            self.records[str(record[self.key])] = record
            return 201, record
        if path.startswith("/records/") and method in ("PUT", "PATCH", "DELETE"):
            return self._one(method, unquote(path[len("/records/") :]), request.body)
        return 404, {"error": "no such route"}

    def _cursor_page(self, query: dict[str, str]) -> dict[str, Any]:
        items = list(self.records.values())
        if not self.page_size:
            return {"records": items}
        start = int(query.get("cursor", "0"))
        end = start + self.page_size
        return {"records": items[start:end], "next_cursor": str(end) if end < len(items) else None}

    def _one(self, method: str, key: str, body: Any) -> tuple[int, Any]:
        if key not in self.records:
            return 404, {"error": f"no record {key}"}
        if method == "DELETE":
            del self.records[key]
            return 204, None
        if method == "PUT":
            self.records[key] = body
        else:
            self.records[key] = {**self.records[key], **body}
        return 200, self.records[key]


def _is_batch(body: Any) -> bool:
    return isinstance(body, list) or (
        isinstance(body, dict) and isinstance(body.get("records"), list)
    )


@contextmanager
def running_system(records: Iterable[dict[str, Any]] = (), **options: Any) -> Iterator[System]:
    """A :class:`System` for the duration of the block."""
    system = System(records, **options)
    try:
        yield system
    finally:
        system.close()


async def connect_systems(engine: Engine, **systems: System) -> None:
    """Connect each ``int_<name>=system`` as an ``http`` integration."""
    for integration_id, system in systems.items():
        await engine.integrations.put(integration_id, "http", system.connection())


async def create_workflow(
    engine: Engine,
    configuration: dict[str, Any],
    integrations: Sequence[dict[str, Any]] = (),
    workflow_type: str = "data_processing",
) -> str:
    """An active workflow of the type; its id."""
    workflow = await engine.workflows.create(
        {
            "name": f"test {workflow_type}",
            "type": workflow_type,
            "configuration": configuration,
            "integrations": list(integrations),
        }
    )
    await engine.workflows.activate(workflow.id)
    return workflow.id


async def run(
    engine: Engine,
    configuration: dict[str, Any],
    parameters: dict[str, Any] | None = None,
    integrations: Sequence[dict[str, Any]] = (),
    workflow_type: str = "data_processing",
) -> Execution:
    """Create, activate and execute a workflow synchronously."""
    workflow_id = await create_workflow(engine, configuration, integrations, workflow_type)
    return await engine.executions.execute(workflow_id, parameters or {}, timeout_seconds=30)
