"""The operation table's segment-by-segment matching."""

from __future__ import annotations

import re
from typing import Any

import pytest
from abi_asgi._routing import OperationTable
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.convertors import CONVERTOR_TYPES
from starlette.routing import Match

from abi_engine.api import ApiRequest, Operation
from abi_engine.auth import Principal


async def _noop(engine: Any, actor: Principal, request: ApiRequest) -> Any:
    return None


def op(name: str, method: str, path: str) -> Operation:
    return Operation(name=name, method=method, path=path, scope=None, summary=name, handler=_noop)


async def _serve(*args: Any) -> None:
    return None


TABLE = OperationTable(
    "/api/v1",
    [
        op("list", "GET", "/things"),
        op("create", "POST", "/things"),
        op("get", "GET", "/things/{thing_id}"),
        op("search", "GET", "/things/search"),
        op("search_deep", "GET", "/things/search/deep"),
        op("sub", "GET", "/things/{thing_id}/parts/{part_id}"),
        op("page", "GET", "/pages/{n:int}"),
        op("export", "GET", "/exports/{name}.json"),
    ],
    _serve,
)


def found(path: str) -> tuple[set[str], dict[str, Any]] | None:
    result = TABLE.lookup(path)
    return None if result is None else ({m.name for m in result[0].values()}, result[1])


def test_literals_win_over_parameters_and_backtrack() -> None:
    """'/things/search' is its own operation; '/things/search/parts/x' falls back to the parameter."""
    assert found("/api/v1/things/search") == ({"search"}, {})
    assert found("/api/v1/things/search/deep") == ({"search_deep"}, {})
    assert found("/api/v1/things/search/parts/p1") == (
        {"sub"},
        {"thing_id": "search", "part_id": "p1"},
    )
    assert found("/api/v1/things/t1") == ({"get"}, {"thing_id": "t1"})


def test_methods_of_one_path_share_a_node_and_head_follows_get() -> None:
    """GET and POST of one path are found together; HEAD maps to the GET operation."""
    result = TABLE.lookup("/api/v1/things")
    assert result is not None
    methods = result[0]
    assert sorted(methods) == ["GET", "HEAD", "POST"]
    assert methods["HEAD"] is methods["GET"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/things/",
        "/api/v1/things//parts/x",
        "/api/v1/nothing",
        "/api/v1",
        "/",
        "",
        "api/v1/things",
        "/api/v1/pages/x",
        "/api/v1/exports/report.xml",
    ],
)
def test_non_routes_find_nothing(path: str) -> None:
    """Empty segments, unknown paths and failed convertors match nothing."""
    assert TABLE.lookup(path) is None


def test_convertors_and_mixed_segments() -> None:
    """'{n:int}' converts its value; '{name}.json' matches inside a segment."""
    assert found("/api/v1/pages/12") == ({"page"}, {"n": 12})
    assert found("/api/v1/exports/report.json") == ({"export"}, {"name": "report"})


def test_matches_reports_full_partial_none_under_a_root_path() -> None:
    """Starlette's Match: FULL for path and method, PARTIAL for path only, NONE otherwise."""
    scope = {"type": "http", "path": "/abi/api/v1/things/t1", "root_path": "/abi", "method": "GET"}
    match, child = TABLE.matches(scope)
    assert match is Match.FULL
    assert child["path_params"] == {"thing_id": "t1"}
    assert TABLE.matches({**scope, "method": "DELETE"})[0] is Match.PARTIAL
    assert TABLE.matches({**scope, "path": "/abi/api/v1/nope"})[0] is Match.NONE
    assert TABLE.matches({**scope, "type": "websocket"})[0] is Match.NONE


def test_path_convertor_and_duplicates_are_refused() -> None:
    """A multi-segment 'path' convertor and a second operation on one method and path are refused."""
    with pytest.raises(ValueError, match="Unsupported path convertor"):
        OperationTable("/api/v1", [op("files", "GET", "/files/{rest:path}")], _serve)
    with pytest.raises(ValueError, match="both bind GET"):
        OperationTable("/api/v1", [op("a", "GET", "/x/{id}"), op("b", "GET", "/x/{id}")], _serve)


