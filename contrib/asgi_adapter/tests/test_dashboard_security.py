"""The dashboard's security, over HTTP against the real app (httpx in-process): no page
without sign-in, cookie flags, CSRF on every form, escaping of every user-controlled text,
sign-out and expiry, no open redirect."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from abi_asgi import create_app
from abi_asgi.dashboard import SessionStore
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from abi_engine import Engine, StepContext, WorkflowType, hookimpl, step
from abi_engine.auth import Principal
from abi_engine.testing import run_workflow
from abi_engine.types import approval_signal

pytestmark = pytest.mark.anyio

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"
_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z_]+)?}")


def _ui(app: Starlette) -> Starlette:
    mount = next(r for r in app.router.routes if isinstance(r, Mount) and r.path == "/ui")
    ui = mount.app
    assert isinstance(ui, Starlette)
    return ui


async def _seed(engine: Engine, token: str) -> dict[str, str]:
    principal: Principal = engine.tokens.authenticate(token)
    wf = await engine.workflows.create(
        {
            "name": "Totals " + XSS,
            "description": XSS,
            "type": "custom",
            "metadata": {"note": XSS, XSS: 1},
            "configuration": {
                "steps": [
                    {
                        "name": "look",
                        "action": "transform",
                        "expressions": {"v": "parameters['" + XSS.replace("'", "") + "']"},
                    }
                ]
            },
        },
        actor=principal,
    )
    await engine.workflows.activate(wf.id)
    execution = await engine.executions.execute(wf.id, {"label": XSS}, wait=False, actor=principal)
    await engine.executions.wait(execution.execution_id, 30)
    schedule = await engine.schedules.create(
        wf.id,
        {
            "name": "Sched " + XSS,
            "description": XSS,
            "schedule_type": "interval",
            "interval_value": 1,
            "interval_unit": "hours",
            "parameters": {"label": XSS},
        },
        actor=principal,
    )
    hook = await engine.webhooks.create(
        {"url": "https://hooks.example.com/in", "events": ["workflow.created"], "description": XSS}
    )
    return {
        "workflow_id": wf.id,
        "execution_id": execution.execution_id,
        "schedule_id": schedule.id,
        "webhook_id": hook.id,
        "delivery_id": "dlv_x",
        "decision": "approve",
        "state": "disable",
    }


async def _sign_in(client: httpx.AsyncClient, token: str, next_url: str = "") -> httpx.Response:
    form = await client.get("/ui/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf is not None
    return await client.post(
        "/ui/login", data={"token": token, "csrf_token": csrf.group(1), "next": next_url}
    )


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


@pytest.fixture
def idle_engine(backend_engine: Engine) -> Engine:
    """These tests run on every engine backend (ABI_ENGINE_TEST_ENGINE_BACKENDS)."""
    return backend_engine


@pytest.fixture
def client(app: Starlette, make_client: Callable[..., httpx.AsyncClient]) -> httpx.AsyncClient:
    """A browser-like client: no token header, keeps cookies."""
    return make_client(app)


async def test_no_page_without_sign_in(
    app: Starlette, engine: Engine, token: str, client: httpx.AsyncClient
) -> None:
    """Every dashboard route, each of its methods, without a session: GET goes to the
    sign-in form (nothing of the records shown), POST is 401; only the sign-in form and
    the static files answer."""
    ids = await _seed(engine, token)
    walked = 0
    for route in _ui(app).router.routes:
        if isinstance(route, Mount):  # static files: public, hold no data
            assert route.path == "/static"
            continue
        assert isinstance(route, Route)
        path = "/ui" + _PARAM.sub(lambda m: ids.get(m.group(1), "x"), route.path)
        for method in sorted(route.methods or ()):
            response = await client.request(method, path, data={"x": "1"})
            walked += 1
            assert "Totals" not in response.text, (method, path)
            assert ids["workflow_id"] not in response.text, (method, path)
            if route.path == "/login":
                assert response.status_code in (200, 403), (method, path)
            elif method in ("GET", "HEAD"):
                assert response.status_code == 303, (method, path)
                assert response.headers["location"].startswith("/ui/login?next=")
            elif route.path == "/logout":
                assert response.status_code == 303, (method, path)
            else:
                assert response.status_code == 401, (method, path)
    assert walked >= 20
    assert (await client.get("/ui/static/htmx.min.js")).status_code == 200


async def test_cookie_flags_and_sign_out(token: str, client: httpx.AsyncClient) -> None:
    """The session cookie is HttpOnly, SameSite=Strict, scoped to /ui/, expiring; sign-out
    forgets the session on the server, so a replayed cookie is worthless."""
    signed = await _sign_in(client, token, "/ui/executions")
    assert signed.status_code == 303
    assert signed.headers["location"] == "/ui/executions"
    cookie = next(
        h for h in signed.headers.get_list("set-cookie") if h.startswith("abi_dashboard_session=")
    )
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= flags
    assert "samesite=strict" in cookie.lower()
    assert "path=/ui/" in cookie.lower()
    assert "secure" not in flags  # plain HTTP here; see the HTTPS test
    session = client.cookies["abi_dashboard_session"]
    overview = await client.get("/ui/")
    assert overview.status_code == 200
    assert overview.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in overview.headers["content-security-policy"]
    out = await client.post("/ui/logout", data={"csrf_token": _csrf(overview.text)})
    assert out.status_code == 303
    client.cookies.set("abi_dashboard_session", session, path="/ui/")
    again = await client.get("/ui/")
    assert again.status_code == 303
    assert again.headers["location"].startswith("/ui/login")


async def test_secure_cookie_over_https(
    app: Starlette, token: str, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    client = make_client(app)
    client.base_url = httpx.URL("https://testserver")
    signed = await _sign_in(client, token)
    cookie = next(
        h for h in signed.headers.get_list("set-cookie") if h.startswith("abi_dashboard_session=")
    )
    assert "secure" in cookie.lower()


async def test_csrf_required_on_every_action(
    app: Starlette, engine: Engine, token: str, client: httpx.AsyncClient
) -> None:
    """Each action refuses a missing or wrong CSRF token, and a foreign Origin, with 403 and
    changes nothing; with the session's token the action runs."""
    ids = await _seed(engine, token)
    await _sign_in(client, token)
    csrf = _csrf((await client.get("/ui/")).text)
    actions = [
        r.path
        for r in _ui(app).router.routes
        if isinstance(r, Route) and "POST" in (r.methods or ()) and r.path != "/login"
    ]
    assert len(actions) >= 6
    for template in actions:
        path = "/ui" + _PARAM.sub(lambda m: ids.get(m.group(1), "x"), template)
        for data, headers in (
            ({}, {}),
            ({"csrf_token": "wrong"}, {}),
            ({"csrf_token": csrf}, {"origin": "https://evil.example"}),
        ):
            response = await client.post(path, data=data, headers=headers)
            assert response.status_code == 403, (path, data, headers)
    schedule = await engine.schedules.get(ids["schedule_id"])
    assert schedule.enabled
    done = await client.post(
        f"/ui/schedules/{ids['schedule_id']}/disable", data={"csrf_token": csrf}
    )
    assert done.status_code == 303
    assert not (await engine.schedules.get(ids["schedule_id"])).enabled


