"""What the command groups share: constants, errors, argument types, the database option,
opening an engine."""

from __future__ import annotations

import argparse
import os
import sqlite3
from typing import TYPE_CHECKING, Any

from abi_engine.models import Scope
from abi_engine.storage._urls import redact_url

if TYPE_CHECKING:
    from abi_engine.engine import Engine

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
