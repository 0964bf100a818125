"""The delivery worker: outbox -> deliveries -> signed POSTs, with retries.

One worker runs per started engine (``engine.webhooks.run``). Each round it

1. fans out the outbox: events after the durable cursor become deliveries
   (one per event and target) in the transaction that advances the cursor;
2. claims due deliveries under a lease, as many as it has free slots;
3. posts each one (its own task), then records the attempt and either
   finishes the delivery or schedules the next attempt.

It sleeps until woken by this process's events, until the next retry is due,
or at most ``poll_interval``. Leases make a delivery one process's at a time;
a process that dies leaves leases that expire, and a stopping one releases
its own, so pending deliveries survive restarts. Each claim carries a fresh
token: an attempt whose lease was taken over meanwhile is still recorded
(under its own number) but no longer moves the delivery on.

No failing store call stops the worker (a dropped connection, a database
restart, ``database is locked``): each kind of store work logs one line when
it starts failing and one when it works again, backs off exponentially (up to
``_BACKOFF_MAX`` seconds) and carries on. An attempt that could not be
recorded is kept in memory and recorded again until it is; a retried record
recognises its own attempt by its claim token, so it is never counted twice.
"""

from __future__ import annotations

import importlib.util
import logging
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs
import httpx
from anyio.abc import TaskGroup, TaskStatus

from abi_engine.errors import InvalidRequest
from abi_engine.events import CALLBACK_EVENTS
from abi_engine.execution_views import event_data
from abi_engine.ids import format_time, utcnow
from abi_engine.models_webhooks import DeliveryStatus
from abi_engine.netguard import URLRefused, check_url, pinned_address
from abi_engine.runtime.metrics import RuntimeMetrics
from abi_engine.runtime.settings import WebhookSettings
from abi_engine.storage._codec import dumps
from abi_engine.storage.aio import call_store
from abi_engine.storage.records import ExecutionRecord, StepRecord
from abi_engine.storage.records_webhooks import AttemptOutcome, DeliveryJob
from abi_engine.webhook_signing import signature_header

if TYPE_CHECKING:
    from abi_engine.storage.base import Store

__all__ = ["DeliveryWorker"]

log = logging.getLogger("abi_engine.webhooks")

T = TypeVar("T")

if importlib.util.find_spec("sniffio") is None:
    # httpcore imports sniffio on every request and falls back to asyncio when it
    # is missing; anyio 4 no longer installs it, and each failed import scans
    # sys.path (milliseconds per request). Caching the miss keeps that fallback.
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

MAX_ERROR = 500
_PRUNE_EVERY = 3600.0
_MIN_ROUND = 0.01  # seconds between the starts of two rounds at the least
_RECORD_GATHER = 0.005  # seconds attempts ending together wait to be recorded together
_BACKOFF_FIRST = 0.05  # seconds before retrying a store call that failed once
_BACKOFF_MAX = 5.0  # ... doubling with each failure in a row, up to this
_STOP_PATIENCE = 3.0  # seconds a stopping worker keeps trying to record and hand back
_USER_AGENT = "abi-engine-webhooks"


def event_body(job: DeliveryJob) -> bytes:
    """The request body: ``{"type", "timestamp", "data"}`` as compact UTF-8 JSON."""
    return (
        f'{{"type":{dumps(job.event_type)},"timestamp":'
        f'{dumps(format_time(job.event_timestamp))},"data":{job.data_json}}}'
    ).encode()


class LoadMeter:
    """The share of wall-clock time this process spent on the CPU, over the last window.

    Each call closes the current window once it is ``window`` seconds long
    (all threads of the process count: SQLite, DNS lookups...). Until a first
    window closes it reads ``initial`` (1: busy, so that webhook work yields
    to a burst of executions from its very start).
    """

    def __init__(self, window: float = 0.1, initial: float = 1.0) -> None:
        self.window = window
        self._mark = (time.perf_counter(), time.process_time())
        self._share = initial

    def cpu_share(self) -> float:
        """CPU seconds per wall second in the last full window (``initial`` until there is one)."""
        wall, cpu = time.perf_counter(), time.process_time()
        since_wall, since_cpu = self._mark
        if wall - since_wall >= self.window:
            self._share = (cpu - since_cpu) / (wall - since_wall)
            self._mark = (wall, cpu)
        return self._share