async def test_sign_in_form_has_its_own_csrf(token: str, client: httpx.AsyncClient) -> None:
    """Signing in needs the sign-in form's token (double submit): a forged sign-in (login
    CSRF) is refused; a wrong access token is 401 and makes no session."""
    forged = await client.post("/ui/login", data={"token": token, "csrf_token": "x"})
    assert forged.status_code == 403
    assert "abi_dashboard_session" not in client.cookies
    wrong = await _sign_in(client, "abi_not-a-token")
    assert wrong.status_code == 401
    assert "not valid" in wrong.text
    assert "abi_dashboard_session" not in client.cookies


@pytest.mark.parametrize(
    "next_url", ["https://evil.example/", "//evil.example/ui/", "/api/v1/workflows", "/ui\\x"]
)
async def test_no_open_redirect(token: str, client: httpx.AsyncClient, next_url: str) -> None:
    signed = await _sign_in(client, token, next_url)
    assert signed.headers["location"] == "/ui/"


async def test_user_text_is_escaped_everywhere(
    engine: Engine, token: str, client: httpx.AsyncClient
) -> None:
    """Workflow names, descriptions, metadata keys and values, parameters, step errors,
    schedule and webhook texts: shown escaped on every page, never as markup."""
    ids = await _seed(engine, token)
    execution = await engine.executions.get(ids["execution_id"])
    assert execution.steps is not None
    assert execution.steps[0].error is not None
    assert "<script>" in execution.steps[0].error.message  # the error carries the payload
    await _sign_in(client, token)
    pages = [
        "/ui/",
        "/ui/workflows",
        f"/ui/workflows/{ids['workflow_id']}",
        "/ui/executions",
        f"/ui/executions/{ids['execution_id']}",
        "/ui/approvals",
        "/ui/schedules",
        f"/ui/schedules/{ids['schedule_id']}",
        "/ui/webhooks",
        f"/ui/webhooks/{ids['webhook_id']}",
    ]
    shown = 0
    for path in pages:
        response = await client.get(path)
        assert response.status_code == 200, path
        assert "<script>alert" not in response.text, path
        assert "<img src=x" not in response.text, path
        shown += response.text.count("&lt;script&gt;alert")
    assert shown >= 10
    page = (await client.get(f"/ui/executions/{ids['execution_id']}")).text
    assert "&lt;script&gt;" in page.split('class="step-error"')[1][:400]


