"""Bad input, over REST and through ``abi.workflows``: the contract's error, never a 5xx.

Over 300 requests, each breaking one documented rule of one operation (field
limits, types, unknown fields, page bounds, malformed bodies), against a real
``abi-engine serve`` on each engine backend. Each answers the error code the
contract's table gives for it, in the error envelope, with ``details.field``
naming the field where there is one. The cases the Python API can express go
through ``abi.workflows`` too, in-process and remote, and raise the same
exception class.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx
import pytest
from postgres_testing import create_schema, drop_schema
from test_cli import Server, _env, run_cli

from abi.workflows import WorkflowExecutor, WorkflowManager, WorkflowScheduler
from abi_engine import Engine, errors

pytestmark = pytest.mark.slow

BACKENDS = [
    pytest.param(name, id=name, marks=[pytest.mark.external_service] if name != "sqlite" else [])
    for name in filter(
        None,
        os.environ.get("ABI_ENGINE_TEST_ENGINE_BACKENDS", "sqlite").replace(" ", "").split(","),
    )
]

CONFIG = {"steps": [{"name": "total", "action": "transform", "expressions": {"x": "1"}}]}
WORKFLOW = {"name": "bad input", "type": "custom", "configuration": CONFIG}
SCHEDULE = {"name": "nightly", "schedule_type": "cron", "cron_expression": "0 0 * * *"}


class Case(NamedTuple):
    """One bad request: where, what, and the answer the contract gives."""

    id: str
    method: str
    path: str  # {wf} {sched} {exec} {wh} stand for ids made by the setup
    status: int
    code: str
    field: str | None = None
    body: Any = None
    query: dict[str, str] | None = None
    raw: bytes | None = None


def _deep(levels: int) -> Any:
    """``levels`` objects, each inside the one before."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def _big(size: int) -> dict[str, str]:
    return {"blob": "x" * size}


def _wrong_types(field: str, values: list[Any]) -> list[tuple[str, Any]]:
    return [(f"{field}={type(v).__name__}:{str(v)[:12]}", v) for v in values]


BAD_TEXT: list[Any] = [5, 1.5, True, [], {}]
BAD_OBJECT: list[Any] = [5, "text", [], True]
BAD_BOOL: list[Any] = [1, "true", [], {}]
BAD_LIST: list[Any] = [5, "text", {}, True]


def _body_cases(
    prefix: str,
    method: str,
    path: str,
    base: dict[str, Any],
    fields: dict[str, list[tuple[str, Any]]],
    status: int = 400,
    code: str = "INVALID_REQUEST",
) -> list[Case]:
    out = []
    for field, values in fields.items():
        for label, value in values:
            body = {**base, field: value}
            out.append(Case(f"{prefix}:{label}", method, path, status, code, field, body))
    return out


def _metadata_like(field: str, limit_bytes: int, keys: int | None, depth: int) -> list[Any]:
    cases: list[tuple[str, Any]] = [
        (f"{field}>bytes", _big(limit_bytes)),
        (f"{field}>depth", _deep(depth + 1)),
        (f"{field}:long-key", {"k" * 300: 1}),
        (f"{field}:nul-value", {"k": ["v\x00"]}),
        (f"{field}:nul-key", {"k\x00": 1}),
        *_wrong_types(field, BAD_OBJECT),
    ]
    if keys is not None:
        cases.append((f"{field}>keys", {f"k{i}": i for i in range(keys + 1)}))
    return cases


