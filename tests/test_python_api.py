"""The seed's Python API (``abi.workflows``), in-process and over HTTP.

The seed's "Workflow Management" block runs against an engine given with
``engine=``, one found through ``ABI_ENGINE_DB``, a REST server given with
``base_url=`` and one found through ``ABI_ENGINE_URL``; the same errors and the
same objects come back whichever way the engine is reached.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import uvicorn

import abi._embedded
from abi.workflows import (
    EngineConnectionError,
    WorkflowConfig,
    WorkflowExecutor,
    WorkflowManager,
    WorkflowScheduler,
)
from abi_engine import Engine, Scope, WorkflowType, hookimpl, step
from abi_engine.errors import (
    AbiError,
    Forbidden,
    InternalError,
    InvalidRequest,
    InvalidState,
    InvalidWorkflowConfig,
    Unauthorized,
    WorkflowNotFound,
)
from abi_engine.events import Event
from abi_engine.models import Page, Workflow, WorkflowSummary

# The seed's "Python API / Workflow Management" block, verbatim.
SEED_WORKFLOW_MANAGEMENT = """
from abi.workflows import WorkflowManager, WorkflowConfig

# Initialize the workflow manager
workflow_manager = WorkflowManager(access_token=access_token)

# Create a workflow
workflow_config = WorkflowConfig(
    name="Customer Feedback Analysis",
    description="Analyzes customer feedback and generates insights",
    type="feedback_analysis",
    configuration={
        "nlp_service": "default",
        "sentiment_analysis": True,
        "topic_extraction": True,
        "language": "en",
        "response_threshold": 0.7
    },
    integrations=[
        {"id": "int_zendesk", "required": True},
        {"id": "int_salesforce", "required": False}
    ],
    metadata={
        "department": "customer_success",
        "priority": "medium",
        "version": "1.0"
    }
)

workflow = workflow_manager.create_workflow(workflow_config)
print(f"Created workflow with ID: {workflow.id}")

# Get workflow by ID
workflow = workflow_manager.get_workflow(workflow.id)

# List workflows
workflows = workflow_manager.list_workflows(
    status="active",
    department="customer_success",
    page=1,
    page_size=10
)

for wf in workflows.items:
    print(f"{wf.id}: {wf.name} - Status: {wf.status}")

# Update a workflow
workflow.name = "Enhanced Customer Feedback Analysis"
workflow.description = "Analyzes customer feedback and generates detailed insights with recommendations"
workflow.configuration["nlp_service"] = "advanced"
workflow.configuration["generate_recommendations"] = True
workflow.metadata["priority"] = "high"
workflow.metadata["version"] = "1.1"

updated_workflow = workflow_manager.update_workflow(workflow)

# Activate/deactivate a workflow
workflow_manager.activate_workflow(workflow.id)
workflow_manager.deactivate_workflow(workflow.id)

# Delete a workflow
workflow_manager.delete_workflow(workflow.id)
"""

SEED_CONSTRUCTOR = "WorkflowManager(access_token=access_token)"

CUSTOM_CONFIG = {"steps": [{"name": "wait", "action": "delay", "seconds": 0}]}

LIFECYCLE = [
    "workflow.created",
    "workflow.updated",
    "workflow.activated",
    "workflow.deactivated",
    "workflow.deleted",
]


# -- test plugins -------------------------------------------------------------------------


class FeedbackAnalysisStandIn(WorkflowType):
    """A permissive ``feedback_analysis`` for engines that lack the real one."""

    name = "feedback_analysis"
    description = "Test stand-in: accepts any configuration"

    @step
    async def analyse(self, ctx: Any) -> dict[str, Any]:
        return {}


class StandInPlugin:
    @hookimpl
    def abi_workflow_types(self, register: Callable[[type[WorkflowType]], None]) -> None:
        register(FeedbackAnalysisStandIn)


class EventRecorder:
    """Records every event an engine emits."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)

    def of(self, workflow_id: str) -> list[Event]:
        return [e for e in self.events if e.data.get("id") == workflow_id]


@pytest.fixture(scope="session")
def type_plugins() -> list[object]:
    """The stand-in ``feedback_analysis`` plugin, only when no installed plugin provides it."""
    probe = Engine(":memory:")
    try:
        missing = "feedback_analysis" not in probe.workflow_types
    finally:
        probe.close()
    return [StandInPlugin()] if missing else []


def make_engine(db: Path | str, type_plugins: list[object]) -> tuple[Engine, EventRecorder]:
    recorder = EventRecorder()
    return Engine(db, plugins=[*type_plugins, recorder]), recorder


