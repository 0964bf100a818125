"""Talking to the systems behind a workflow's integrations: listings, writes, errors.

:func:`connect` opens the workflow's connection to an integration (the
built-in ``http`` provider's ``httpx.AsyncClient``) after the engine's outbound
URL rules. :class:`Remote` sends requests to paths *under* the connection's
base URL (a path is appended, never resolved, so it cannot carry the
connection's credentials to another host) and turns every failure into a
:class:`RemoteError` that says what failed without headers, query strings or
credentials. :class:`Progress` remembers, per execution and step, what a try
already finished, in memory and durably (``ctx.save_progress``), so that a
retried or restarted step does not repeat it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio
import attrs
import httpx

from abi_engine import StepContext
from abi_engine.netguard import ResponseTooLarge, check_url, resolve_checked
from abi_plugin_data_processing.mapping import get_path
from abi_plugin_data_processing.options import Pagination

__all__ = [
    "IntegrationUnavailable",
    "Listing",
    "Progress",
    "Remote",
    "RemoteError",
    "connect",
]

#: The most characters of an error answer's body kept in an error message.
MAX_ERROR_BODY = 200
#: Answers with these statuses (and transport errors) are worth another try.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class IntegrationUnavailable(LookupError):
    """The configuration names an integration this workflow has no connection to."""


class RemoteError(Exception):
    """A request to a remote system failed: an error status, a timeout, a broken answer.

    ``status_code`` is the answer's status (``None`` when there was no
    answer); ``transient`` says whether trying again may help.
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    @property
    def transient(self) -> bool:
        return self.status_code is None or self.status_code in TRANSIENT_STATUSES

    def json(self) -> dict[str, Any]:
        return {"status_code": self.status_code, "error": self.message}


def _snippet(response: httpx.Response) -> str:
    text = " ".join(response.text[:MAX_ERROR_BODY].split())
    return f": {text}" if text else ""


class Remote:
    """Requests to paths under one connection's base URL."""

    def __init__(self, client: httpx.AsyncClient, integration_id: str) -> None:
        self.client = client
        self.integration_id = integration_id
        self._base = str(client.base_url).rstrip("/")

    async def __aenter__(self) -> Remote:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; an error status or a transport failure raises :class:`RemoteError`."""
        what = f"{method} {self.integration_id}{path}"
        try:
            response = await self.client.request(
                method,
                f"{self._base}/{path.lstrip('/')}",
                params=dict(params) if params else None,
                json=json_body,
                content=content,
                headers=dict(headers) if headers else None,
            )
        except httpx.TimeoutException:
            raise RemoteError(f"{what} timed out") from None
        except (ResponseTooLarge, httpx.DecodingError) as exc:  # the answer, not the network
            raise RemoteError(f"{what} failed: {type(exc).__name__}: {exc}") from None
        except httpx.HTTPError as exc:
            raise RemoteError(f"{what} failed: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise RemoteError(
                f"{what} answered {response.status_code}{_snippet(response)}",
                response.status_code,
            )
        return response

    async def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET ``path`` and decode the JSON answer."""
        response = await self.request("GET", path, params=params)
        try:
            return response.json()
        except ValueError:
            raise RemoteError(
                f"GET {self.integration_id}{path} answered {response.status_code}"
                " with a body that is not JSON",
                response.status_code,
            ) from None


async def connect(ctx: StepContext, integration_id: str, field: str) -> Remote:
    """The workflow's connection to ``integration_id`` as a :class:`Remote`.

    Raises :class:`IntegrationUnavailable` when the workflow does not list the
    integration or it is not connected, and the engine's ``InvalidRequest``
    when the connection's base URL breaks the outbound URL rules (private
    addresses need ``allow_private_urls``).
    """
    if integration_id not in ctx.integrations:
        raise IntegrationUnavailable(
            f"integration {integration_id!r} ({field}) is not connected to this workflow:"
            " list it in the workflow's integrations (required: true) and connect it"
        )
    client = ctx.client(integration_id)
    if not isinstance(client, httpx.AsyncClient):
        raise IntegrationUnavailable(
            f"integration {integration_id!r} ({field}) does not give an HTTP client;"
            " use the 'http' provider"
        )
    allow_private = ctx.host is not None and ctx.host.allow_private_urls
    try:
        base = str(client.base_url)
        check_url(base, field=f"{integration_id}.base_url", allow_private=allow_private)
        parts = urlsplit(base)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        await anyio.to_thread.run_sync(
            lambda: resolve_checked(parts.hostname or "", port, allow_private=allow_private)
        )
    except BaseException:
        await client.aclose()
        raise
    return Remote(client, integration_id)


