"""The ``abi-engine`` command line: serve the REST API, create access tokens, run a demo.

``abi-engine serve`` runs the engine and its REST API (the ``abi_asgi``
adapter under uvicorn) until SIGTERM or SIGINT, then stops the server and
exits the engine cleanly. ``abi-engine token create`` prints a new access
token. ``abi-engine demo`` prepares a token and an example workflow, prints
copy-paste ``curl`` commands, and serves like ``serve``.

Exit codes: 0 success (including a stop by SIGTERM or SIGINT), 1 the server
failed while starting or running, 2 bad input (arguments, a database that
cannot be opened, an address that cannot be listened on).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import shlex
import signal
import socket
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from abi_engine import __version__
from abi_engine.errors import AbiError
from abi_engine.ids import format_time
from abi_engine.logs import configure_logging
from abi_engine.models import Scope
from abi_engine.storage._urls import redact_url

if TYPE_CHECKING:
    import uvicorn

    from abi_engine.engine import Engine
    from abi_engine.models import Workflow

__all__ = ["build_parser", "main"]

DEFAULT_DB = "abi-engine.db"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
ENV_DB = "ABI_ENGINE_DB"
ENV_ALLOW_PRIVATE_URLS = "ABI_ENGINE_ALLOW_PRIVATE_URLS"
ENV_FORWARDED_ALLOW_IPS = "ABI_ENGINE_FORWARDED_ALLOW_IPS"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
SCOPES = tuple(scope.value for scope in Scope)
BACKLOG = 2048

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

DEMO_USER = "usr_demo"
DEMO_MARK = "abi-engine demo"

Prepare = Callable[["Engine", str], Awaitable[None]]


class CliError(Exception):
    """A problem reported as one line on stderr, with the process exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- arguments -------------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, not {value}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return value


def _lease(text: str) -> float:
    value = _non_negative(text)
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 1 and 3600 seconds, not {text}")
    return value


def _proxies(text: str) -> str:
    """``--forwarded-allow-ips``: comma-separated addresses or networks, or ``*``."""
    import ipaddress

    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not an IP address or network (or '*')"
            ) from None
    return ",".join(items)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _db_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--db",
        default=os.environ.get(ENV_DB) or DEFAULT_DB,
        metavar="PATH",
        help=(
            "SQLite file (created when missing, in a directory that exists) or"
            f" postgresql:// URL (default: ${ENV_DB}, else ./{DEFAULT_DB})"
        ),
    )
    parent.add_argument(
        "--create-dirs",
        action="store_true",
        help="create the SQLite file's missing parent directories (without it, a missing"
        " directory is an error: a mistyped path would otherwise give a new empty database)",
    )
    return parent