# -- a real REST server ---------------------------------------------------------------------


@attrs.define
class Server:
    """An engine, the recorder of its events, and the URL it is served at (if served)."""

    base_url: str
    engine: Engine
    recorder: EventRecorder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def serve() -> Iterator[Callable[[Any], str]]:
    """Start uvicorn servers on free 127.0.0.1 ports in background threads; stop them after."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: Any) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", ws="none", http="h11")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for server, _ in running:
            server.should_exit = True
        for _, thread in running:
            thread.join(15)
            assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def server(
    serve: Callable[[Any], str],
    tmp_path_factory: pytest.TempPathFactory,
    type_plugins: list[object],
) -> Iterator[Server]:
    """The REST API (``abi_asgi.create_app``) over an engine on a real SQLite file."""
    import abi_asgi

    engine, recorder = make_engine(tmp_path_factory.mktemp("server") / "server.db", type_plugins)
    try:
        base_url = serve(abi_asgi.create_app(engine))
        yield Server(base_url=base_url, engine=engine, recorder=recorder)
    finally:
        engine.close()


@pytest.fixture
def local_engine(tmp_path: Path, type_plugins: list[object]) -> Iterator[Server]:
    """An in-process engine on a fresh SQLite file (``base_url`` unused)."""
    engine, recorder = make_engine(tmp_path / "local.db", type_plugins)
    try:
        yield Server(base_url="", engine=engine, recorder=recorder)
    finally:
        engine.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No engine in the environment; embedded engines made by the facade closed afterwards."""
    monkeypatch.delenv("ABI_ENGINE_URL", raising=False)
    monkeypatch.delenv("ABI_ENGINE_DB", raising=False)
    monkeypatch.delenv("ABI_ENGINE_ALLOW_PRIVATE_URLS", raising=False)
    try:
        yield monkeypatch
    finally:
        abi._embedded.close_all()


def mint_token(db: Path, scopes: list[Scope] | None = None) -> str:
    """A token stored in the database at ``db``, as ``abi-engine token create`` would make."""
    engine = Engine(db)
    try:
        return engine.tokens.create_token("usr_seed", scopes)
    finally:
        engine.close()


# -- the seed's block -------------------------------------------------------------------------


def run_seed_block(access_token: str, **where: Any) -> dict[str, Any]:
    """Run the seed's block and return its names.

    With ``engine=`` or ``base_url=`` the block's one constructor call gets that
    argument added; without, the block runs exactly as the seed shows it.
    """
    source = SEED_WORKFLOW_MANAGEMENT
    assert source.count(SEED_CONSTRUCTOR) == 1
    if where:
        (name,) = where
        source = source.replace(
            SEED_CONSTRUCTOR, f"WorkflowManager(access_token=access_token, {name}={name})"
        )
    namespace: dict[str, Any] = {"access_token": access_token, **where}
    exec(compile(source, "<seed: Python API / Workflow Management>", "exec"), namespace)
    namespace["workflow_manager"].close()
    return namespace


def assert_seed_effects(namespace: dict[str, Any], recorder: EventRecorder) -> None:
    """The block created, updated, activated, deactivated and deleted one workflow."""
    workflow = namespace["workflow"]
    assert isinstance(workflow, Workflow)
    assert workflow.id.startswith("wf_")
    events = recorder.of(workflow.id)
    assert [e.type for e in events] == LIFECYCLE
    created = events[0].data
    assert created["name"] == "Customer Feedback Analysis"
    assert created["configuration"]["nlp_service"] == "default"
    assert created["metadata"]["version"] == "1.0"
    assert [i["id"] for i in created["integrations"]] == ["int_zendesk", "int_salesforce"]

    updated = namespace["updated_workflow"]
    assert isinstance(updated, Workflow)
    assert updated.id == workflow.id
    assert updated.name == "Enhanced Customer Feedback Analysis"
    assert updated.description == (
        "Analyzes customer feedback and generates detailed insights with recommendations"
    )
    assert updated.configuration["nlp_service"] == "advanced"
    assert updated.configuration["generate_recommendations"] is True
    assert updated.metadata == {
        "department": "customer_success",
        "priority": "high",
        "version": "1.1",
    }
    assert [(i.id, i.required) for i in updated.integrations] == [
        ("int_zendesk", True),
        ("int_salesforce", False),
    ]
    assert events[1].data["configuration"]["nlp_service"] == "advanced"
    assert events[2].data["status"] == "active"
    assert events[3].data["status"] == "inactive"

    page = namespace["workflows"]
    assert isinstance(page, Page)
    assert page.items == []  # the filter asks for active workflows; the new one is inactive
    assert page.pagination.total_items == 0