def workflow_cases(prefix: str, method: str, path: str) -> list[Case]:
    base = dict(WORKFLOW)
    cases = _body_cases(
        prefix,
        method,
        path,
        base,
        {
            "name": [
                ("name:empty", ""),
                ("name:blank", "   "),
                ("name:tabs", "\t\n"),
                ("name>200", "n" * 201),
                ("name>200-unicode", "é" * 201),
                ("name:nul", "a\x00b"),
                *_wrong_types("name", [None, *BAD_TEXT]),
            ],
            "description": [
                ("description>5000", "d" * 5001),
                ("description:nul", "d\x00"),
                *_wrong_types("description", BAD_TEXT),
            ],
            "type": [("type>100", "t" * 101), *_wrong_types("type", BAD_TEXT)],
            "configuration": [
                ("configuration>bytes", {**CONFIG, "pad": "p" * 65_536}),
                ("configuration>depth", {**CONFIG, "pad": _deep(16)}),
                *_wrong_types("configuration", BAD_OBJECT),
            ],
            "integrations": [
                ("integrations>50", [{"id": f"int_{i}"} for i in range(51)]),
                ("integrations:bad-id", [{"id": "zendesk"}]),
                ("integrations:long-id", [{"id": "int_" + "i" * 121}]),
                ("integrations:id-type", [{"id": 5}]),
                ("integrations:unknown-key", [{"id": "int_a", "weight": 1}]),
                ("integrations:repeated", [{"id": "int_a"}, {"id": "int_a", "required": True}]),
                ("integrations:required-type", [{"id": "int_a", "required": "yes"}]),
                ("integrations:item-type", ["int_a"]),
                *_wrong_types("integrations", BAD_LIST),
            ],
            "metadata": _metadata_like("metadata", 8_192, 64, 8),
            "surprise": [("unknown-field", 1)],
        },
    )
    creating = method == "POST"  # an update cannot change the type at all
    cases += [
        Case(
            f"{prefix}:unknown-type",
            method,
            path,
            400,
            "INVALID_WORKFLOW_CONFIG" if creating else "INVALID_REQUEST",
            "type",
            {**base, "type": "no_such_type"},
        ),
        Case(
            f"{prefix}:bad-configuration",
            method,
            path,
            400,
            "INVALID_WORKFLOW_CONFIG",
            None,
            {**base, "configuration": {"steps": "nope"}},
        ),
    ]
    return cases


def schedule_cases(prefix: str, method: str, path: str) -> list[Case]:
    # An update names unknown fields before reading any (INVALID_REQUEST); a create
    # structures its whole body as a schedule (INVALID_SCHEDULE).
    unknown = Case(
        f"{prefix}:unknown-field",
        method,
        path,
        400,
        "INVALID_SCHEDULE" if method == "POST" else "INVALID_REQUEST",
        "surprise",
        {**SCHEDULE, "surprise": 1},
    )
    cases = _body_cases(
        prefix,
        method,
        path,
        dict(SCHEDULE),
        {
            "name": [
                ("name:empty", ""),
                ("name:blank", " "),
                ("name>200", "n" * 201),
                *_wrong_types("name", BAD_TEXT),
            ],
            "description": [("description>5000", "d" * 5001)],
            "cron_expression": [
                ("cron>256", "* " * 200),
                ("cron:bad", "61 * * * *"),
                *_wrong_types("cron_expression", [5, []]),
            ],
            "schedule_type": [("schedule_type:bad", "weekly"), ("schedule_type:int", 1)],
            "interval_value": [
                ("interval:zero", 0),
                ("interval:huge", 10**12),
                ("interval:float", 1.5),
                ("interval:text", "5"),
            ],
            "interval_unit": [("interval_unit:bad", "weeks")],
            "execution_time": [("execution_time:bad", "tomorrow"), ("execution_time:int", 5)],
            "start_time": [("start_time:bad", "2024-13-01T00:00:00Z")],
            "parameters": _metadata_like("parameters", 65_536, None, 16),
            "timezone": [
                ("timezone:unknown", "Mars/Olympus"),
                ("timezone>64", "Z" * 65),
                ("timezone:empty", ""),
            ],
            "misfire_policy": [("misfire_policy:bad", "never")],
            "misfire_grace_seconds": [
                ("misfire_grace:negative", -1),
                ("misfire_grace>week", 10**7),
                ("misfire_grace:text", "60"),
            ],
            "catch_up_limit": [("catch_up:zero", 0), ("catch_up>1000", 1001)],
            "overlap_policy": [("overlap:bad", "sometimes")],
            "enabled": _wrong_types("enabled", BAD_BOOL),
        },
        code="INVALID_SCHEDULE",
    )
    return [unknown, *cases]


def execute_cases(prefix: str, path: str, async_: bool) -> list[Case]:
    fields: dict[str, list[tuple[str, Any]]] = {
        "parameters": _metadata_like("parameters", 262_144, None, 16),
        "idempotency_key": [
            ("key:empty", ""),
            ("key>255", "k" * 256),
            *_wrong_types("idempotency_key", [5, []]),
        ],
        "execution_options": [
            ("options:type", "fast"),
            ("options:timeout-zero", {"timeout_seconds": 0}),
            ("options:timeout-negative", {"timeout_seconds": -5}),
            ("options:timeout>week", {"timeout_seconds": 10**7}),
            ("options:timeout-text", {"timeout_seconds": "30"}),
            ("options:wait-type", {"wait_for_completion": "yes"}),
            ("options:unknown", {"urgency": 1}),
        ],
        "surprise": [("unknown-field", 1)],
    }
    if async_:
        fields["callback_url"] = [
            (f"callback_url:{label}", url)
            for label, url in [
                ("empty", ""),
                ("relative", "/hook"),
                ("ftp", "ftp://example.com/h"),
                ("no-host", "http:///h"),
                ("credentials", "https://u:p@example.com/h"),
                ("space", "https://exa mple.com/h"),
                ("nul", "https://example.com/\x00"),
                ("newline", "https://example.com/h\n"),
                ("port", "https://example.com:70000/"),
                ("unicode", "https://exämple.com/h"),
                ("long", "https://e.com/" + "p" * 2100),
                ("int", 5),
            ]
        ]
        fields["callback_secret"] = [
            ("secret:no-prefix", "abcdefghijkl"),
            ("secret:short", "whsec_abc"),
            ("secret:space", "whsec_abc def ghi"),
            ("secret>512", "whsec_" + "s" * 513),
            ("secret:int", 5),
        ]
    return _body_cases(prefix, "POST", path, {}, fields)