def _server_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    add = parent.add_argument
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
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The ``abi-engine`` argument parser (defaults read from the environment now)."""
    parser = argparse.ArgumentParser(
        prog="abi-engine", description="abi-engine: an embeddable, durable workflow engine."
    )
    parser.add_argument("--version", action="version", version=f"abi-engine {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    db, server = _db_parent(), _server_parent()

    serve = commands.add_parser(
        "serve", parents=[db, server], help="run the engine and its REST API under /api/v1"
    )
    serve.set_defaults(handler=_cmd_serve)

    token = commands.add_parser("token", help="manage access tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    create = token_commands.add_parser(
        "create", parents=[db], help="print a new access token for a user"
    )
    create.add_argument("--user", required=True, metavar="USER_ID", help="e.g. usr_alice")
    create.add_argument(
        "--scope",
        action="extend",
        nargs="+",
        choices=SCOPES,
        metavar="SCOPE",
        help=f"a scope to grant, repeatable (default: all): {', '.join(SCOPES)}",
    )
    create.add_argument("--name", help="a label for the token")
    create.set_defaults(handler=_cmd_token_create)
    listing = token_commands.add_parser(
        "list", parents=[db], help="list live tokens: id, user, scopes, name (never the token)"
    )
    listing.add_argument("--user", metavar="USER_ID", help="only this user's tokens")
    listing.set_defaults(handler=_cmd_token_list)
    revoke = token_commands.add_parser(
        "revoke",
        parents=[db],
        help="revoke a token by its id (tok_...) and every token created from it",
    )
    revoke.add_argument("token_id", metavar="TOKEN_ID", help="as `token list` shows it")
    revoke.set_defaults(handler=_cmd_token_revoke)

    demo = commands.add_parser(
        "demo",
        parents=[db, server],
        help="create a demo token and example workflow, print curl examples, and serve",
    )
    demo.set_defaults(handler=_cmd_demo)
    return parser


# -- the engine ------------------------------------------------------------------------


def _redact(db: str) -> str:
    """``db`` as shown to people: a URL without its password, a path made absolute."""
    if "://" not in db:
        return db if db == ":memory:" else os.path.abspath(db)
    return redact_url(db)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename!r}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def _check_directory(db: str, create_dirs: bool) -> None:
    """Refuse a SQLite file whose directory is missing, unless ``create_dirs``.

    The storage creates missing directories; from a command line that turns a
    mistyped path into a new, empty database, so the command asks first.
    """
    if "://" in db or db == ":memory:" or db.startswith("file:"):
        return
    parent = os.path.dirname(os.path.abspath(db))
    if os.path.isdir(parent) or create_dirs:
        return
    if os.path.lexists(parent) or not os.path.isdir(_existing_ancestor(parent)):
        return  # not a missing directory: opening the database reports what is wrong
    raise CliError(
        f"cannot open the database {_redact(db)!r}: the directory {parent!r} does not exist"
        " (check the path, or pass --create-dirs to create it)"
    )


def _existing_ancestor(path: str) -> str:
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _open_engine(
    db: str,
    *,
    create_dirs: bool = False,
    workers: int | None = None,
    lease_seconds: float | None = None,
    **options: Any,
) -> Engine:
    """Build the engine on ``db``; a database that cannot be used is a :class:`CliError`."""
    from abi_engine.engine import Engine
    from abi_engine.runtime.settings import RuntimeSettings

    tuning: dict[str, Any] = {}
    if workers is not None:
        tuning["workers"] = workers
    if lease_seconds is not None:
        tuning["lease_seconds"] = lease_seconds
    if tuning:
        options["runtime"] = RuntimeSettings(**tuning)
    shown = _redact(db)
    _check_directory(db, create_dirs)
    try:
        return Engine(db, **options)
    except ValueError as exc:
        if str(exc).startswith("No storage plugin handles"):
            hint = ""
            if db.startswith(("postgresql:", "postgres:")):
                hint = " (PostgreSQL storage is not available in this installation)"
            raise CliError(f"no storage backend handles the database {shown!r}{hint}") from None
        raise CliError(f"cannot open the database {shown!r}: {exc}") from None
    except (OSError, sqlite3.Error) as exc:
        raise CliError(f"cannot open the database {shown!r}: {_reason(exc)}") from None


# -- token create ----------------------------------------------------------------------


def _cmd_token_create(args: argparse.Namespace) -> int:
    engine = _open_engine(args.db, create_dirs=args.create_dirs)
    try:
        token = engine.tokens.create_token(args.user, args.scope or None, name=args.name)
    except AbiError as exc:
        raise CliError(exc.message) from None
    except sqlite3.Error as exc:
        raise CliError(f"cannot write to the database {_redact(args.db)!r}: {exc}") from None
    finally:
        engine.close()
    print(token)
    return EXIT_OK


def _cmd_token_list(args: argparse.Namespace) -> int:
    engine = _open_engine(args.db, create_dirs=args.create_dirs)
    try:
        tokens = engine.tokens.list_tokens(args.user)
    finally:
        engine.close()
    for token in tokens:
        scopes = ",".join(sorted(s.value for s in token.scopes))
        created = format_time(token.created_at)
        parent = token.parent_id or ""
        print(f"{token.id}\t{token.user_id}\t{created}\t{scopes}\t{token.name or ''}\t{parent}")
    return EXIT_OK


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    engine = _open_engine(args.db, create_dirs=args.create_dirs)
    try:
        revoked = engine.tokens.revoke_tree(args.token_id)
    except sqlite3.Error as exc:
        raise CliError(f"cannot write to the database {_redact(args.db)!r}: {exc}") from None
    finally:
        engine.close()
    if not revoked:
        raise CliError(
            f"no live token {args.token_id!r} (see `abi-engine token list`)", EXIT_FAILURE
        )
    for token_id in revoked:  # the token, then the tokens descended from it
        print(f"revoked {token_id}")
    return EXIT_OK


# -- serving ---------------------------------------------------------------------------


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
        db = _redact(self.engine.db_url)
        print(f"abi-engine serving {self.api_url} (db: {db})", file=sys.stderr, flush=True)
        if getattr(self.args, "dashboard", True):
            print(f"dashboard: {self.root_url}/ui/", file=sys.stderr, flush=True)
        if self.metrics_sock is not None:
            host, port = self.metrics_sock.getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            print(f"metrics: http://{host}:{port}/metrics", file=sys.stderr, flush=True)

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
            sockets = [self.sock] if self.metrics_sock is None else [self.sock, self.metrics_sock]
            await server.serve(sockets=sockets)

    def run(self, prepare: Prepare | None = None) -> int:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            asyncio.run(self._main(prepare))
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
    _configure_logging(args.log_level, args.log_format)
    sock = _bind(args.host, args.port)
    metrics_sock = None
    try:
        if args.metrics_port is not None:
            metrics_sock = _bind(args.metrics_host, args.metrics_port)
        engine = _open_engine(
            args.db,
            create_dirs=args.create_dirs,
            allow_private_urls=args.allow_private_urls,
            workers=args.workers,
            lease_seconds=args.lease_seconds,
            durability=args.durability,
        )
    except BaseException:
        sock.close()
        if metrics_sock is not None:
            metrics_sock.close()
        raise
    try:
        return _Server(engine, sock, args, metrics_sock).run(prepare)
    finally:
        engine.close()


def _cmd_serve(args: argparse.Namespace) -> int:
    return _serve(args)


# -- demo ------------------------------------------------------------------------------

_FEEDBACK_EXAMPLE: dict[str, Any] = {
    "name": "Customer Feedback Analysis",
    "description": "Analyzes customer feedback and generates insights",
    "type": "feedback_analysis",
    "configuration": {
        "nlp_service": "default",
        "sentiment_analysis": True,
        "topic_extraction": True,
        "language": "en",
        "response_threshold": 0.7,
    },
    "metadata": {"department": "customer_success", "priority": "medium", "example": DEMO_MARK},
}
_FEEDBACK_PARAMETERS: dict[str, Any] = {
    "feedback_id": "f_12345",
    "customer_id": "c_67890",
    # The specification's own example text; the default service answers "mixed": the
    # product praised (positive), the user interface criticised (negative).
    "feedback_text": (
        "I really love your product, but the latest update made the user interface more"
        " complicated. It's still a great service overall though!"
    ),
    "source": "email",
    "include_recommendations": True,
}
_CUSTOM_EXAMPLE: dict[str, Any] = {
    "name": "Add two numbers",
    "description": "A declarative custom workflow: its result is parameters a + b",
    "type": "custom",
    "configuration": {
        "steps": [
            {
                "name": "total",
                "action": "transform",
                "expressions": {"sum": "parameters['a'] + parameters['b']"},
            }
        ]
    },
    "metadata": {"department": "demo", "example": DEMO_MARK},
}
_CUSTOM_PARAMETERS: dict[str, Any] = {"a": 2, "b": 3}


async def _find_demo_workflow(engine: Engine) -> Workflow | None:
    page = 1
    while True:
        found = await engine.workflows.list(page=page, page_size=100, sort_order="asc")
        for workflow in found.items:
            if workflow.metadata.get("example") == DEMO_MARK:
                return workflow
        if page >= found.pagination.total_pages:
            return None
        page += 1


async def _create_demo_workflow(engine: Engine) -> Workflow:
    from abi_engine.auth import Principal

    actor = Principal(user_id=DEMO_USER)
    if "feedback_analysis" in engine.workflow_types:
        try:
            return await engine.workflows.create(_FEEDBACK_EXAMPLE, actor=actor)
        except AbiError as exc:
            logging.getLogger("abi_engine.cli").warning(
                "the feedback_analysis example was refused (%s); using a custom workflow",
                exc.message,
            )
    return await engine.workflows.create(_CUSTOM_EXAMPLE, actor=actor)


async def _demo_workflow(engine: Engine) -> Workflow:
    """The demo's example workflow (created when missing), active."""
    from abi_engine.models import WorkflowStatus

    workflow = await _find_demo_workflow(engine) or await _create_demo_workflow(engine)
    if workflow.status is not WorkflowStatus.ACTIVE:
        await engine.workflows.activate(workflow.id)
    return workflow