class _Refused(Exception):
    """The target URL may not be reached (outbound URL rules)."""


def _describe(exc: BaseException) -> str:
    """An exception on one line (a driver's message may span several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


class Streaks:
    """Failures in a row of each kind of store work: logged once per streak, backed off.

    :meth:`failed` logs the first failure of a streak (one line; the
    traceback at DEBUG level) and returns how long to wait before trying
    again: ``first`` seconds, doubled with each further failure, at most
    ``most``, varied by up to -25 % so that processes do not retry in step.
    :meth:`worked` ends the streak (one line saying so).
    """

    def __init__(self, first: float = _BACKOFF_FIRST, most: float = _BACKOFF_MAX) -> None:
        self.first = first
        self.most = most
        self.failures: dict[str, int] = {}

    def failed(self, what: str, exc: BaseException) -> float:
        """Note a failure of ``what``; return the seconds to wait before the next try."""
        count = self.failures.get(what, 0) + 1
        self.failures[what] = count
        if count == 1:
            log.warning(
                "webhook delivery: %s failed (%s); retrying with backoff until it works",
                what,
                _describe(exc),
            )
        log.debug("webhook delivery: %s failed (%d in a row)", what, count, exc_info=exc)
        delay = min(self.most, self.first * 2.0 ** min(count - 1, 30))
        return delay * random.uniform(0.75, 1.0)

    def worked(self, what: str) -> None:
        """``what`` succeeded: end its streak of failures, if any."""
        count = self.failures.pop(what, 0)
        if count:
            log.warning("webhook delivery: %s works again after %d failures", what, count)


class Subscriptions(Protocol):
    """What the delivery worker needs of the webhook service."""

    node_id: str

    def refresh_subscriptions(self) -> set[str]:
        """Re-read the event types enabled subscriptions ask for."""

    def _set_wake(self, event: anyio.Event | None) -> None:
        """Where :meth:`WebhookService.notify` wakes the worker (``None``: stopped)."""


class DeliveryWorker:
    """Fans out the outbox and delivers; one per running engine."""

    def __init__(
        self,
        service: Subscriptions,
        settings: WebhookSettings,
        *,
        store: Store,
        in_flight: Callable[[], int],
        allow_private_urls: Callable[[], bool],
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        """``service``: the webhook service (subscriptions, node id, wake-up);
        ``in_flight``: how many executions this process runs now;
        ``allow_private_urls``: the engine's outbound setting, read at each post;
        ``metrics``: where attempts are counted (``None``: nowhere)."""
        self._metrics = metrics
        self._service = service
        self._in_flight = in_flight
        self._allow_private_urls = allow_private_urls
        self._store = store
        self.settings = settings
        self._owner = service.node_id
        self._inflight: set[str] = set()
        self._claimed: list[DeliveryJob] = []  # claimed, not started yet (their data to build)
        self._outcomes: list[AttemptOutcome] = []
        self._recording = False
        self._streaks = Streaks()
        self._client: httpx.AsyncClient | None = None
        self._tg: TaskGroup | None = None
        self._wake = anyio.Event()
        self._load = LoadMeter()

    # -- the loop -------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        limits = httpx.Limits(
            max_connections=s.concurrency, max_keepalive_connections=s.concurrency
        )
        # TCP_NODELAY: headers and body go out in separate writes; without it Nagle's
        # algorithm holds the body until the receiver's delayed ACK (~40 ms).
        transport = httpx.AsyncHTTPTransport(
            limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        )
        client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            timeout=httpx.Timeout(s.timeout_seconds),
            trust_env=False,  # no proxies from the environment: they would bypass the URL rules
            headers={"user-agent": _USER_AGENT},
        )
        try:
            async with client, anyio.create_task_group() as tg:
                self._client, self._tg = client, tg
                task_status.started()
                await self._loop()
        finally:
            self._service._set_wake(None)
            # Shielded: it completes even while the engine is being cancelled.
            with anyio.CancelScope(shield=True):
                await self._let_go()

    async def _let_go(self) -> None:
        """Record the attempts made, then hand the leases back (tried for ``_STOP_PATIENCE`` s).

        What is left undone is not lost: a delivery whose attempt went
        unrecorded is sent again once its lease expires.
        """
        what = "handing the deliveries back at stop"
        with anyio.move_on_after(_STOP_PATIENCE):
            while True:
                try:
                    await self._record_now(stopping=True)
                    await self._call(self._store.release_deliveries, self._owner, stopping=True)
                except Exception as exc:
                    await anyio.sleep(self._streaks.failed(what, exc))
                else:
                    self._streaks.worked(what)
                    return
        log.warning(
            "webhook delivery: gave up %s; %d attempts went unrecorded, the leases of %s"
            " expire in %g s at the most",
            what,
            len(self._outcomes),
            self._owner,
            self.settings.lease,
        )

    async def _loop(self) -> None:
        s = self.settings
        next_refresh = anyio.current_time() + s.subscription_refresh_seconds
        next_prune = anyio.current_time()
        while True:
            # Notifications from here on wake the sleep below (none is lost).
            self._wake = anyio.Event()
            self._service._set_wake(self._wake)
            now = anyio.current_time()
            if s.retention_days is not None and now >= next_prune:
                retry = await self._guarded("pruning old deliveries", self._prune)
                next_prune = now + (_PRUNE_EVERY if retry is None else retry)
            if now >= next_refresh:
                retry = await self._guarded("refreshing the subscriptions", self._refresh)
                next_refresh = now + (s.subscription_refresh_seconds if retry is None else retry)
            retry = await self._guarded("the delivery round", self._pump)
            if retry is None:
                retry = await self._guarded("reading the next due time", self._sleep)
            if retry is not None:  # the store fails: back off (events do not wake this)
                await anyio.sleep(retry)
            # Under a stream of events, gather them for a while: fewer, larger rounds;
            # while executions keep this process busy, far fewer.
            gap = s.busy_interval if self._busy() else _MIN_ROUND
            await anyio.sleep(max(0.0, now + gap - anyio.current_time()))

    async def _guarded(self, what: str, work: Callable[[], Awaitable[None]]) -> float | None:
        """Run ``work``; ``None`` when it worked, else the seconds to back off (logged)."""
        try:
            await work()
        except Exception as exc:
            return self._streaks.failed(what, exc)
        self._streaks.worked(what)
        return None

    async def _call(self, fn: Callable[..., T], *args: Any, stopping: bool = False) -> T:
        """A store call (see :func:`~abi_engine.storage.aio.call_store`); ``stopping``: one that
        a stopping worker stops waiting for when its patience runs out (a blocking store's
        call goes on in its thread, unawaited)."""
        if stopping and self._store.blocking:
            return await anyio.to_thread.run_sync(partial(fn, *args), abandon_on_cancel=True)
        return await call_store(self._store, fn, *args)

    async def _refresh(self) -> None:
        await call_store(self._store, self._service.refresh_subscriptions)

    async def _prune(self) -> None:
        assert self.settings.retention_days is not None
        before = utcnow() - timedelta(days=self.settings.retention_days)
        await call_store(self._store, self._store.prune_deliveries, before)

    async def _pump(self) -> None:
        s = self.settings
        store = self._store
        busy = self._busy()
        if busy and await call_store(store, store.deliveries_due, utcnow()):
            pass  # busy: no fan-out while deliveries wait; the outbox keeps the events
        elif await call_store(store, store.fan_out_pending):
            if busy:  # one outbox row (one commit's events) at a time
                await call_store(store, store.fan_out, utcnow(), 1, CALLBACK_EVENTS)
            else:
                while (
                    await call_store(store, store.fan_out, utcnow(), s.batch_size, CALLBACK_EVENTS)
                    >= s.batch_size
                ):
                    await anyio.lowlevel.checkpoint()  # let executions run between batches
        if not self._claimed:
            free = self._capacity() - len(self._inflight)
            now = utcnow()
            if free <= 0 or not await call_store(store, store.deliveries_due, now):
                return
            lease_until = now + timedelta(seconds=s.lease)
            self._claimed = await call_store(
                store, store.claim_deliveries, self._owner, now, lease_until, free
            )
        # Kept until started: if building their data fails, the next round tries again.
        if any(job.data_json is None for job in self._claimed):
            self._claimed = await call_store(store, self._with_data, self._claimed)
        jobs, self._claimed = self._claimed, []
        assert self._tg is not None
        for job in jobs:
            self._inflight.add(job.id)
            self._tg.start_soon(self._deliver, job)

    def _with_data(self, jobs: list[DeliveryJob]) -> list[DeliveryJob]:
        """Build the data of execution events kept by reference, from the stored execution."""
        loaded: dict[str, tuple[ExecutionRecord, list[StepRecord]] | None] = {}
        ready = []
        for job in jobs:
            execution_id = job.ref_execution_id
            if job.data_json is None and execution_id is not None:
                if execution_id not in loaded:
                    record = self._store.get_execution(execution_id)
                    steps = self._store.get_steps(execution_id) if record is not None else []
                    loaded[execution_id] = (record, steps) if record is not None else None
                found = loaded[execution_id]
                data = None
                if found is not None:
                    data = event_data(job.event_type, found[0], found[1], job.ref_step_index)
                if data is None:  # what it points to is gone: say which execution it was
                    data = {"execution_id": execution_id}
                trace = found[0].trace_context if found is not None else None
                job = attrs.evolve(job, data_json=dumps(data), traceparent=job.traceparent or trace)
            ready.append(job)
        return ready

    def _busy(self) -> bool:
        """Whether executions keep this process busy (webhook work then yields to them)."""
        s = self.settings
        if self._in_flight() < s.busy_threshold:
            return False
        return s.busy_cpu_share <= 0 or self._load.cpu_share() >= s.busy_cpu_share

    def _capacity(self) -> int:
        """Attempts allowed in flight now: fewer while this process is busy."""
        return self.settings.busy_concurrency if self._busy() else self.settings.concurrency

    async def _sleep(self) -> None:
        """Wait for a wake-up, the next due retry, or ``poll_interval``."""
        timeout = self.settings.poll_interval
        if len(self._inflight) < self._capacity():
            now = utcnow()
            due = await call_store(self._store, self._store.next_delivery_due, now)
            if due is not None:
                timeout = min(timeout, max(0.0, (due - now).total_seconds()))
        with anyio.move_on_after(timeout):
            await self._wake.wait()

    # -- one attempt ------------------------------------------------------------------------

    async def _deliver(self, job: DeliveryJob) -> None:
        started = utcnow()
        clock = time.perf_counter()
        status_code: int | None = None
        body: str | None = None
        error: str | None = None
        try:
            if job.url is None:
                error = "nothing to deliver: the event or the target is gone"
            else:
                status_code, body = await self._post(job)
                if not 200 <= status_code < 300:
                    error = f"HTTP {status_code}"
        except _Refused as exc:
            error = f"URL refused: {exc}"
        except (httpx.TimeoutException, TimeoutError):
            error = f"timed out after {self.settings.timeout_seconds:g} s"
        except (httpx.HTTPError, OSError) as exc:
            error = _describe(exc)
        except Exception as exc:  # anything else: recorded as a failed attempt and retried
            error = _describe(exc)
            # One line per attempt (a bad target fails every attempt alike); the
            # traceback only at DEBUG level.
            log.warning("delivery %s: attempt failed unexpectedly: %s", job.id, error)
            log.debug("delivery %s: the failure's traceback", job.id, exc_info=exc)
        outcome = self._outcome(job, started, clock, status_code, body, error)
        if self._metrics is not None:
            self._count(job, outcome)
        try:
            await self._record(outcome)
        finally:
            self._inflight.discard(job.id)
            self._wake.set()

    def _count(self, job: DeliveryJob, outcome: AttemptOutcome) -> None:
        assert self._metrics is not None
        state = outcome.delivery_status
        label = "retrying" if state is DeliveryStatus.PENDING else state.value
        lag = (utcnow() - job.event_timestamp).total_seconds()
        self._metrics.delivery(label, lag)

    async def _record(self, outcome: AttemptOutcome) -> None:
        """Record an attempt; attempts ending close together share one transaction.

        The first one to end waits a moment (``_RECORD_GATHER``) and writes
        every attempt that ended meanwhile, again and again (backing off)
        while the store fails. Until written, a delivery stays leased to this
        process, so no one sends it again; one whose record is lost (a crash),
        or late past its lease, is sent again once its lease expires (at least
        once).
        """
        self._outcomes.append(outcome)
        if self._recording:
            return
        self._recording = True
        try:
            await anyio.sleep(_RECORD_GATHER)
            while self._outcomes:
                try:
                    await self._record_now()
                except Exception as exc:
                    await anyio.sleep(self._streaks.failed("recording attempts", exc))
                else:
                    self._streaks.worked("recording attempts")
        finally:
            self._recording = False

    async def _record_now(self, *, stopping: bool = False) -> None:
        """Write the attempts waiting to be recorded; on failure they stay, in order.

        Attempts may end while a batch is being written (in a thread, for a
        blocking store); the list is swapped on the loop, so none is missed.
        """
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []
            try:
                await self._call(self._store.record_attempts, self._owner, batch, stopping=stopping)
            except BaseException:
                # Kept for the next try (also when cancelled: the write may not have
                # happened; a write that did is recognised by its claims and not repeated).
                self._outcomes[:0] = batch
                raise

    def _outcome(
        self,
        job: DeliveryJob,
        started: Any,
        clock: float,
        status_code: int | None,
        body: str | None,
        error: str | None,
    ) -> AttemptOutcome:
        ok = error is None
        tries = job.tries + 1
        next_at = None
        if ok:
            state = DeliveryStatus.SUCCEEDED
        else:
            delay = self.settings.delay_after(tries)
            if delay is None:
                state = DeliveryStatus.FAILED
            else:
                state = DeliveryStatus.PENDING
                next_at = utcnow() + timedelta(seconds=delay)
        return AttemptOutcome(
            delivery_id=job.id,
            claim=job.claim,
            attempt=job.attempt_count + 1,
            status=DeliveryStatus.SUCCEEDED if ok else DeliveryStatus.FAILED,
            status_code=status_code,
            duration_ms=max(0, round((time.perf_counter() - clock) * 1000)),
            error=None if error is None else error[:MAX_ERROR],
            response_body=body,
            created_at=started,
            delivery_status=state,
            next_attempt_at=next_at,
        )

    async def _post(self, job: DeliveryJob) -> tuple[int, str]:
        assert self._client is not None
        assert job.url is not None
        payload = event_body(job)
        timestamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "webhook-id": job.event_id,
            "webhook-timestamp": timestamp,
        }
        if job.traceparent:  # the execution's trace context (with tracing on)
            headers["traceparent"] = job.traceparent
        if job.secrets:
            headers["webhook-signature"] = signature_header(
                job.secrets, job.event_id, timestamp, payload
            )
        url, extensions = await self._pinned(job.url, headers)
        limit = self.settings.response_body_limit
        with anyio.fail_after(self.settings.timeout_seconds):
            async with self._client.stream(
                "POST", url, content=payload, headers=headers, extensions=extensions
            ) as response:
                received = bytearray()
                async for chunk in response.aiter_bytes():
                    received += chunk
                    if len(received) >= limit:
                        break
        return response.status_code, received[:limit].decode("utf-8", "replace")

    async def _pinned(self, url: str, headers: dict[str, str]) -> tuple[httpx.URL, dict[str, Any]]:
        """The URL to connect to: checked again, and pinned to the addresses checked.

        Unless private URLs are allowed, the host is resolved here and the
        request goes to the first address that passed, with the original
        ``Host`` header (and TLS server name), so a DNS answer that changes
        after the check cannot point the request elsewhere.
        """
        allow = self._allow_private_urls()
        try:
            check_url(url, field="url", allow_private=allow)
        except InvalidRequest as exc:
            raise _Refused(exc.message) from None
        target = httpx.URL(url)
        if allow:
            return target, {}
        try:
            host, address = await pinned_address(target)
        except URLRefused as exc:
            raise _Refused(str(exc).removeprefix("URL refused: ")) from None
        headers["host"] = target.netloc.decode("ascii")
        extensions = {"sni_hostname": host} if target.scheme == "https" else {}
        return target.copy_with(host=address), extensions