def webhook_cases(prefix: str, method: str, path: str, base: dict[str, Any]) -> list[Case]:
    return _body_cases(
        prefix,
        method,
        path,
        base,
        {
            "url": [
                (f"url:{label}", url)
                for label, url in [
                    ("empty", ""),
                    ("relative", "hook"),
                    ("scheme", "gopher://example.com/"),
                    ("credentials", "https://a@example.com/"),
                    ("space", "https://a b/"),
                    ("control", "https://example.com/\x01"),
                    ("del", "https://example.com/\x7f"),
                    ("u2028", "https://example.com/\u2028"),
                    ("port", "https://example.com:99999/"),
                    ("long", "https://e.com/" + "p" * 2100),
                    ("list", ["https://e.com/"]),
                ]
            ],
            "events": [
                ("events:empty", []),
                ("events:unknown", ["workflow.exploded"]),
                ("events:type", "workflow.created"),
                ("events:item-type", [1]),
                ("events>50", ["workflow.created"] * 51),
            ],
            "secret": [
                ("secret:no-prefix", "abc"),
                ("secret:empty", "whsec_"),
                ("secret:space", "whsec_a b"),
                ("secret>512", "whsec_" + "s" * 513),
                ("secret:unicode", "whsec_é"),
                ("secret:int", 5),
            ],
            "description": [("description>5000", "d" * 5001), ("description:int", 5)],
            "enabled": _wrong_types("enabled", BAD_BOOL),
            "surprise": [("unknown-field", 1)],
        },
    )


def list_cases() -> list[Case]:
    lists = [
        "/workflows",
        "/workflow_executions",
        "/workflow_schedules",
        "/webhooks",
        "/integrations",
        "/tokens",
        "/workflow_schedules/{sched}/history",
        "/webhooks/{wh}/deliveries",
    ]
    bad = [
        ("page", "0"),
        ("page", "-1"),
        ("page", "x"),
        ("page", "1.5"),
        ("page", "10000001"),
        ("page_size", "0"),
        ("page_size", "101"),
        ("page_size", "ten"),
    ]
    out = [
        Case(
            f"list{path}:{name}={value}",
            "GET",
            path,
            400,
            "INVALID_REQUEST",
            name,
            query={name: value},
        )
        for path in lists
        for name, value in bad
    ]
    out += [
        Case(
            "list:sort_by",
            "GET",
            "/workflows",
            400,
            "INVALID_REQUEST",
            "sort_by",
            query={"sort_by": "size"},
        ),
        Case(
            "list:sort_order",
            "GET",
            "/workflows",
            400,
            "INVALID_REQUEST",
            "sort_order",
            query={"sort_order": "up"},
        ),
        Case(
            "list:status",
            "GET",
            "/workflows",
            400,
            "INVALID_REQUEST",
            "status",
            query={"status": "paused"},
        ),
        Case(
            "list:exec-status",
            "GET",
            "/workflow_executions",
            400,
            "INVALID_REQUEST",
            "status",
            query={"status": "done"},
        ),
        Case(
            "list:start_date",
            "GET",
            "/workflow_executions",
            400,
            "INVALID_REQUEST",
            "start_date",
            query={"start_date": "yesterday"},
        ),
        Case(
            "list:end_date",
            "GET",
            "/workflow_executions",
            400,
            "INVALID_REQUEST",
            "end_date",
            query={"end_date": "2024-02-30T00:00:00Z"},
        ),
        Case(
            "list:enabled",
            "GET",
            "/workflow_schedules",
            400,
            "INVALID_REQUEST",
            "enabled",
            query={"enabled": "maybe"},
        ),
    ]
    return out