def assert_deleted(manager: WorkflowManager, workflow_id: str) -> None:
    """Getting the workflow raises ``WorkflowNotFound`` naming it."""
    with pytest.raises(WorkflowNotFound) as info:
        manager.get_workflow(workflow_id)
    assert info.value.details == {"workflow_id": workflow_id}
    assert info.value.http_status == 404


def test_seed_block_with_engine_given(local_engine: Server) -> None:
    """The seed's block works on an in-process engine passed as ``engine=``."""
    token = local_engine.engine.tokens.create_token("usr_seed")
    namespace = run_seed_block(token, engine=local_engine.engine)
    assert_seed_effects(namespace, local_engine.recorder)
    with WorkflowManager(access_token=token, engine=local_engine.engine) as manager:
        assert_deleted(manager, namespace["workflow"].id)


def test_seed_block_with_abi_engine_db(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, type_plugins: list[object]
) -> None:
    """Unchanged, the seed's block uses the embedded engine on ``ABI_ENGINE_DB``."""
    db = tmp_path / "env.db"
    recorder = EventRecorder()
    built: list[str] = []

    def build(path: str) -> Engine:
        built.append(path)
        return Engine(path, plugins=[*type_plugins, recorder])

    clean_env.setattr(abi._embedded, "_build_engine", build)
    clean_env.setenv("ABI_ENGINE_DB", str(db))
    token = mint_token(db)
    namespace = run_seed_block(token)
    assert built == [str(db.resolve())]
    assert_seed_effects(namespace, recorder)
    with WorkflowManager(access_token=token) as manager:
        assert_deleted(manager, namespace["workflow"].id)
    assert built == [str(db.resolve())]  # one engine, shared by every facade object


@pytest.mark.parametrize(
    ("value", "allowed"), [("1", True), ("yes", True), ("0", False), ("", False)]
)
def test_embedded_engine_reads_allow_private_urls(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, value: str, allowed: bool
) -> None:
    """ABI_ENGINE_ALLOW_PRIVATE_URLS applies to the embedded engine as it does to serve."""
    clean_env.setenv("ABI_ENGINE_DB", str(tmp_path / "env.db"))
    clean_env.setenv("ABI_ENGINE_ALLOW_PRIVATE_URLS", value)
    token = mint_token(tmp_path / "env.db")
    with WorkflowManager(access_token=token) as manager:
        engine = abi._embedded.embedded_engine(str(tmp_path / "env.db"))
        assert engine.allow_private_urls is allowed
        assert manager is not None


def test_seed_block_with_base_url(server: Server) -> None:
    """The seed's block works on a remote REST API passed as ``base_url=``."""
    token = server.engine.tokens.create_token("usr_seed")
    namespace = run_seed_block(token, base_url=server.base_url)
    assert_seed_effects(namespace, server.recorder)
    with WorkflowManager(access_token=token, base_url=server.base_url) as manager:
        assert_deleted(manager, namespace["workflow"].id)


def test_seed_block_with_abi_engine_url(clean_env: pytest.MonkeyPatch, server: Server) -> None:
    """Unchanged, the seed's block uses the REST API named by ``ABI_ENGINE_URL``."""
    clean_env.setenv("ABI_ENGINE_URL", server.base_url)
    token = server.engine.tokens.create_token("usr_seed")
    namespace = run_seed_block(token)
    assert_seed_effects(namespace, server.recorder)
    with WorkflowManager(access_token=token) as manager:
        assert_deleted(manager, namespace["workflow"].id)
    assert abi._embedded._ENGINES == {}  # no embedded engine was opened


