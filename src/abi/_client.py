"""What the classes of :mod:`abi.workflows` share: finding the engine (in process or
remote), the transport, closing, and turning answers into objects."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import attrs

from abi._embedded import DEFAULT_DB, embedded_engine
from abi._transport import LocalTransport, RemoteTransport, Transport
from abi_engine.converter import structure
from abi_engine.errors import (
    AbiError,
    InternalError,
)

if TYPE_CHECKING:
    from abi_engine.engine import Engine


T = TypeVar("T")

#: Seconds a remote call may take before it fails (covers waiting executions).
DEFAULT_TIMEOUT = 300.0
#: The longest :meth:`WorkflowExecutor.wait_for_execution` holds one request.
WAIT_REQUEST_SECONDS = 30.0


class Record:
    """A resource the engine has no model class for yet, with its JSON fields as attributes.

    Its fields read (and assign) as attributes; :meth:`to_dict` gives the
    JSON back. :meth:`WorkflowScheduler.update_schedule` accepts one too.
    """

    __slots__ = ("_data",)
    _data: dict[str, Any]

    def __init__(self, data: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_data", dict(data))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._data[name] = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return self._data == other._data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (a copy)."""
        return dict(self._data)


def _connect(
    access_token: str | None,
    engine: Engine | None,
    base_url: str | None,
    timeout: float,
) -> Transport:
    """Pick the transport in the contract's order (see the module docstring)."""
    if engine is not None and base_url is not None:
        raise ValueError("Give either engine= or base_url=, not both")
    if engine is not None:
        return LocalTransport(engine, access_token)
    if base_url is not None:
        return RemoteTransport(base_url, access_token, timeout=timeout)
    url = os.environ.get("ABI_ENGINE_URL")
    if url:
        return RemoteTransport(url, access_token, timeout=timeout)
    db = os.environ.get("ABI_ENGINE_DB") or DEFAULT_DB
    return LocalTransport(embedded_engine(db), access_token)


def _check_id(value: Any, not_found: Callable[[str], AbiError]) -> str:
    """An id usable in a URL path; anything else is not found, locally and remotely alike."""
    if not isinstance(value, str) or not value or value in (".", "..") or "/" in value:
        raise not_found(str(value))
    return value


def _structure(data: Any, cls: type[T]) -> T:
    """Turn an operation's JSON answer into ``cls``; a wrong shape is an ``InternalError``."""
    return structure(data, cls, error=InternalError)


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _integration_spec(item: Any) -> Any:
    if attrs.has(type(item)):
        return {"id": item.id, "required": item.required}
    return item


class _Client:
    """What the three facade classes share: engine resolution, transport, closing."""

    def __init__(
        self,
        access_token: str | None = None,
        *,
        engine: Engine | None = None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._transport = _connect(access_token, engine, base_url, timeout)
        self._timeout = timeout

    def close(self) -> None:
        """Release the HTTP connections of a remote client.

        An engine given with ``engine=`` is never closed here, and embedded
        engines are closed at interpreter exit.
        """
        self._transport.close()

    def get_metrics(self) -> str:
        """The engine's metrics in the Prometheus text format (``GET /api/v1/metrics``;
        the token needs the ``metrics:read`` scope). See docs/operations.md."""
        return str(self._transport.request("get_metrics"))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