def raw_cases() -> list[Case]:
    raws = [
        ("not-json", b"{name:", 400),
        ("truncated", b'{"name": "a"', 400),
        ("nan", b'{"name": NaN}', 400),
        ("infinity", b'{"name": 1e999}', 400),
        ("not-utf8", b'{"name": "\xff"}', 400),
        ("lone-surrogate", b'{"name": "\\ud800"}', 400),
        ("array", b"[]", 400),
        ("string", b'"text"', 400),
        ("number", b"42", 400),
        ("too-deep", b"[" * 70 + b"]" * 70, 400),
    ]
    out = []
    for path in ("/workflows", "/workflows/{wf}/schedules", "/webhooks"):
        for label, raw, status in raws:
            out.append(
                Case(
                    f"raw{path}:{label}", "POST", path, status, "INVALID_REQUEST", "(body)", raw=raw
                )
            )
    out.append(
        Case(
            "raw:too-large",
            "POST",
            "/workflows",
            413,
            "PAYLOAD_TOO_LARGE",
            None,
            raw=b'{"name": "' + b"x" * 1_100_000 + b'"}',
        )
    )
    return out


def other_cases() -> list[Case]:
    out = _body_cases(
        "signal",
        "POST",
        "/workflow_executions/{exec}/signal",
        {"name": "go"},
        {
            "name": [
                ("name:empty", ""),
                ("name:hash", "a#b"),
                ("name>200", "n" * 201),
                *_wrong_types("name", [5, None, []]),
            ],
            "payload": [("payload>bytes", _big(65_536)), ("payload>depth", _deep(17))],
            "surprise": [("unknown-field", 1)],
        },
    )
    for decision in ("approve", "reject"):
        out += _body_cases(
            decision,
            "POST",
            f"/workflow_executions/{{exec}}/{decision}",
            {},
            {
                "comment": [("comment>2000", "c" * 2001), ("comment:int", 5)],
                "data": _metadata_like("data", 16_384, 64, 16),
                "surprise": [("unknown-field", 1)],
            },
        )
    out += _body_cases(
        "integration",
        "PUT",
        "/integrations/int_bad_input",
        {"provider": "http", "config": {"base_url": "https://example.com"}},
        {
            "provider": [
                ("provider:empty", ""),
                ("provider>100", "p" * 101),
                ("provider:unknown", "carrier-pigeon"),
                ("provider:int", 5),
            ],
            "config": [
                ("config>bytes", _big(16_384)),
                ("config>keys", {f"k{i}": i for i in range(65)}),
                ("config:type", "x"),
                ("config:base_url", {"base_url": "not a url"}),
            ],
            "surprise": [("unknown-field", 1)],
        },
    )
    out += [
        Case(
            "integration:bad-id",
            "PUT",
            "/integrations/zendesk",
            400,
            "INVALID_REQUEST",
            "id",
            {"provider": "http", "config": {"base_url": "https://example.com"}},
        ),
    ]
    out += _body_cases(
        "token",
        "POST",
        "/tokens",
        {},
        {
            "name": [("name>200", "n" * 201), ("name:int", 5)],
            "scopes": [
                ("scopes:empty", []),
                ("scopes:unknown", ["everything"]),
                ("scopes:type", "workflows:read"),
                ("scopes>all", ["workflows:read"] * 20),  # more items than there are scopes
            ],
            "surprise": [("unknown-field", 1)],
        },
    )
    return out


CASES: list[Case] = [
    *workflow_cases("create_workflow", "POST", "/workflows"),
    *workflow_cases("update_workflow", "PUT", "/workflows/{wf}"),
    *schedule_cases("create_schedule", "POST", "/workflows/{wf}/schedules"),
    *schedule_cases("update_schedule", "PUT", "/workflow_schedules/{sched}"),
    *execute_cases("execute", "/workflows/{wf}/execute", async_=False),
    *execute_cases("execute_async", "/workflows/{wf}/execute_async", async_=True),
    *webhook_cases(
        "create_webhook",
        "POST",
        "/webhooks",
        {"url": "https://example.com/h", "events": ["workflow.created"]},
    ),
    *webhook_cases("update_webhook", "PUT", "/webhooks/{wh}", {}),
    *list_cases(),
    *raw_cases(),
    *other_cases(),
]


def test_the_suite_is_large_and_its_ids_unique() -> None:
    """At least 300 bad requests, each named once."""
    assert len(CASES) >= 300
    assert len({c.id for c in CASES}) == len(CASES)


class Live(NamedTuple):
    client: httpx.Client
    ids: dict[str, str]
    token: str
    db: str
    server: Server


