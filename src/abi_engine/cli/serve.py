"""``abi-engine serve``: the engine and its REST API under uvicorn, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from abi_engine.cli import processes
from abi_engine.cli._common import (
    BACKLOG,
    DEFAULT_HOST,
    DEFAULT_PORT,
    ENV_ALLOW_PRIVATE_URLS,
    ENV_FORWARDED_ALLOW_IPS,
    EXIT_FAILURE,
    EXIT_OK,
    LOG_LEVELS,
    CliError,
    _lease,
    _non_negative,
    _open_engine,
    _port,
    _positive_int,
    _proxies,
    _reason,
    _redact,
    _truthy,
)
from abi_engine.cli.tracing import otlp_endpoint, tracer_provider
from abi_engine.logs import configure_logging

if TYPE_CHECKING:
    import uvicorn

    from abi_engine.engine import Engine

Prepare = Callable[["Engine", str], Awaitable[None]]


def _server_parent() -> argparse.ArgumentParser:
    """The options every serving command shares (serve, demo)."""
    parent = argparse.ArgumentParser(add_help=False)
    _network_options(parent.add_argument)
    _engine_options(parent.add_argument)
    _observability_options(parent.add_argument)
    return parent


def _network_options(add: Callable[..., Any]) -> None:
    add("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})")
    add("--port", type=_port, default=DEFAULT_PORT, help="port (default: 8000; 0 picks one)")
    add(
        "--allow-private-urls",
        action="store_true",
        default=_truthy(os.environ.get(ENV_ALLOW_PRIVATE_URLS)),
        help="let webhook and callback URLs point at loopback and private addresses"
        f" (or {ENV_ALLOW_PRIVATE_URLS}=1)",
    )
    add(
        "--forwarded-allow-ips",
        type=_proxies,
        default=os.environ.get(ENV_FORWARDED_ALLOW_IPS) or "",
        metavar="IPS",
        help="comma-separated addresses or networks of the reverse proxies whose"
        " X-Forwarded-For and X-Forwarded-Proto headers are trusted ('*': any peer);"
        " the client address then comes from X-Forwarded-For (rate limits of requests"
        " without a token are kept per client address). Default: none, every peer's"
        f" own address counts, 127.0.0.1 included (or {ENV_FORWARDED_ALLOW_IPS})",
    )
    add(
        "--no-dashboard",
        dest="dashboard",
        action="store_false",
        help="do not serve the web dashboard under /ui (docs/dashboard.md)",
    )
    add(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: uvloop's (faster) or asyncio's; auto: uvloop when installed, as"
        " uvicorn does (the server extra installs it) (default: auto)",
    )
    add(
        "--http",
        choices=("auto", "h11", "httptools"),
        default="auto",
        help="HTTP parser: httptools (faster) or h11; auto: httptools when installed, as"
        " uvicorn does (the server extra installs it) (default: auto)",
    )


def _engine_options(add: Callable[..., Any]) -> None:
    add(
        "--rate-limit",
        type=_non_negative,
        default=None,
        metavar="N",
        help="requests per second per token (default: the adapter's, 50; 0 disables)",
    )
    add(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="workers running asynchronous executions (default: the engine's, 128)",
    )
    add(
        "--durability",
        choices=("normal", "full"),
        default="normal",
        help="normal: a committed change survives a killed process; full: it survives"
        " power loss too (SQLite synchronous=FULL, PostgreSQL synchronous_commit=on);"
        " slower (default: normal)",
    )
    add(
        "--lease-seconds",
        type=_lease,
        default=None,
        metavar="S",
        help="how long this process holds an execution without renewing: after a crash,"
        " other processes take its work over once it expires (default: the engine's, 30;"
        " on SQLite a killed process's work is taken over at once)",
    )


def _observability_options(add: Callable[..., Any]) -> None:
    add("--log-level", choices=LOG_LEVELS, default="info", help="log level (default: info)")
    add(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines, or one JSON object per line (time, level, logger, message and the"
        " ids of what the line is about; docs/operations.md) (default: text)",
    )
    add(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="N",
        help="also serve GET /metrics (Prometheus) without a token on this port"
        " (default: none; GET /api/v1/metrics needs a token with metrics:read)",
    )
    add(
        "--metrics-host",
        default=DEFAULT_HOST,
        help=f"address of --metrics-port (default: {DEFAULT_HOST})",
    )
    add(
        "--otlp-endpoint",
        type=otlp_endpoint,
        default=None,
        metavar="URL",
        help="send traces of executions and steps to this OpenTelemetry collector"
        " (OTLP over HTTP: URL/v1/traces, e.g. http://127.0.0.1:4318); needs the otel"
        " extra (default: none; docs/operations.md)",
    )


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    db: argparse.ArgumentParser,
    server: argparse.ArgumentParser,
) -> None:
    """Register ``serve``."""
    serve = commands.add_parser(
        "serve", parents=[db, server], help="run the engine and its REST API under /api/v1"
    )
    processes.add_options(serve.add_argument)
    serve.set_defaults(handler=_cmd_serve)


class _Stopped(BaseException):
    """SIGTERM or SIGINT arrived before the server took over signal handling."""


class _Server:
    """Runs uvicorn on a bound socket; stops on SIGTERM and SIGINT and exits 0.

    uvicorn handles both signals while it serves (graceful shutdown) and
    re-raises the signal once it is done; our own handler, in place before and
    after, turns that into a clean return instead of a killed process.
    """

    def __init__(
        self,
        engine: Engine,
        sock: socket.socket,
        args: argparse.Namespace,
        metrics_sock: socket.socket | None = None,
    ) -> None:
        self.engine = engine
        self.sock = sock
        self.metrics_sock = metrics_sock
        self.args = args
        self.server: uvicorn.Server | None = None
        host, port = sock.getsockname()[:2]
        shown_host = f"[{host}]" if ":" in host else host
        self.root_url = f"http://{shown_host}:{port}"
        self.api_url = f"{self.root_url}/api/v1"

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.server is None:
            raise _Stopped(signum)
        self.server.should_exit = True

    def _announce(self) -> None:
        if getattr(self.args, "child_fds", None) is not None:
            processes.report_ready(self.args)  # the parent announces
            return
        _announce(self.sock, self.engine.db_url, self.args, self.metrics_sock)

    def _build(self) -> uvicorn.Server:
        import abi_asgi
        import uvicorn

        options: dict[str, Any] = {"manage_engine": False}
        if not getattr(self.args, "dashboard", True):
            options["dashboard"] = False
        rate = self.args.rate_limit
        if rate is not None:
            burst = max(1, round(rate * 2))
            options["rate_limit"] = (
                abi_asgi.RateLimit(requests_per_second=rate, burst=burst) if rate > 0 else None
            )
        app: Any = abi_asgi.create_app(self.engine, **options)
        if self.metrics_sock is not None:  # one server, two sockets: see MetricsPort
            metrics = abi_asgi.create_metrics_app(self.engine)
            app = abi_asgi.MetricsPort(app, metrics, self.metrics_sock.getsockname()[1])
        extra: dict[str, Any] = {}
        if getattr(self.args, "log_format", "text") == "json":
            extra["log_config"] = None  # uvicorn's loggers reach the root's JSON handler
        config = uvicorn.Config(
            app,
            host=self.args.host,
            port=self.sock.getsockname()[1],
            lifespan="on",
            log_level=self.args.log_level,
            **extra,
            # Forwarding headers only from the proxies named (uvicorn would trust
            # 127.0.0.1 by default: any local process could then pick its address).
            proxy_headers=bool(self.args.forwarded_allow_ips),
            forwarded_allow_ips=self.args.forwarded_allow_ips or "",
            http=http_protocol(getattr(self.args, "http", "auto")),
        )
        announce = self._announce

        class Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets=sockets)
                if self.started and not self.should_exit:
                    freeze_startup_objects()
                    announce()

        return Server(config)

    async def _main(self, prepare: Prepare | None) -> None:
        server = self._build()
        async with self.engine:
            if prepare is not None:
                await prepare(self.engine, self.root_url)
            self.server = server
            if getattr(self.args, "child_fds", None) is not None:
                processes.watch_parent(self.args, server)
            sockets = [self.sock] if self.metrics_sock is None else [self.sock, self.metrics_sock]
            await server.serve(sockets=sockets)

    def run(self, prepare: Prepare | None = None) -> int:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            loop = loop_factory(getattr(self.args, "loop", "asyncio"))
            with asyncio.Runner(loop_factory=loop) as runner:
                runner.run(self._main(prepare))
        except _Stopped:
            pass
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise CliError(
                    "the server failed to start (see the log above)", EXIT_FAILURE
                ) from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.sock.close()
            if self.metrics_sock is not None:
                self.metrics_sock.close()
        return EXIT_OK


def _announce(
    sock: socket.socket,
    db_url: str,
    args: argparse.Namespace,
    metrics_sock: socket.socket | None = None,
    *more: str,
) -> None:
    """The lines saying where the server answers (on standard error)."""
    host, port = sock.getsockname()[:2]
    root_url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"abi-engine serving {root_url}/api/v1 (db: {_redact(db_url)})", file=sys.stderr)
    if getattr(args, "dashboard", True):
        print(f"dashboard: {root_url}/ui/", file=sys.stderr)
    if metrics_sock is not None:
        host, port = metrics_sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        print(f"metrics: http://{host}:{port}/metrics", file=sys.stderr)
    for line in more:
        print(line, file=sys.stderr)
    sys.stderr.flush()


def freeze_startup_objects() -> int:
    """Move what start-up made (modules, the app, the engine) out of the garbage collector's view.

    They live as long as the process, yet every full collection walked them:
    ~40 ms each on a small VM, a pause that landed on scheduled firings now
    and then (p99 lateness 36-65 ms instead of under 10). After
    ``gc.freeze()`` a full collection walks only what was made since. The
    same two lines suit any host embedding the engine. Returns how many
    objects are frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop of ``--loop``: uvloop's when asked, or when ``auto`` and it is
    installed; else asyncio's (``None``).

    :raises CliError: ``uvloop`` asked and not installed.
    """
    if name == "asyncio" or (name == "auto" and not _installed("uvloop")):
        return None
    try:
        factory: Callable[[], asyncio.AbstractEventLoop] = importlib.import_module(
            "uvloop"
        ).new_event_loop
    except ImportError:
        raise CliError(
            "--loop uvloop: uvloop is not installed (pip install 'abi-engine[server]')"
        ) from None
    return factory


def http_protocol(name: str) -> str:
    """uvicorn's ``http`` of ``--http``: ``auto`` picks httptools when installed.

    :raises CliError: ``httptools`` asked and not installed.
    """
    if name == "httptools" and not _installed("httptools"):
        raise CliError(
            "--http httptools: httptools is not installed (pip install 'abi-engine[server]')"
        )
    return name


def _check_server_extras() -> None:
    try:
        import abi_asgi
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise CliError(
            f"the REST adapter is not installed ({exc}); install it with:"
            " pip install 'abi-engine[asgi]'"
        ) from None
    if not hasattr(abi_asgi, "create_app"):
        raise CliError("the installed abi_asgi package has no create_app()")


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; failures are one-line :class:`CliError`."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CliError(f"cannot listen on {where}: {_reason(exc)}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = " (another server is listening there; choose another --port)"
        raise CliError(f"cannot listen on {where}: {_reason(exc)}{hint}") from None
    return sock


def _configure_logging(level: str, log_format: str = "text") -> None:
    numeric = logging.DEBUG if level == "trace" else getattr(logging, level.upper())
    configure_logging(numeric, log_format)


def _serve(args: argparse.Namespace, prepare: Prepare | None = None) -> int:
    _check_server_extras()
    loop_factory(getattr(args, "loop", "auto"))  # a missing one asked: one line, before binding
    http_protocol(getattr(args, "http", "auto"))
    _configure_logging(args.log_level, args.log_format)
    sock = processes.inherited_socket(args) if hasattr(args, "child_fds") else None
    sock = sock or _bind(args.host, args.port)
    metrics_sock = None
    endpoint = getattr(args, "otlp_endpoint", None)
    provider = None
    try:
        if args.metrics_port is not None:
            metrics_sock = _bind(args.metrics_host, args.metrics_port)
        provider = None if endpoint is None else tracer_provider(endpoint)
        engine = _open_engine(
            args.db,
            create_dirs=args.create_dirs,
            allow_private_urls=args.allow_private_urls,
            workers=args.workers,
            lease_seconds=args.lease_seconds,
            durability=args.durability,
            tracer_provider=provider,
        )
    except BaseException:
        sock.close()
        if metrics_sock is not None:
            metrics_sock.close()
        if provider is not None:
            provider.shutdown()
        raise
    try:
        return _Server(engine, sock, args, metrics_sock).run(prepare)
    finally:
        engine.close()
        if provider is not None:  # the spans still batched are sent now
            provider.shutdown()


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.processes > 1 and args.child_fds is None:
        return _serve_processes(args)
    return _serve(args)


def _serve_processes(args: argparse.Namespace) -> int:
    """``serve --processes N``: the parent (see :mod:`abi_engine.cli.processes`)."""
    _check_server_extras()
    _configure_logging(args.log_level, args.log_format)
    sock = _bind(args.host, args.port)
    try:
        return processes.supervise(
            args, sock, lambda line: _announce(sock, args.db, args, None, line)
        )
    finally:
        sock.close()
