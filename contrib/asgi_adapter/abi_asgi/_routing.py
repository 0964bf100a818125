"""One Starlette route for the whole operations table, matched segment by segment.

Starlette's router tries each route's regular expression in turn, so its cost
grows with the number of routes. :class:`OperationTable` is a single
:class:`~starlette.routing.BaseRoute` holding every operation in a tree keyed
by path segment: a request walks the tree once, literal segments before
parameters (``/workflows/search`` would win over ``/workflows/{workflow_id}``),
backtracking when a literal branch leads nowhere. It answers Starlette's
``FULL`` (path and method match), ``PARTIAL`` (path only: the router then lets
it raise 405 with an ``Allow`` header) or ``NONE``, so 404 and 405 stay
Starlette's own exceptions.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.convertors import CONVERTOR_TYPES, Convertor
from starlette.datastructures import URLPath
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from abi_engine.api import Operation

__all__ = ["OperationTable", "OperationsFirst"]

Serve = Callable[[Operation, Scope, Receive, Send], Awaitable[None]]

_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?}")
_SCOPE_KEY = "abi_asgi.operations"


class _Node:
    __slots__ = ("literals", "methods", "patterns", "whole")

    def __init__(self) -> None:
        self.literals: dict[str, _Node] = {}
        self.patterns: list[tuple[str, re.Pattern[str], dict[str, Convertor[Any]], _Node]] = []
        #: The child of a segment that is one ``{name}`` (a string): any non-empty
        #: segment matches it, without a regular expression (the common case).
        self.whole: tuple[str, _Node] | None = None
        self.methods: dict[str, Operation] = {}

    def child(self, segment: str) -> _Node:
        """The node under ``segment`` of a route path (made when new)."""
        if "{" not in segment:
            return self.literals.setdefault(segment, _Node())
        whole = _PARAM.fullmatch(segment)
        if whole is not None and whole.group(2) in (None, "str"):
            if self.whole is None:
                self.whole = (whole.group(1), _Node())
            if self.whole[0] == whole.group(1):
                return self.whole[1]
        for text, _, _, node in self.patterns:
            if text == segment:
                return node
        pattern, convertors = _segment_pattern(segment)
        node = _Node()
        self.patterns.append((segment, pattern, convertors, node))
        return node


def _segment_pattern(segment: str) -> tuple[re.Pattern[str], dict[str, Convertor[Any]]]:
    regex, convertors, last = "", {}, 0
    for match in _PARAM.finditer(segment):
        name, kind = match.group(1), match.group(2) or "str"
        if kind not in CONVERTOR_TYPES or kind == "path":
            raise ValueError(f"Unsupported path convertor {kind!r} in {segment!r}")
        convertors[name] = CONVERTOR_TYPES[kind]
        regex += re.escape(segment[last : match.start()]) + f"(?P<{name}>{convertors[name].regex})"
        last = match.end()
    regex += re.escape(segment[last:])
    return re.compile(regex), convertors


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def _find(node: _Node, segments: list[str], index: int) -> Iterator[tuple[_Node, dict[str, Any]]]:
    """Every node matching ``segments`` from ``index``, literal segments first, each with
    its path parameters."""
    if index == len(segments):
        if node.methods:
            yield node, {}
        return
    segment = segments[index]
    child = node.literals.get(segment)
    if child is not None:
        yield from _find(child, segments, index + 1)
    if not segment:
        return
    if node.whole is not None:
        name, nested = node.whole
        for found, params in _find(nested, segments, index + 1):
            yield found, {**params, name: segment}
    for _, pattern, convertors, nested in node.patterns:
        match = pattern.fullmatch(segment)
        if match is None:
            continue
        for found, params in _find(nested, segments, index + 1):
            converted = {n: convertors[n].convert(v) for n, v in match.groupdict().items()}
            yield found, {**params, **converted}


def _greedy(node: _Node, segments: list[str]) -> tuple[_Node, dict[str, Any]] | None:
    """The walk :func:`_find` tries first (at each segment its literal, else its one
    ``{parameter}``), without generators or backtracking: the first match when it
    ends on a node with methods; ``None`` when it dead-ends (then :func:`_find`)."""
    params: dict[str, Any] = {}
    for segment in segments:
        child = node.literals.get(segment)
        if child is None:
            if not segment or node.whole is None:
                return None
            name, child = node.whole
            params[name] = segment
        node = child
    return (node, params) if node.methods else None


class OperationTable(BaseRoute):
    """Every operation under ``prefix`` as one route (see the module docstring)."""

    def __init__(self, prefix: str, operations: Iterable[Operation], serve: Serve) -> None:
        self.prefix = prefix
        self.serve = serve
        self.root = _Node()
        for op in operations:
            node = self.root
            for segment in (prefix + op.path).strip("/").split("/"):
                node = node.child(segment)
            method = op.method.upper()
            if method in node.methods:
                raise ValueError(
                    f"Operations {node.methods[method].name!r} and {op.name!r} "
                    f"both bind {method} {op.path}"
                )
            node.methods[method] = op
            if method == "GET":
                node.methods.setdefault("HEAD", op)

    def lookup(
        self, path: str, method: str | None = None
    ) -> tuple[Mapping[str, Operation], dict[str, Any]] | None:
        """The operations by method and the path parameters of ``path``, if any match:
        the first match (literal segments before parameters) that has ``method``, else
        the first match (whose methods answer 405). ``/workflow_schedules/preview``
        (POST) does not hide ``DELETE /workflow_schedules/{schedule_id}`` for the id
        ``preview``."""
        if not path.startswith("/"):
            return None
        segments = path[1:].split("/")
        found = _greedy(self.root, segments)
        if found is not None and (method is None or method in found[0].methods):
            return found[0].methods, found[1]
        first = None
        for node, params in _find(self.root, segments, 0):
            if method is None or method in node.methods:
                return node.methods, params
            first = first or (node.methods, params)
        return first

    def resolve(self, scope: Scope) -> tuple[Operation, dict[str, Any]] | None:
        """The operation answering an HTTP request and its path parameters, when one
        matches path and method (what :meth:`matches` calls ``FULL``); else ``None``."""
        method = scope["method"]
        found = self.lookup(_route_path(scope), method)
        if found is None:
            return None
        op = found[0].get(method)
        return None if op is None else (op, found[1])

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        found = self.lookup(_route_path(scope), scope["method"])
        if found is None:
            return Match.NONE, {}
        methods, params = found
        child = {
            "endpoint": self,
            "path_params": {**scope.get("path_params", {}), **params},
            _SCOPE_KEY: methods,
        }
        return (Match.FULL if scope["method"] in methods else Match.PARTIAL), child

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        methods: Mapping[str, Operation] = scope[_SCOPE_KEY]
        op = methods.get(scope["method"])
        if op is None:
            raise HTTPException(405, headers={"Allow": ", ".join(sorted(methods))})
        await self.serve(op, scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)


class OperationsFirst(Starlette):
    """A Starlette application that answers its operations' requests itself, before
    its middleware stack.

    Each layer of Starlette's stack (the server-error and exception middlewares,
    the router, the route) adds wrappers and calls to every request; an
    operation needs none of them, since :attr:`operations`' ``serve`` answers
    every outcome itself (errors as envelopes, never an exception). So an HTTP
    request whose path and method match an operation goes straight to it;
    everything else (the lifespan, 404s and 405s, the health check, OpenAPI, the
    dashboard) takes Starlette's way, whose router holds the same table and
    answers the same. Once a middleware is added (``add_middleware``), every
    request takes Starlette's way, so that the middleware sees them all.
    """

    #: The table answered first (the router's first route too); ``None``: none.
    operations: OperationTable | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        table = self.operations
        if table is not None and scope["type"] == "http" and not self.user_middleware:
            found = table.resolve(scope)
            if found is not None:
                op, params = found
                scope["app"] = self
                scope["path_params"] = {**scope.get("path_params", {}), **params}
                await table.serve(op, scope, receive, send)
                return
        await super().__call__(scope, receive, send)
