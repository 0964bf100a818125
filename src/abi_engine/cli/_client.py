"""Where the operators' commands act: a database (``--db``) or a running server (``--url``).

Both run the operations of :data:`abi_engine.api.OPERATIONS` by name, so a
command behaves the same either way. On a database the caller is
``Principal("cli")`` with every scope (what it changes is recorded in the
audit log as ``cli``); on a server it is the ``--token``'s user, over REST.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from abi_engine.cli._common import EXIT_FAILURE, CliError, _open_engine
from abi_engine.errors import AbiError, error_for_code

if TYPE_CHECKING:
    import httpx

    from abi_engine.engine import Engine

__all__ = ["CLI_ACTOR", "ENV_TOKEN", "ENV_URL", "Target", "open_target", "remote_parent"]

ENV_URL = "ABI_ENGINE_URL"
ENV_TOKEN = "ABI_ENGINE_TOKEN"
#: Who a change made on a database through the command line is recorded as.
CLI_ACTOR = "cli"


class Target(Protocol):
    """Runs operations by name (:meth:`call`), answering their JSON data."""

    def call(
        self,
        name: str,
        *,
        path: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any: ...

    def close(self) -> None: ...


def remote_parent() -> argparse.ArgumentParser:
    """``--url`` and ``--token``: act on a running server instead of a database."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--url",
        default=os.environ.get(ENV_URL) or None,
        metavar="URL",
        help=f"a running server's root URL, e.g. http://127.0.0.1:8000 (or ${ENV_URL});"
        " without it the command opens --db",
    )
    parent.add_argument(
        "--token",
        default=os.environ.get(ENV_TOKEN) or None,
        metavar="TOKEN",
        help=f"the access token for --url (or ${ENV_TOKEN})",
    )
    parent.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    return parent


class LocalTarget:
    """Operations run in this process on the database, as ``cli``."""

    def __init__(self, engine: Engine) -> None:
        from abi_engine.auth import Principal

        self.engine = engine
        self._actor = Principal(user_id=CLI_ACTOR)

    def call(
        self,
        name: str,
        *,
        path: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        import anyio

        from abi_engine.api import ApiRequest, call

        request = ApiRequest(path=dict(path or {}), query=_query(query), body=body)
        return anyio.run(call, self.engine, self._actor, name, request)

    def close(self) -> None:
        self.engine.close()


class RemoteTarget:
    """Operations sent over REST to a running server."""

    def __init__(self, url: str, token: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._client: httpx.Client = httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )

    def call(
        self,
        name: str,
        *,
        path: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        import httpx

        from abi_engine.api import get_operation

        op = get_operation(name)
        where = op.path.format(**dict(path or {}))
        try:
            answer = self._client.request(op.method, where, params=_query(query), json=body)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self.url}: {exc}", EXIT_FAILURE) from None
        return _data(answer)

    def close(self) -> None:
        self._client.close()


def _query(query: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: str(v) for k, v in (query or {}).items() if v is not None}


def _data(answer: httpx.Response) -> Any:
    try:
        payload = answer.json()
    except ValueError:
        raise CliError(
            f"the server answered {answer.status_code} without JSON", EXIT_FAILURE
        ) from None
    if answer.is_success and isinstance(payload, dict) and payload.get("status") == "success":
        return payload.get("data")
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        raise CliError(f"the server answered {answer.status_code}", EXIT_FAILURE)
    raise error_for_code(
        str(error.get("code")),
        str(error.get("message")),
        error.get("details") if isinstance(error.get("details"), dict) else {},
        answer.status_code,
    )


def open_target(args: argparse.Namespace) -> Target:
    """The server of ``--url`` (with ``--token``), else the database of ``--db``."""
    if args.url:
        if not args.token:
            raise CliError("--url needs --token (or ABI_ENGINE_TOKEN)")
        return RemoteTarget(args.url, args.token)
    return LocalTarget(_open_engine(args.db, create_dirs=args.create_dirs))


def run(args: argparse.Namespace, name: str, **request: Any) -> Any:
    """Run operation ``name`` on the command's target; an API error is a one-line error."""
    target = open_target(args)
    try:
        return target.call(name, **request)
    except AbiError as exc:
        raise CliError(f"{exc.code}: {exc.message}", EXIT_FAILURE) from None
    finally:
        target.close()