async def test_scopes_follow_the_token(
    engine: Engine, token: str, make_client: Callable[..., httpx.AsyncClient], app: Starlette
) -> None:
    """A token with executions:read only: no Workflows, Schedules or Webhooks in the menu,
    403 on their pages, its error names the scope."""
    ids = await _seed(engine, token)
    reader = engine.tokens.create_token("usr_reader", ["executions:read"])
    client = make_client(app)
    await _sign_in(client, reader)
    overview = await client.get("/ui/")
    assert overview.status_code == 200
    assert ">Executions<" in overview.text
    assert ">Workflows<" not in overview.text
    assert ">Webhooks<" not in overview.text
    for path in (
        "/ui/workflows",
        "/ui/schedules",
        "/ui/webhooks",
        f"/ui/schedules/{ids['schedule_id']}",
    ):
        refused = await client.get(path)
        assert refused.status_code == 403, path
        assert "FORBIDDEN" in refused.text
    assert (await client.get(f"/ui/executions/{ids['execution_id']}")).status_code == 200


async def test_revoked_token_ends_its_sessions(
    engine: Engine, token: str, client: httpx.AsyncClient
) -> None:
    other = engine.tokens.create_token("usr_temp")
    await _sign_in(client, other)
    assert (await client.get("/ui/")).status_code == 200
    principal = engine.tokens.authenticate(other)
    assert principal.token_id is not None
    engine.tokens.revoke_token(principal.token_id)
    assert (await client.get("/ui/")).status_code == 303


def test_sessions_expire() -> None:
    now = [1000.0]
    store = SessionStore(ttl_seconds=60, clock=lambda: now[0])
    session = store.create("abi_x")
    assert store.get(session.id) == session
    now[0] += 59
    assert store.get(session.id) is not None
    now[0] += 2
    assert store.get(session.id) is None
    assert len(store) == 0
    assert not session.csrf_ok(None)
    assert not session.csrf_ok("nope")
    assert session.csrf_ok(session.masked_csrf())
    assert not session.csrf_ok(session.csrf)  # pages show it masked; bare, it is refused