@pytest.fixture(scope="module", params=BACKENDS)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """``abi-engine serve`` on one backend, with one of each resource to aim at."""
    tmp = tmp_path_factory.mktemp("bad-input")
    schema_name = None
    if request.param == "sqlite":
        db = str(tmp / "abi.db")
    else:
        pg: str = request.getfixturevalue("postgres_server")
        schema_name, db = create_schema(pg)
    minted = run_cli("token", "create", "--db", db, "--user", "usr_bad", cwd=tmp)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    server = Server(
        "serve",
        "--db",
        db,
        "--port",
        "0",
        "--rate-limit",
        "0",
        "--log-level",
        "warning",
        cwd=tmp,
        env=_env(),
    )
    try:
        url = server.wait_serving()
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as client:
            wf = _ok(client.post("/workflows", json=WORKFLOW))["id"]
            _ok(client.post(f"/workflows/{wf}/activate"))
            sched = _ok(client.post(f"/workflows/{wf}/schedules", json=SCHEDULE))["id"]
            hook = {"url": "https://example.com/h", "events": ["workflow.created"]}
            wh = _ok(client.post("/webhooks", json=hook))["id"]
            ex = _ok(client.post(f"/workflows/{wf}/execute", json={}))["execution_id"]
            ids = {"wf": wf, "sched": sched, "wh": wh, "exec": ex}
            yield Live(client, ids, token, db, server)
        server.stop()
        assert "Traceback" not in server.output(), server.output()
    finally:
        server.close()
        if schema_name is not None:
            drop_schema(request.getfixturevalue("postgres_server"), schema_name)


def _ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, response.text
    return response.json()["data"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request_gets_the_contract_error(live: Live, case: Case) -> None:
    """The request answers the case's status and code, in the error envelope, naming the
    field; never a 5xx."""
    path = case.path.format(**live.ids)
    kwargs: dict[str, Any] = {"params": case.query}
    if case.raw is not None:
        kwargs["content"] = case.raw
        kwargs["headers"] = {"Content-Type": "application/json"}
    elif case.method != "GET":
        kwargs["json"] = case.body
    response = live.client.request(case.method, path, **kwargs)
    assert response.status_code == case.status, response.text
    body = response.json()
    assert set(body) == {"status", "error"}, body
    assert body["status"] == "error"
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == case.code, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    if case.field is not None:
        field = str(body["error"]["details"].get("field", ""))
        assert field == case.field or field.startswith((f"{case.field}.", f"{case.field}[")), body


# -- the same through abi.workflows --------------------------------------------------------

PYTHON_CASES = [
    c
    for c in CASES
    if c.raw is None
    and c.method == "POST"
    and c.path in ("/workflows", "/workflows/{wf}/execute", "/workflows/{wf}/schedules")
    and isinstance(c.body, dict)
    and (c.path != "/workflows/{wf}/execute" or set(c.body) <= {"parameters", "execution_options"})
]


def _python_call(case: Case, ids: dict[str, str], **connect: Any) -> None:
    body = dict(case.body)
    if case.path == "/workflows":
        WorkflowManager(**connect).create_workflow(body)
    elif case.path == "/workflows/{wf}/execute":
        WorkflowExecutor(**connect).execute_workflow(
            ids["wf"],
            parameters=body.get("parameters"),
            execution_options=body.get("execution_options"),
        )
    else:
        name = body.pop("name", None)
        schedule_type = body.pop("schedule_type", None)
        WorkflowScheduler(**connect).create_schedule(ids["wf"], name, schedule_type, **body)


@pytest.fixture(scope="module")
def in_process(live: Live) -> Iterator[Engine]:
    """An engine in this process on the server's database (abi.workflows' embedded mode)."""
    engine = Engine(live.db)
    engine.start_blocking()
    try:
        yield engine
    finally:
        engine.close()


@pytest.mark.parametrize("transport", ["in-process", "remote"])
@pytest.mark.parametrize("case", PYTHON_CASES, ids=[c.id for c in PYTHON_CASES])
def test_bad_call_raises_the_contract_error(
    live: Live, in_process: Engine, case: Case, transport: str
) -> None:
    """abi.workflows raises the exception class of the case's code, in-process and remote."""
    connect: dict[str, Any] = {"access_token": live.token}
    if transport == "remote":
        connect["base_url"] = str(live.client.base_url).removesuffix("/api/v1/")
    else:
        connect["engine"] = in_process
    expected = type(errors.error_for_code(case.code, ""))
    with pytest.raises(errors.AbiError) as raised:
        _python_call(case, live.ids, **connect)
    assert type(raised.value) is expected, raised.value
    assert raised.value.http_status == case.status