@attrs.frozen(kw_only=True)
class Listing:
    """How to read a list of records from a path: where they sit, how pages go."""

    path: str
    params: Mapping[str, Any] = attrs.Factory(dict)
    records_field: str | None = "records"
    pagination: Pagination | None = None
    max_pages: int = 100

    def _records(self, body: Any, what: str) -> list[Any]:
        if isinstance(body, list):
            return body
        if isinstance(body, dict) and self.records_field is not None:
            found, items = get_path(body, self.records_field)
            if found and isinstance(items, list):
                return items
        where = f"a list at '{self.records_field}'" if self.records_field else "a JSON array"
        raise RemoteError(f"{what}: the answer is not {where}")

    async def fetch(self, remote: Remote) -> tuple[list[Any], int]:
        """All records of the listing, following pages; ``(records, pages read)``."""
        records: list[Any] = []
        paging = self.pagination
        cursor: Any = None
        page = paging.start_page if paging else 0
        for pages in range(1, self.max_pages + 1):
            query = dict(self.params)
            if paging is not None and paging.type == "cursor" and cursor is not None:
                query[paging.cursor_param] = cursor
            if paging is not None and paging.type == "page":
                query[paging.page_param] = page
                if paging.size_param:
                    query[paging.size_param] = paging.page_size
            body = await remote.get_json(self.path, query)
            items = self._records(body, f"GET {remote.integration_id}{self.path}")
            records.extend(items)
            if paging is None:
                return records, pages
            if paging.type == "cursor":
                following = (
                    get_path(body, paging.cursor_field)[1] if isinstance(body, dict) else None
                )
                if following in (None, "") or following == cursor:
                    return records, pages
                cursor = following
            else:
                if len(items) < paging.page_size:
                    return records, pages
                page += 1
        raise RemoteError(
            f"GET {remote.integration_id}{self.path}: more than {self.max_pages} pages"
            " (raise max_pages)",
            400,
        )


class Progress:
    """What runs of a step finished, per work item: in memory, and kept durably.

    A step that fails after doing part of its work (some batches written) is
    tried again by the engine, and a step cut by a crash is run again by the
    next engine; both ask :meth:`done` and skip what is finished. The record
    is kept with ``ctx.save_progress`` every ``every`` items or
    ``interval_seconds`` (so a crash repeats at most what came after the last
    save, and those requests carry idempotency keys), and in memory between
    tries. Each save writes the whole record, so with ``growth`` above 0 a save
    also waits for that share of the items done so far (0.1: a tenth): the
    saves then come further apart as the record grows, the bytes written over a
    step stay proportional to its items (not their square), and a crash
    repeats at most that share. At most ``limit`` steps are remembered in
    memory (oldest first out). Work item keys are JSON values or tuples of them.
    """

    def __init__(
        self,
        limit: int = 512,
        *,
        every: int = 1,
        interval_seconds: float = 1.0,
        growth: float = 0.0,
    ) -> None:
        self._limit = limit
        self._every = every
        self._interval = interval_seconds
        self._growth = growth
        self._memo: OrderedDict[tuple[str, str], dict[Any, Any]] = OrderedDict()
        self._unsaved: dict[tuple[str, str], tuple[int, float]] = {}

    def done(self, ctx: StepContext) -> dict[Any, Any]:
        """The record of finished work of this execution's step (by work item), read-only:
        add to it with :meth:`record`."""
        key = (ctx.execution_id, ctx.step_name)
        memo = self._memo.get(key)
        if memo is None:
            memo = self._memo[key] = _decode(ctx.progress)
            while len(self._memo) > self._limit:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(key)
        return memo

    async def record(self, ctx: StepContext, item: Any, outcome: Any) -> None:
        """Note ``item`` as finished with ``outcome``; keep the record durably when due."""
        key = (ctx.execution_id, ctx.step_name)
        memo = self.done(ctx)
        memo[item] = outcome
        count, since = self._unsaved.get(key, (0, anyio.current_time()))
        count += 1
        share = max(1, math.ceil(len(memo) * self._growth))
        if count >= max(self._every, share) or (
            count >= share and anyio.current_time() - since >= self._interval
        ):
            await ctx.save_progress(_encode(memo))
            self._unsaved.pop(key, None)
        else:
            self._unsaved[key] = (count, since)

    def forget(self, ctx: StepContext) -> None:
        """Drop what is remembered in memory for this execution's step (it finished)."""
        key = (ctx.execution_id, ctx.step_name)
        self._memo.pop(key, None)
        self._unsaved.pop(key, None)


def _encode(memo: Mapping[Any, Any]) -> dict[str, Any]:
    return {"done": [[list(k) if isinstance(k, tuple) else k, v] for k, v in memo.items()]}


def _decode(progress: Any) -> dict[Any, Any]:
    if not isinstance(progress, Mapping) or not isinstance(progress.get("done"), list):
        return {}
    return {
        tuple(k) if isinstance(k, list) else k: v
        for k, v in (pair for pair in progress["done"] if isinstance(pair, list) and len(pair) == 2)
    }