def test_a_literal_without_the_method_yields_to_the_parameter() -> None:
    """'/things/search' has only GET: a DELETE of it is the parameter route's (thing_id
    'search'), not a 405; without any route of that method the literal's methods answer."""
    table = OperationTable(
        "/api/v1",
        [
            op("get", "GET", "/things/{thing_id}"),
            op("delete", "DELETE", "/things/{thing_id}"),
            op("search", "POST", "/things/search"),
        ],
        _serve,
    )
    deleted = table.lookup("/api/v1/things/search", "DELETE")
    assert deleted is not None
    assert {o.name for o in deleted[0].values()} == {"get", "delete"}
    assert deleted[1] == {"thing_id": "search"}
    searched = table.lookup("/api/v1/things/search", "POST")
    assert searched is not None
    assert {o.name for o in searched[0].values()} == {"search"}
    neither = table.lookup("/api/v1/things/search", "PUT")
    assert neither is not None
    assert {o.name for o in neither[0].values()} == {"search"}  # 405, Allow: POST


_SEGMENT = st.text(st.characters(blacklist_characters="/", codec="utf-8"), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(thing=_SEGMENT, part=_SEGMENT)
def test_a_whole_segment_parameter_takes_what_starlettes_pattern_takes(
    thing: str, part: str
) -> None:
    """'{thing_id}' segments match without a regular expression (issue #18): whatever
    Starlette's str convertor ('[^/]+') takes, they take, as it is."""
    regex = re.compile(CONVERTOR_TYPES["str"].regex)
    assert regex.fullmatch(thing)
    assert regex.fullmatch(part)
    path = f"/api/v1/things/{thing}/parts/{part}"
    assert found(path) == ({"sub"}, {"thing_id": thing, "part_id": part})
    if thing not in ("search",):
        assert found(f"/api/v1/things/{thing}") == ({"get"}, {"thing_id": thing})


def test_two_parameter_names_at_one_place_both_route() -> None:
    """'/x/{a}' and '/x/{b}/y' name the same place differently: each keeps its own name."""
    table = OperationTable(
        "/api/v1", [op("a", "GET", "/x/{a}"), op("b", "GET", "/x/{b}/y")], _serve
    )
    first = table.lookup("/api/v1/x/1")
    second = table.lookup("/api/v1/x/2/y")
    assert first is not None
    assert second is not None
    assert ({o.name for o in first[0].values()}, first[1]) == ({"a"}, {"a": "1"})
    assert ({o.name for o in second[0].values()}, second[1]) == ({"b"}, {"b": "2"})


def _searched(
    table: OperationTable, path: str, method: str | None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``lookup`` by the full backtracking search alone (what it was before the greedy walk)."""
    from abi_asgi._routing import _find

    if not path.startswith("/"):
        return None
    first = None
    for node, params in _find(table.root, path[1:].split("/"), 0):
        if method is None or method in node.methods:
            return dict(node.methods), params
        first = first or (dict(node.methods), params)
    return first


_WORDS = st.sampled_from(
    ["api", "v1", "things", "search", "deep", "parts", "pages", "exports", "x.json", "", "7"]
)


@settings(max_examples=300)
@given(
    segments=st.lists(st.one_of(_WORDS, st.text("ab/", max_size=3)), max_size=6),
    method=st.sampled_from([None, "GET", "POST", "HEAD", "DELETE"]),
    prefix=st.booleans(),
)
def test_the_greedy_walk_answers_what_the_full_search_answers(
    segments: list[str], method: str | None, prefix: bool
) -> None:
    """For any path and method, ``lookup`` (greedy walk first) equals the full search."""
    path = ("/api/v1/" if prefix else "/") + "/".join(segments)
    for table in (TABLE, _REAL):
        result = table.lookup(path, method)
        expected = _searched(table, path, method)
        assert (None if result is None else (dict(result[0]), result[1])) == expected


def _real_table() -> OperationTable:
    from abi_engine import api

    return OperationTable("/api/v1", api.OPERATIONS.values(), _serve)


_REAL = _real_table()


@pytest.mark.parametrize(
    ("path", "method", "name", "params"),
    [
        (
            "/api/v1/workflows/wf_1/execute_async",
            "POST",
            "execute_workflow_async",
            {"workflow_id": "wf_1"},
        ),
        ("/api/v1/workflows/wf_1", "GET", "get_workflow", {"workflow_id": "wf_1"}),
        ("/api/v1/workflows", "GET", "list_workflows", {}),
        ("/api/v1/workflow_executions/exec_1", "GET", "get_execution", {"execution_id": "exec_1"}),
    ],
)
def test_the_hot_routes_of_the_real_table(
    path: str, method: str, name: str, params: dict[str, Any]
) -> None:
    found = _REAL.resolve({"type": "http", "method": method, "path": path, "root_path": ""})
    assert found is not None
    assert (found[0].name, found[1]) == (name, params)
