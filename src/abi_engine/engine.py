"""The composition root: one :class:`Engine` owns plugins, storage and services."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, ExitStack
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskGroup

from abi_engine.audit import AuditLog
from abi_engine.auth import TokenService
from abi_engine.errors import EngineNotRunning
from abi_engine.events import EventPolicy
from abi_engine.executions import ExecutionService
from abi_engine.host import Host
from abi_engine.integrations import IntegrationService
from abi_engine.limits import Limits
from abi_engine.notification_templates import NotificationTemplateService
from abi_engine.plugins import Registry, collect, collect_named, make_plugin_manager
from abi_engine.retention import Pruner
from abi_engine.runtime.metrics import RuntimeMetrics
from abi_engine.runtime.runner import Runtime
from abi_engine.runtime.scheduler import Scheduler
from abi_engine.runtime.settings import RetentionSettings, RuntimeSettings, WebhookSettings
from abi_engine.schedules import ScheduleService
from abi_engine.storage._urls import redact_url
from abi_engine.storage.aio import AsyncStore
from abi_engine.storage.base import Store
from abi_engine.triggers import TriggerService
from abi_engine.types import WorkflowType
from abi_engine.webhooks import WebhookService
from abi_engine.workflows import WorkflowService

if TYPE_CHECKING:
    from abi_engine.runtime.prometheus import MetricsExporter

__all__ = ["Engine"]

T = TypeVar("T")


class Engine:
    """An abi-engine instance: workflows, executions, schedules and webhooks on one store.

    :param db: a SQLite path (created when missing), ``":memory:"``, a database
        URL handled by a storage plugin, or a ready :class:`Store`.
    :param plugins: extra plugin objects (modules or class instances).
    :param load_entry_points: load plugins of the ``abi_engine`` entry-point group.
    :param disable_plugins: entry-point names not to load.
    :param durability: ``"normal"`` (survives a killed process) or ``"full"``
        (survives power loss, slower).
    :param allow_private_urls: let webhook, callback and HTTP-step URLs reach
        loopback and private addresses (off by default).
    :param runtime: tuning of the execution runtime (workers, queue, leases).
    :param webhook_settings: tuning of webhook and callback delivery (retry
        schedule, timeout, concurrency).
    :param metrics: count what the runtime does for :meth:`render_metrics` (Prometheus;
        on by default, ``False`` turns the counting off).
    :param tracer_provider: an OpenTelemetry ``TracerProvider`` (the ``otel``
        extra): each execution run and step becomes a span of the execution's
        trace (docs/operations.md#traces). ``None``: no tracing.
    :param limits: what one user may hold through the API (schedules,
        webhooks, tokens, queued executions), integrations engine-wide, and
        the largest step result, saved progress and list page
        (:class:`~abi_engine.limits.Limits`; its defaults when ``None``).
    :param retention: how long finished executions and audit entries are kept
        (:class:`~abi_engine.runtime.settings.RetentionSettings`).

    Management calls work as soon as the engine is built; ``async with
    engine:`` starts the background work (execution workers, scheduler,
    webhook delivery) and stops it cleanly.
    """

    def __init__(
        self,
        db: str | Path | Store = "abi-engine.db",
        *,
        plugins: Iterable[object] = (),
        load_entry_points: bool = True,
        disable_plugins: Iterable[str] = (),
        durability: Literal["normal", "full"] = "normal",
        allow_private_urls: bool = False,
        runtime: RuntimeSettings | None = None,
        webhook_settings: WebhookSettings | None = None,
        limits: Limits | None = None,
        retention: RetentionSettings | None = None,
        metrics: bool = True,
        tracer_provider: Any = None,
    ) -> None:
        #: The runtime's counters (:class:`~abi_engine.runtime.metrics.RuntimeMetrics`),
        #: ``None`` when the engine was built with ``metrics=False``.
        self.metrics: RuntimeMetrics | None = RuntimeMetrics() if metrics else None
        self._exporter: MetricsExporter | None = None
        self._tracer_provider = tracer_provider
        self.pm = make_plugin_manager(
            plugins=plugins, load_entry_points=load_entry_points, disable=disable_plugins
        )
        self.registry: Registry = collect(self.pm)
        self.allow_private_urls = allow_private_urls
        self.store: Store
        self.db_url: str
        self.store, self.db_url = self._open_store(db, durability)
        #: The engine's limits (:class:`~abi_engine.limits.Limits`).
        self.limits: Limits = limits if limits is not None else Limits()
        #: How long finished executions and audit entries are kept.
        self.retention: RetentionSettings = retention or RetentionSettings()
        self._build_services(runtime, webhook_settings)
        #: What plugins may use of this engine (:class:`~abi_engine.Host`): given to
        #: each workflow type (``bind``) and to each step (``ctx.host``).
        self.host = self._build_host()
        self.runtime.host = self.host
        try:  # a type collecting a hook's registrations may refuse a duplicate name
            for workflow_type in self.registry.workflow_types.values():
                workflow_type.bind(self.host)
        except BaseException:
            self.runtime.close()
            self.store.close()
            raise
        self._stack: AsyncExitStack | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None
        self._blocking: ExitStack | None = None
        self._blocking_lock = threading.Lock()
        self._closed = False

    def _open_store(self, db: str | Path | Store, durability: str) -> tuple[Store, str]:
        """The store ``db`` names (through the ``abi_storage`` hook), and its URL."""
        if not isinstance(db, str | Path):
            return db, getattr(db, "path", "<store>")
        url = str(db)
        store = self.pm.hook.abi_storage(url=url, options={"durability": durability})
        if store is None:
            raise ValueError(f"No storage plugin handles {url!r}")
        return store, url

    def _build_services(
        self, runtime: RuntimeSettings | None, webhook_settings: WebhookSettings | None
    ) -> None:
        """The services and background parts, each given its collaborators explicitly."""
        self.tokens = TokenService(self.store, max_tokens_per_user=self.limits.max_tokens_per_user)
        #: The audit log (:class:`~abi_engine.audit.AuditLog`).
        self.audit = AuditLog(self.store, retention_days=self.retention.audit_retention_days)
        self.integrations = IntegrationService(
            self.store, self.registry.providers, self._allow_private
        )
        self.notification_templates = NotificationTemplateService(
            self.store,
            registered=self.registry.notification_templates,
            origins=self.registry.origins,
            workflow_types=self.registry.workflow_types,
        )
        #: Which events this process builds and who hears them (:class:`~abi_engine.events.EventPolicy`).
        self.events = EventPolicy(self.pm.hook.abi_event.get_hookimpls)
        self.workflows = WorkflowService(
            self.store,
            self.registry.workflow_types,
            self.integrations,
            self.events,
            self.notification_templates,
            default_retention_days=self.retention.execution_retention_days,
        )
        self._build_runtime(runtime, webhook_settings)
        #: Prunes executions and audit entries past retention (:class:`~abi_engine.retention.Pruner`).
        self.pruner = Pruner(self.store, self.retention, self.audit)

    def _build_runtime(
        self, runtime: RuntimeSettings | None, webhook_settings: WebhookSettings | None
    ) -> None:
        """The runtime, scheduler and delivery, and the services that hand them work."""
        self.runtime = Runtime(
            self.store,
            runtime,
            events=self.events,
            workflow_types=self.registry.workflow_types,
            limits=self.limits,
            metrics=self.metrics,
        )
        self.runtime.committer.hooked = self.events.has_hooks
        if self._tracer_provider is not None:
            from abi_engine.runtime.tracing import Tracing

            self.runtime.tracing = Tracing(self._tracer_provider)
        self.executions = ExecutionService(
            self.store,
            self.runtime,
            workflows=self.workflows,
            integrations=self.integrations,
            templates=self.notification_templates,
            allow_private_urls=self._allow_private,
        )
        #: The calls :meth:`call` answers in the calling thread, with their twins there
        #: (found by a look-up: ``getattr`` of a missing ``in_thread`` costs more).
        self._twins: dict[Any, Callable[..., Any]] = {
            self.executions.execute: self.executions.execute_in_thread,
            self.executions.wait: self.executions.wait_in_thread,
        }
        #: The loop firing due schedules (:class:`~abi_engine.runtime.scheduler.Scheduler`).
        self.scheduler = Scheduler(
            AsyncStore(self.store),
            self.runtime,
            workflows=self.workflows,
            check_templates=self.executions.check_templates,
            events=self.events,
        )
        self.schedules = ScheduleService(
            self.store,
            self.runtime.committer,
            executions=self.executions,
            templates=self.notification_templates,
            events=self.events,
            wake=self.scheduler.wake,
        )
        # Webhooks: makes the event policy keep the event types of subscriptions.
        self.webhooks = WebhookService(
            self.store,
            webhook_settings,
            events=self.events,
            allow_private_urls=self._allow_private,
            in_flight=lambda: self.runtime.in_flight,
            metrics=self.metrics,
        )
        #: Signed inbound triggers (:class:`~abi_engine.triggers.TriggerService`).
        self.triggers = TriggerService(self.store, executions=self.executions)

    def _build_host(self) -> Host:
        return Host(
            allow_private_urls=self._allow_private,
            providers=self.registry.providers,
            collect=partial(collect_named, self.pm, self.registry),
            registered_templates=self.registry.notification_templates,
            executions=self.executions,
            templates=self.notification_templates,
            legacy_engine=self,
            trace_headers=self._trace_headers,
            children=self.executions,
        )

    def _trace_headers(self) -> dict[str, str]:
        tracing = self.runtime.tracing
        return {} if tracing is None else tracing.outgoing()

    # -- registry views ---------------------------------------------------------------

    @property
    def workflow_types(self) -> Mapping[str, WorkflowType]:
        """The registered workflow types by name."""
        return self.registry.workflow_types

    def _allow_private(self) -> bool:
        return self.allow_private_urls

    async def render_metrics(self) -> tuple[bytes, str]:
        """This process's metrics in the Prometheus text format, and its media type.

        Needs ``prometheus-client`` (the ``asgi`` extra). Counters are this
        engine's own; the queue gauges are read from the database now.

        :raises RuntimeError: the engine was built with ``metrics=False``.
        """
        if self.metrics is None:
            raise RuntimeError("This engine was built with metrics=False")
        from abi_engine.runtime.prometheus import CONTENT_TYPE, MetricsExporter

        if self._exporter is None:
            self._exporter = MetricsExporter(self.metrics, AsyncStore(self.store))
        return await self._exporter.render(), CONTENT_TYPE

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._stack is not None

    async def __aenter__(self) -> Engine:
        if self._stack is not None:
            raise RuntimeError("Engine is already running")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            # Unwound in reverse: stop taking work, let steps finish, cancel the
            # loops (the committer flushes), then hand back unfinished work.
            stack.push_async_callback(self.runtime.release)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(_cancel_after, task_group, self.runtime.stop)
            await task_group.start(self.runtime.run)
            await task_group.start(self.scheduler.run)
            await task_group.start(self.webhooks.run)  # webhook and callback delivery
            await task_group.start(self.pruner.run)  # retention
            await task_group.start(self.schedules.backfills.run)  # schedule backfills
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._token = None
        self._loop_thread = None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    # -- synchronous bridge ---------------------------------------------------------------

    def start_blocking(self) -> None:
        """Run the engine in a background thread of its own (for synchronous hosts).

        Idempotent. :meth:`call` then runs coroutines on that thread's loop;
        :meth:`stop_blocking` (or :meth:`close`) stops it cleanly.
        """
        with self._blocking_lock:
            if self._closed:
                raise _closed()
            if self._blocking is not None or self._stack is not None:
                return
            stack = ExitStack()
            portal = stack.enter_context(anyio.from_thread.start_blocking_portal())
            stack.enter_context(portal.wrap_async_context_manager(self))
            self._blocking = stack

    def stop_blocking(self) -> None:
        """Stop the background thread started by :meth:`start_blocking`."""
        with self._blocking_lock:  # held while it stops: a caller's ``call`` meanwhile
            stack, self._blocking = self._blocking, None  # starts it again only after
            if stack is not None:
                stack.close()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``await fn(*args, **kwargs)`` on the engine's event loop from a synchronous
        caller, e.g. ``engine.call(engine.executions.execute, wf_id, params, wait=False)``.

        Works from any thread other than the loop's own, whether the engine runs
        under a host's ``async with engine:`` or under :meth:`start_blocking`.
        The engine is started in the background when it is not running.
        """
        if self._token is None:
            self.start_blocking()
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError(
                "Engine.call() was called from the engine's own event loop; await the coroutine"
            )
        token = self._token
        if token is None:  # stopped since (by another thread)
            raise _stopped()
        loop = token.native_token
        if isinstance(loop, asyncio.AbstractEventLoop):
            # The direct hand-off (what anyio.from_thread.run does, minus its per-call
            # context copy and task bookkeeping): one wake-up of the loop, one back.
            if loop.is_closed():
                raise _stopped()
            answered = self._answer_in_thread(fn, args, kwargs)
            if answered is not None:
                return answered  # type: ignore[no-any-return]
            coro = _awaited(fn, args, kwargs)
            try:
                future = asyncio.run_coroutine_threadsafe(coro, loop)
            except RuntimeError:  # the loop closed meanwhile
                coro.close()
                raise _stopped() from None
            return self._result(future, loop, coro)
        if kwargs:
            fn = partial(fn, **kwargs)
        return anyio.from_thread.run(fn, *args, token=token)  # type: ignore[arg-type]

    def _result(
        self, future: concurrent.futures.Future[T], loop: asyncio.AbstractEventLoop, coro: Any
    ) -> T:
        """The answer of a coroutine handed to ``loop``; ``EngineNotRunning`` once the
        engine stopped without answering: its loop stopped (it was closing, nothing will
        run the coroutine), or cancelled the coroutine as it stopped."""
        while True:
            try:
                return future.result(timeout=_STOPPED_CHECK_SECONDS)
            except concurrent.futures.TimeoutError:
                if future.done():  # the coroutine's own TimeoutError
                    raise
                if self._token is not None or loop.is_running():
                    continue
                future.cancel()
                if inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                    coro.close()  # never run, never will be
                raise _stopped() from None
            except concurrent.futures.CancelledError:
                if self._token is not None:
                    raise
                raise _stopped() from None

    def _answer_in_thread(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The answer of ``fn(*args, **kwargs)`` found in the calling thread, without the
        loop (``None``: ask the loop): ``executions.execute`` commits the new execution
        here (and waits for it here with ``wait=True``), ``executions.wait`` of an ended
        one reads it here (:mod:`abi_engine.execution_threads`); a function with an
        ``in_thread`` attribute (its synchronous twin, answering ``None`` when it needs
        the loop) is answered by calling that."""
        if isinstance(fn, partial):
            args, kwargs, fn = fn.args + args, {**fn.keywords, **kwargs}, fn.func
        try:
            twin = self._twins.get(fn)
        except TypeError:  # unhashable
            twin = None
        if twin is None:  # a coroutine function's synchronous twin
            twin = getattr(fn, "in_thread", None)
        if twin is not None:
            return twin(*args, **kwargs)
        executions = self.executions
        if getattr(fn, "__self__", None) is not executions:
            return None
        method = getattr(fn, "__name__", None)
        if method == "execute":
            return executions.execute_in_thread(*args, **kwargs)
        if method == "wait":
            return executions.wait_in_thread(*args, **kwargs)
        return None

    def close(self) -> None:
        """Close the store. The engine cannot be used afterwards (a call raises
        :class:`~abi_engine.errors.EngineNotRunning`)."""
        with self._blocking_lock:  # a call starting the engine meanwhile sees it closed
            first, self._closed = not self._closed, True
        self.stop_blocking()
        if first:
            self.runtime.close()
            self.store.close()

    def __repr__(self) -> str:
        shown = redact_url(self.db_url) if "://" in self.db_url else self.db_url
        return f"<Engine db={shown!r} types={sorted(self.workflow_types)}>"


#: How often a caller waiting for the loop's answer checks that the loop still runs.
_STOPPED_CHECK_SECONDS = 1.0


def _stopped() -> EngineNotRunning:
    return EngineNotRunning(
        "The engine stopped before answering this call", {"engine": "not_running"}
    )


def _closed() -> EngineNotRunning:
    return EngineNotRunning("The engine is closed", {"engine": "closed"})


async def _awaited(fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> T:
    return await fn(*args, **kwargs)


async def _cancel_after(task_group: TaskGroup, stop: Callable[[], Awaitable[None]]) -> None:
    await stop()
    task_group.cancel_scope.cancel()