def _can_execute() -> bool:
    from abi_engine.api import OPERATIONS

    return any(
        op.method == "POST" and op.path == "/workflows/{workflow_id}/execute"
        for op in OPERATIONS.values()
    )


def _curl(token: str, url: str, body: dict[str, Any] | None = None) -> str:
    import json

    parts = ["curl", "-s", "-H", f"Authorization: Bearer {token}"]
    if body is not None:
        parts += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    return " ".join(shlex.quote(part) for part in [*parts, url])


def _demo_text(token: str, workflow: Workflow, root_url: str, db: str) -> str:
    api = f"{root_url}/api/v1"
    lines = [
        f"abi-engine demo: an access token for {DEMO_USER} (all scopes) and an example workflow",
        f"database: {db}",
        f"token: {token}",
        f"workflow: {workflow.id} ({workflow.name}, type {workflow.type}, active)",
        "",
        "Try it from another terminal:",
        f"  curl -s {api}/health",
        f"  {_curl(token, f'{api}/workflows')}",
        f"  {_curl(token, f'{api}/workflows/{workflow.id}')}",
    ]
    if _can_execute():
        params = _FEEDBACK_PARAMETERS if workflow.type == "feedback_analysis" else None
        body = {
            "parameters": params or _CUSTOM_PARAMETERS,
            "execution_options": {"wait_for_completion": True, "timeout_seconds": 30},
        }
        lines.append(f"  {_curl(token, f'{api}/workflows/{workflow.id}/execute', body)}")
    lines += [
        f"The OpenAPI document: {api}/openapi.json",
        f"The dashboard: {root_url}/ui/ (sign in with the token above)",
        "Stop with Ctrl+C.",
        "",
    ]
    return "\n".join(lines)


async def _demo_prepare(engine: Engine, root_url: str) -> None:
    try:
        token = engine.tokens.create_token(DEMO_USER, None, name=DEMO_MARK)
        workflow = await _demo_workflow(engine)
    except (AbiError, sqlite3.Error) as exc:
        raise CliError(f"cannot prepare the demo: {exc}") from None
    print(_demo_text(token, workflow, root_url, _redact(engine.db_url)), flush=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    return _serve(args, _demo_prepare)


# -- entry point -----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``abi-engine`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except CliError as exc:
        print(f"abi-engine: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