def test_default_engine_is_abi_engine_db_in_cwd(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no engine, base URL or environment, the facade opens ``./abi-engine.db``."""
    clean_env.chdir(tmp_path)
    db = tmp_path / "abi-engine.db"
    assert not db.exists()
    manager = WorkflowManager(access_token=None)
    assert db.exists()
    with pytest.raises(Unauthorized):
        manager.list_workflows()
    token = mint_token(db)
    manager = WorkflowManager(access_token=token)
    created = manager.create_workflow(
        WorkflowConfig(name="Default", type="custom", configuration=CUSTOM_CONFIG)
    )
    executor = WorkflowExecutor(access_token=token)
    assert executor._transport.engine is manager._transport.engine  # type: ignore[attr-defined]
    assert [w.id for w in manager.list_workflows().items] == [created.id]


# -- same errors, same objects -----------------------------------------------------------------

Make = Callable[..., WorkflowManager]
ALL_SCOPES = object()


def _clients(server: Server, kind: str) -> Make:
    """``make(token=..., scopes=...)``: a manager of ``kind`` on the server's engine."""
    engine = server.engine

    def make(token: Any = ALL_SCOPES, scopes: list[Scope] | None = None) -> WorkflowManager:
        if token is ALL_SCOPES or scopes is not None:
            token = engine.tokens.create_token("usr_errors", scopes)
        if kind == "local":
            return WorkflowManager(access_token=token, engine=engine)
        return WorkflowManager(access_token=token, base_url=server.base_url)

    return make


def _twice_active(make: Make) -> None:
    manager = make()
    workflow = manager.create_workflow(
        WorkflowConfig(name="Twice", type="custom", configuration=CUSTOM_CONFIG)
    )
    manager.activate_workflow(workflow.id)
    manager.activate_workflow(workflow.id)


ERROR_CASES = [
    pytest.param(
        lambda make: make().get_workflow("wf_missing"),
        WorkflowNotFound,
        {"workflow_id": "wf_missing"},
        id="workflow-not-found",
    ),
    pytest.param(
        lambda make: make().delete_workflow("wf_missing"),
        WorkflowNotFound,
        {"workflow_id": "wf_missing"},
        id="delete-missing",
    ),
    pytest.param(
        lambda make: make().get_workflow("wf_a/../b"),
        WorkflowNotFound,
        {"workflow_id": "wf_a/../b"},
        id="id-with-slash",
    ),
    pytest.param(
        lambda make: make().get_workflow(""),
        WorkflowNotFound,
        {"workflow_id": ""},
        id="empty-id",
    ),
    pytest.param(
        lambda make: make().create_workflow(WorkflowConfig(name="X", type="no_such_type")),
        InvalidWorkflowConfig,
        {"field": "type"},
        id="unknown-type",
    ),
    pytest.param(
        lambda make: make().create_workflow(
            WorkflowConfig(name="X", type="custom", configuration={"steps": []})
        ),
        InvalidWorkflowConfig,
        {"field": "configuration.steps"},
        id="bad-configuration",
    ),
    pytest.param(
        lambda make: make().list_workflows(page_size=1000),
        InvalidRequest,
        {"field": "page_size"},
        id="page-size",
    ),
    pytest.param(
        lambda make: make().list_workflows(status="paused"),
        InvalidRequest,
        {"field": "status"},
        id="status-filter",
    ),
    pytest.param(
        lambda make: make().create_workflow({"name": "No type"}),
        InvalidRequest,
        {"field": "type"},
        id="missing-field",
    ),
    pytest.param(
        lambda make: make().create_workflow(
            WorkflowConfig(name="X", type="custom", configuration={"not_json": {1, 2}})
        ),
        InvalidRequest,
        {"field": "(body)"},
        id="not-json",
    ),
    pytest.param(
        lambda make: make(token="abi_not_a_token").list_workflows(),
        Unauthorized,
        {},
        id="unknown-token",
    ),
    pytest.param(
        lambda make: make(token=None).list_workflows(),
        Unauthorized,
        {},
        id="no-token",
    ),
    pytest.param(
        lambda make: make(scopes=[Scope.WORKFLOWS_READ]).create_workflow(
            WorkflowConfig(name="X", type="custom", configuration=CUSTOM_CONFIG)
        ),
        Forbidden,
        {"required_scope": "workflows:write"},
        id="missing-scope",
    ),
    pytest.param(_twice_active, InvalidState, {}, id="already-active"),
]


@pytest.mark.parametrize(("trigger", "expected", "details"), ERROR_CASES)
def test_errors_are_the_same_in_process_and_remote(
    server: Server,
    trigger: Callable[[Make], None],
    expected: type[AbiError],
    details: dict[str, Any],
) -> None:
    """Each error comes back as the same class, code, status, message and details both ways."""
    seen = []
    for kind in ("local", "remote"):
        with pytest.raises(expected) as info:
            trigger(_clients(server, kind))
        exc = info.value
        assert type(exc) is expected
        assert exc.code == expected.code
        assert exc.http_status == expected.http_status
        assert details.items() <= exc.details.items()
        # Workflows made by a trigger differ by id only.
        seen.append(re.sub(r"wf_[0-9a-z]{26}", "wf_<id>", json.dumps([exc.message, exc.details])))
    local, remote = seen
    assert local == remote


def test_objects_are_the_same_in_process_and_remote(server: Server) -> None:
    """One stored workflow reads as equal objects in-process and over HTTP."""
    local = _clients(server, "local")()
    remote = _clients(server, "remote")()
    created = remote.create_workflow(
        WorkflowConfig(
            name="Same both ways",
            type="custom",
            configuration=CUSTOM_CONFIG,
            integrations=[{"id": "int_same", "required": True}],
            metadata={"department": "equality", "nested": {"a": [1, 2.5, None]}},
        )
    )
    got_local, got_remote = local.get_workflow(created.id), remote.get_workflow(created.id)
    assert isinstance(got_local, Workflow)
    assert got_local == got_remote == created

    page_local = local.list_workflows(department="equality", sort_by="name", sort_order="asc")
    page_remote = remote.list_workflows(department="equality", sort_by="name", sort_order="asc")
    assert page_local == page_remote
    assert [type(w) for w in page_local.items] == [WorkflowSummary]
    assert page_local.pagination.total_items == 1

    got_remote.metadata["owner"] = "remote"
    updated_local = local.update_workflow(got_remote)
    assert updated_local == remote.get_workflow(created.id)
    assert updated_local.metadata["owner"] == "remote"

    activated = local.activate_workflow(created.id)
    assert activated.status == "active"
    assert remote.get_workflow(created.id).activated_at == activated.activated_at
    assert remote.delete_workflow(created.id).deleted is True
    assert_deleted(local, created.id)


# -- transports ------------------------------------------------------------------------------


def test_unreachable_server_raises_connection_error() -> None:
    """A base URL nobody listens on raises ``EngineConnectionError`` naming the URL."""
    base_url = f"http://127.0.0.1:{free_port()}"
    manager = WorkflowManager(access_token="abi_x", base_url=base_url)
    with manager, pytest.raises(EngineConnectionError) as info:
        manager.get_workflow("wf_1")
    assert isinstance(info.value, ConnectionError)
    assert info.value.url == f"{base_url}/api/v1/workflows/wf_1"
    assert base_url in str(info.value)


async def _not_abi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that answers everything with plain text or foreign JSON."""
    if scope["type"] != "http":
        return
    json_answer = scope["path"].startswith("/json")
    body = b'{"hello": "world"}' if json_answer else b"Bad Gateway"
    content_type = b"application/json" if json_answer else b"text/plain"
    await send(
        {
            "type": "http.response.start",
            "status": 200 if json_answer else 502,
            "headers": [(b"content-type", content_type)],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(("prefix", "status"), [("", 502), ("/json", 200)])
def test_foreign_answer_raises_internal_error(
    serve: Callable[[Any], str], prefix: str, status: int
) -> None:
    """An answer that is not an abi-engine envelope raises ``InternalError`` with its status."""
    base_url = serve(_not_abi)
    manager = WorkflowManager(access_token="abi_x", base_url=base_url + prefix)
    with manager, pytest.raises(InternalError) as info:
        manager.list_workflows()
    assert info.value.details["http_status"] == status
    assert info.value.details["url"].startswith(f"{base_url}{prefix}/api/v1/workflows?")


def test_close_keeps_a_given_engine_open(local_engine: Server) -> None:
    """Leaving a facade's ``with`` block leaves an engine given with ``engine=`` usable."""
    token = local_engine.engine.tokens.create_token("usr_close")
    for cls in (WorkflowManager, WorkflowExecutor, WorkflowScheduler):
        with cls(access_token=token, engine=local_engine.engine) as client:
            assert isinstance(client, cls)
    manager = WorkflowManager(access_token=token, engine=local_engine.engine)
    assert manager.list_workflows().pagination.total_items == 0


def test_remote_clients_close_their_connections(server: Server) -> None:
    """Every facade class constructs remotely and closes its HTTP client on ``with`` exit."""
    for cls in (WorkflowManager, WorkflowExecutor, WorkflowScheduler):
        with cls(access_token="abi_x", base_url=server.base_url) as client:
            http = client._transport._client  # type: ignore[attr-defined]
            assert not http.is_closed
        assert http.is_closed


def test_engine_and_base_url_together_are_refused(local_engine: Server) -> None:
    """Giving both ``engine=`` and ``base_url=`` is a ``ValueError``."""
    with pytest.raises(ValueError, match="not both"):
        WorkflowManager(access_token="x", engine=local_engine.engine, base_url="http://x")