def test_idle_sessions_end() -> None:
    """A session unused for idle_seconds ends, however far its absolute expiry; each
    request moves the idle deadline."""
    now = [1000.0]
    store = SessionStore(ttl_seconds=3600, idle_seconds=100, clock=lambda: now[0])
    session = store.create("abi_x")
    for _ in range(5):  # used every 90 s: alive for 450 s, past one idle period
        now[0] += 90
        assert store.get(session.id) == session
    now[0] += 100
    assert store.get(session.id) is None
    other = store.create("abi_y")
    now[0] += 101
    assert len(store) == 0  # pruned without being asked for
    assert store.get(other.id) is None
    with pytest.raises(ValueError, match="idle_seconds"):
        SessionStore(idle_seconds=0)


async def test_dashboard_can_be_left_out(engine: Engine, make_client: Any) -> None:
    client = make_client(create_app(engine, rate_limit=None, dashboard=False))
    response = await client.get("/ui/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


async def test_run_form_starts_an_execution(
    engine: Engine, token: str, client: httpx.AsyncClient
) -> None:
    """The run form's JSON box becomes the execution's parameters; bad JSON is a 400 on the
    workflow's page, naming the field."""
    ids = await _seed(engine, token)
    await _sign_in(client, token)
    page = await client.get(f"/ui/workflows/{ids['workflow_id']}")
    assert "Run workflow" in page.text
    bad = await client.post(
        f"/ui/workflows/{ids['workflow_id']}/run",
        data={"csrf_token": _csrf(page.text), "parameters_json": "{nope"},
    )
    assert bad.status_code == 400
    assert "not valid JSON" in bad.text
    ran = await client.post(
        f"/ui/workflows/{ids['workflow_id']}/run",
        data={"csrf_token": _csrf(page.text), "parameters_json": '{"n": 7}'},
    )
    assert ran.status_code == 303
    execution_id = ran.headers["location"].rsplit("/", 1)[1]
    assert (await engine.executions.get(execution_id)).parameters == {"n": 7}


class _Remembers(WorkflowType):
    """Saves its progress, then waits for an approval."""

    name = "remembers"

    @step
    async def remember(self, ctx: StepContext) -> Any:
        if ctx.progress is None:
            await ctx.save_progress({"done_items": 3, "note": XSS})
        return ctx.wait_for_signal(approval_signal(1))


class _RemembersPlugin:
    @hookimpl
    def abi_workflow_types(self, register: Any) -> None:
        register(_Remembers)


async def test_execution_page_shows_saved_progress_and_the_approval_inbox_lists_it(
    tmp_path: Path, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """A waiting execution's page shows what its step saved (escaped), read through
    executions.details; the approvals inbox lists it."""
    engine = Engine(tmp_path / "p.db", plugins=[_RemembersPlugin()])
    try:
        async with engine:
            token = engine.tokens.create_token("usr_test")
            execution = await run_workflow(engine, "remembers")
            client = make_client(create_app(engine, rate_limit=None))
            await _sign_in(client, token)
            page = await client.get(f"/ui/executions/{execution.execution_id}")
            assert page.status_code == 200
            assert "Saved progress" in page.text
            assert "done_items" in page.text
            assert XSS not in page.text  # escaped like every user text
            inbox = await client.get("/ui/approvals")
            assert execution.execution_id in inbox.text
    finally:
        engine.close()


async def test_rerun_pause_and_resume_buttons(
    engine: Engine, token: str, make_client: Callable[..., httpx.AsyncClient], app: Starlette
) -> None:
    """An ended execution's page has a Rerun form (CSRF-protected, executions:write only):
    it starts a rerun shown with a link back, and the original lists it. A queued
    execution has Pause; paused, Resume. A reader sees none of them."""
    ids = await _seed(engine, token)
    client = make_client(app)
    await _sign_in(client, token)
    url = f"/ui/executions/{ids['execution_id']}"
    page = await client.get(url)
    assert 'id="rerun"' in page.text
    assert 'id="pause"' not in page.text
    started = await client.post(
        f"{url}/rerun", data={"csrf_token": _csrf(page.text), "from_step": "0"}
    )
    assert started.status_code == 303
    rerun_id = started.headers["location"].rsplit("/", 1)[1]
    rerun = await engine.executions.get(rerun_id)
    assert rerun.rerun_of == ids["execution_id"]
    shown = await client.get(f"/ui/executions/{rerun_id}")
    assert f'href="/ui/executions/{ids["execution_id"]}"' in shown.text
    assert rerun_id in (await client.get(url)).text.split('id="reruns"')[1]
    await engine.executions.pause_workflow(ids["workflow_id"])
    held = await engine.executions.execute(ids["workflow_id"], {}, wait=False)
    held_url = f"/ui/executions/{held.execution_id}"
    page = await client.get(held_url)
    assert 'id="pause"' in page.text
    assert ">paused<" in page.text  # why it is queued
    paused = await client.post(f"{held_url}/pause", data={"csrf_token": _csrf(page.text)})
    assert paused.status_code == 303
    assert (await engine.executions.get(held.execution_id)).status.value == "paused"
    page = await client.get(held_url)
    assert 'id="resume"' in page.text
    resumed = await client.post(f"{held_url}/resume", data={"csrf_token": _csrf(page.text)})
    assert resumed.status_code == 303
    assert (await engine.executions.get(held.execution_id)).status.value == "queued"
    reader = make_client(app)
    await _sign_in(reader, engine.tokens.create_token("usr_reader", ["executions:read"]))
    for path in (url, held_url):
        text = (await reader.get(path)).text
        assert 'id="rerun"' not in text
        assert 'id="pause"' not in text
    await engine.executions.cancel(held.execution_id)


class _Spawns(WorkflowType):
    """Runs the workflow ``parameters.child`` as a child execution."""

    name = "spawns"

    @step
    async def spawn(self, ctx: StepContext) -> Any:
        return await ctx.run_workflow(ctx.parameters["child"], {"label": XSS})


class _SpawnsPlugin:
    @hookimpl
    def abi_workflow_types(self, register: Any) -> None:
        register(_Spawns)


async def test_execution_page_lists_child_executions(
    tmp_path: Path, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """A parent's page lists its child executions, each linking to its page; a child's
    page links back to its parent."""
    engine = Engine(tmp_path / "c.db", plugins=[_SpawnsPlugin()])
    try:
        async with engine:
            token = engine.tokens.create_token("usr_test")
            ids = await _seed(engine, token)
            parent_wf = await engine.workflows.create(
                {"name": "Parent", "type": "spawns", "configuration": {}}
            )
            await engine.workflows.activate(parent_wf.id)
            parent = await engine.executions.execute(
                parent_wf.id, {"child": ids["workflow_id"]}, wait=False
            )
            await engine.executions.wait(parent.execution_id, 30)
            children = await engine.executions.list(parent_execution_id=parent.execution_id)
            (child,) = children.items
            client = make_client(create_app(engine, rate_limit=None))
            await _sign_in(client, token)
            page = (await client.get(f"/ui/executions/{parent.execution_id}")).text
            assert child.execution_id in page.split('id="children"')[1]
            child_page = (await client.get(f"/ui/executions/{child.execution_id}")).text
            assert f'href="/ui/executions/{parent.execution_id}"' in child_page
    finally:
        engine.close()


async def test_a_schedule_page_lists_its_next_runs(
    engine: Engine, token: str, client: httpx.AsyncClient
) -> None:
    """The schedule's next five runs, in its zone and the viewer's; a disabled schedule
    says how to see them."""
    ids = await _seed(engine, token)
    await engine.schedules.update(ids["schedule_id"], {"timezone": "Asia/Kolkata"})
    preview = await engine.schedules.preview(ids["schedule_id"], count=5)
    await _sign_in(client, token)
    page = await client.get(f"/ui/schedules/{ids['schedule_id']}")
    assert page.status_code == 200
    table = page.text[page.text.index('id="next-runs"') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 1 + 5
    assert " IST" in table  # in the schedule's zone
    first = preview.items[0].run_at.strftime("%Y-%m-%d %H:%M")
    assert first in page.text
    await engine.schedules.update(ids["schedule_id"], {"enabled": False})
    disabled = await client.get(f"/ui/schedules/{ids['schedule_id']}")
    assert 'id="next-runs"' not in disabled.text
    assert "enable it to see its next runs" in disabled.text
