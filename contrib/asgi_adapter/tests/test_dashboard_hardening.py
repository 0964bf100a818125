"""The dashboard under attack and abuse, over HTTP against the real app (httpx in-process):
the adapter's rate limit, session floods and rotation, cross-site requests without an
Origin, htmx polls after the session ended, and bad query parameters on every page (a
clear 4xx page, never a 500 and never silently something else)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import anyio
import httpx
import pytest
from abi_asgi import RateLimit, create_app
from abi_asgi.dashboard import SessionStore, create_dashboard
from abi_asgi.dashboard._session import mask, unmasks_to
from dashboard_site import Receiver
from starlette.applications import Starlette
from starlette.routing import Mount
from test_dashboard_security import _csrf, _seed, _sign_in

from abi_engine import Engine
from abi_engine.auth import Principal

pytestmark = pytest.mark.anyio


@pytest.fixture
def idle_engine(backend_engine: Engine) -> Engine:
    """These tests run on every engine backend (ABI_ENGINE_TEST_ENGINE_BACKENDS)."""
    return backend_engine


Client = Callable[..., httpx.AsyncClient]


def _alert(response: httpx.Response) -> str:
    found = re.search(r'class="error" role="alert">([^<]*)<', response.text)
    assert found is not None, response.text[:300]
    return found.group(1)


# -- the adapter's rate limit --------------------------------------------------------------


async def test_sign_in_attempts_are_rate_limited(engine: Engine, make_client: Client) -> None:
    """Guessing tokens at the sign-in form costs the client address's bucket, as a request
    with a bad token does at /api/v1: past the burst, 429 with Retry-After."""
    app = create_app(engine, rate_limit=RateLimit(requests_per_second=0.01, burst=3))
    client = make_client(app)
    form = await client.get("/ui/login")
    csrf = _csrf(form.text)
    statuses = []
    for _ in range(6):
        answer = await client.post("/ui/login", data={"token": "abi_guess", "csrf_token": csrf})
        statuses.append(answer.status_code)
    assert statuses[0] == 401
    assert statuses[-1] == 429, statuses
    assert int(answer.headers["retry-after"]) >= 1
    assert answer.headers["cache-control"] == "no-store"
    assert "RATE_LIMIT_EXCEEDED" in answer.text
    # the same address is refused at /api/v1 too: one bucket per caller
    api = await client.get("/api/v1/workflows", headers={"authorization": "Bearer abi_guess"})
    assert api.status_code == 429


async def test_pages_charge_the_tokens_bucket(
    engine: Engine, token: str, make_client: Client
) -> None:
    """Each page and action costs the signed-in token's bucket, the one /api/v1 charges:
    the dashboard is no way around the adapter's rate limit."""
    app = create_app(engine, rate_limit=RateLimit(requests_per_second=0.01, burst=8))
    browser = make_client(app, client=("127.0.0.2", 5000))
    assert (await _sign_in(browser, token)).status_code == 303
    statuses = [(await browser.get("/ui/executions")).status_code for _ in range(10)]
    assert statuses[0] == 200
    assert statuses[-1] == 429, statuses
    api = make_client(app, token, client=("127.0.0.3", 5000))
    assert (await api.get("/api/v1/workflows")).status_code == 429


# -- sessions -------------------------------------------------------------------------------


async def test_a_sign_in_flood_does_not_sign_others_out(
    engine: Engine, token: str, make_client: Client
) -> None:
    """One user signing in again and again (any valid token will do) keeps at most a few
    sessions of its own: it cannot push other users' sessions out of the bounded store."""
    sessions = SessionStore(max_sessions=20, max_sessions_per_user=4)

    async def authenticate(value: str) -> Principal:
        return engine.tokens.authenticate(value)

    app = Starlette(
        routes=[Mount("/ui", app=create_dashboard(engine, authenticate, sessions=sessions))]
    )
    victim = make_client(app)
    await _sign_in(victim, token)
    assert (await victim.get("/ui/")).status_code == 200
    flooder = engine.tokens.create_token("usr_flood", ["executions:read"])
    for _ in range(50):
        assert (await _sign_in(make_client(app), flooder)).status_code == 303
    assert len(sessions) <= 1 + 4
    assert (await victim.get("/ui/")).status_code == 200


async def test_signing_in_again_ends_the_previous_session(
    engine: Engine, token: str, app: Starlette, make_client: Client
) -> None:
    """A new sign-in in the same browser replaces its session: the old id is worthless."""
    client = make_client(app)
    await _sign_in(client, token)
    first = client.cookies["abi_dashboard_session"]
    # the sign-in form, still open in another tab, is sent again with another token
    other = engine.tokens.create_token("usr_second", ["executions:read"])
    tab = make_client(app)
    csrf = _csrf((await tab.get("/ui/login")).text)
    client.cookies.set("abi_dashboard_login", tab.cookies["abi_dashboard_login"], path="/ui/")
    again = await client.post("/ui/login", data={"token": other, "csrf_token": csrf})
    assert again.status_code == 303
    assert client.cookies["abi_dashboard_session"] != first
    replay = make_client(app)
    replay.cookies.set("abi_dashboard_session", first, path="/ui/")
    assert (await replay.get("/ui/")).status_code == 303


def test_session_ids_stay_out_of_reprs_and_keys() -> None:
    """A session's id is a bearer secret: not in its repr (logs, tracebacks), and the store
    keeps only a digest of it, so looking one up compares no secret byte by byte."""
    store = SessionStore()
    session = store.create("abi_secret-token")
    assert session.id not in repr(session)
    assert "abi_secret-token" not in repr(session)
    assert store.get(session.id) == session
    assert session.id not in repr(vars(store))
    assert store.get(session.id[:-1] + ("A" if session.id[-1] != "A" else "B")) is None


async def test_a_mistyped_token_keeps_where_to_go(
    engine: Engine, token: str, app: Starlette, make_client: Client
) -> None:
    """After a wrong token, the form shown again still leads to the page first asked for."""
    client = make_client(app)
    csrf = _csrf((await client.get("/ui/login?next=/ui/executions")).text)
    wrong = await client.post(
        "/ui/login", data={"token": "abi_typo", "csrf_token": csrf, "next": "/ui/executions"}
    )
    assert wrong.status_code == 401
    assert 'name="next" value="/ui/executions"' in wrong.text
    right = await client.post(
        "/ui/login",
        data={"token": token, "csrf_token": _csrf(wrong.text), "next": "/ui/executions"},
    )
    assert right.headers["location"] == "/ui/executions"


async def test_mounted_under_a_prefix(engine: Engine, token: str, make_client: Client) -> None:
    """The adapter mounted at /ops: cookies scoped to /ops/ui/, links and redirects under
    it, and a next= outside it (even /ui/ of the bare host) refused."""
    outer = Starlette(routes=[Mount("/ops", app=create_app(engine, rate_limit=None))])
    client = make_client(outer)
    first = await client.get("/ops/ui/executions")
    assert first.headers["location"] == "/ops/ui/login?next=%2Fops%2Fui%2Fexecutions"
    form = await client.get("/ops/ui/login")
    assert 'action="/ops/ui/login"' in form.text
    assert 'src="/ops/ui/static/htmx.min.js"' in form.text
    assert "path=/ops/ui/" in form.headers["set-cookie"].lower()
    signed = await client.post(
        "/ops/ui/login", data={"token": token, "csrf_token": _csrf(form.text), "next": "/ui/"}
    )
    assert signed.headers["location"] == "/ops/ui/"
    session = next(
        h for h in signed.headers.get_list("set-cookie") if h.startswith("abi_dashboard_session=")
    )
    assert "path=/ops/ui/" in session.lower()
    assert (await client.get("/ops/ui/executions")).status_code == 200
    assert (await client.get("/ops/ui/static/app.js")).status_code == 200


async def test_no_token_in_the_logs(
    engine: Engine,
    token: str,
    app: Starlette,
    make_client: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Signing in (right and wrong), browsing, failing and signing out log no access token,
    session id or CSRF token, at any level."""
    client = make_client(app)
    with caplog.at_level(logging.DEBUG):
        await _sign_in(client, "abi_wrong-token-for-the-log-test")
        await _sign_in(client, token)
        session = client.cookies["abi_dashboard_session"]
        page = await client.get("/ui/executions")
        csrf = _csrf(page.text)
        await client.get("/ui/executions/nope")
        await client.get("/ui/executions?page=abc")
        await client.post("/ui/executions/nope/cancel", data={"csrf_token": csrf})
        await client.post("/ui/logout", data={"csrf_token": csrf})
    for secret in (token, "abi_wrong-token-for-the-log-test", session, csrf):
        assert secret not in caplog.text


async def test_every_answer_is_uncacheable_and_unframeable(
    signed_in: tuple[httpx.AsyncClient, dict[str, str]], app: Starlette, make_client: Client
) -> None:
    """Pages, error pages, the sign-in form and every redirect: Cache-Control: no-store,
    no framing (CSP frame-ancestors 'none' and X-Frame-Options: DENY)."""
    client, ids = signed_in
    csrf = _csrf((await client.get("/ui/")).text)
    answers = [
        await client.get(path.format(**ids))
        for path in [
            "/ui/",
            "/ui/workflows",
            "/ui/workflows/{workflow_id}",
            "/ui/executions",
            "/ui/executions/{execution_id}",
            "/ui/approvals",
            "/ui/schedules",
            "/ui/schedules/{schedule_id}",
            "/ui/webhooks",
            "/ui/webhooks/{webhook_id}",
            "/ui/executions/nope",
            "/ui/nowhere",
            "/ui/executions?page=abc",
            "/ui/login",  # signed in: sent on
        ]
    ]
    answers.append(
        await client.post(f"/ui/schedules/{ids['schedule_id']}/disable", data={"csrf_token": csrf})
    )
    answers.append(await client.post("/ui/logout", data={"csrf_token": "wrong"}))
    stranger = make_client(app)
    answers += [await stranger.get("/ui/"), await stranger.get("/ui/login")]
    answers.append(await stranger.post("/ui/executions/x/cancel"))
    answers.append(await stranger.post("/ui/logout"))
    for answer in answers:
        where = (answer.request.method, str(answer.request.url), answer.status_code)
        assert answer.headers.get("cache-control") == "no-store", where
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], where
        assert answer.headers["x-frame-options"] == "DENY", where
    assert {a.status_code for a in answers} >= {200, 303, 400, 401, 403, 404}


# -- cross-site requests ------------------------------------------------------------------


async def test_cross_site_fetch_metadata_refused(
    engine: Engine, token: str, app: Starlette, make_client: Client
) -> None:
    """A browser that sends no Origin but says Sec-Fetch-Site: cross-site is refused, even
    with the right CSRF token (defence in depth); same-origin and none pass."""
    ids = await _seed(engine, token)
    client = make_client(app)
    await _sign_in(client, token)
    csrf = _csrf((await client.get("/ui/")).text)
    path = f"/ui/schedules/{ids['schedule_id']}/disable"
    refused = await client.post(
        path, data={"csrf_token": csrf}, headers={"sec-fetch-site": "cross-site"}
    )
    assert refused.status_code == 403
    assert (await engine.schedules.get(ids["schedule_id"])).enabled
    login = make_client(app)
    login_csrf = _csrf((await login.get("/ui/login")).text)
    forged = await login.post(
        "/ui/login",
        data={"token": token, "csrf_token": login_csrf},
        headers={"sec-fetch-site": "same-site"},
    )
    assert forged.status_code == 403
    done = await client.post(
        path, data={"csrf_token": csrf}, headers={"sec-fetch-site": "same-origin"}
    )
    assert done.status_code == 303
    assert not (await engine.schedules.get(ids["schedule_id"])).enabled


async def test_htmx_poll_after_sign_out_goes_to_the_sign_in_page(
    token: str, app: Starlette, make_client: Client
) -> None:
    """A live page's htmx poll whose session ended is told to load the sign-in page
    (HX-Redirect), not handed the sign-in form to splice into the page."""
    client = make_client(app)
    poll = await client.get("/ui/executions?status=running", headers={"hx-request": "true"})
    assert poll.status_code == 200
    assert poll.headers["hx-redirect"].startswith("/ui/login?next=")
    assert "%2Fui%2Fexecutions" in poll.headers["hx-redirect"]
    assert poll.text == ""
    assert poll.headers["cache-control"] == "no-store"


async def test_static_files_are_not_sniffed(client: httpx.AsyncClient) -> None:
    answer = await client.get("/ui/static/app.js")
    assert answer.status_code == 200
    assert answer.headers["x-content-type-options"] == "nosniff"


# -- bad query parameters --------------------------------------------------------------------


@pytest.fixture
async def signed_in(
    engine: Engine, token: str, app: Starlette, make_client: Client
) -> tuple[httpx.AsyncClient, dict[str, str]]:
    ids = await _seed(engine, token)
    client = make_client(app)
    await _sign_in(client, token)
    return client, ids


PAGED = [
    "/ui/workflows",
    "/ui/executions",
    "/ui/approvals",
    "/ui/schedules",
    "/ui/schedules/{schedule_id}",
    "/ui/webhooks",
    "/ui/webhooks/{webhook_id}",
]


@pytest.mark.parametrize("page", ["-1", "0", "abc", "1.5", "99999999999999999999"])
async def test_bad_page_is_a_400_on_every_list(
    signed_in: tuple[httpx.AsyncClient, dict[str, str]], page: str
) -> None:
    client, ids = signed_in
    for template in PAGED:
        path = template.format(**ids)
        answer = await client.get(path, params={"page": page})
        assert answer.status_code == 400, (path, page)
        assert "page" in _alert(answer), path
        assert answer.headers["cache-control"] == "no-store"


async def test_a_page_past_the_last_is_a_404(
    signed_in: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    """Page 50 of a one-page list says so (404), rather than showing the empty state
    ("no execution yet") of a list that has items."""
    client, ids = signed_in
    for template in PAGED:
        path = template.format(**ids)
        answer = await client.get(path, params={"page": "50"})
        assert answer.status_code == 404, path
        assert "No page 50: this list has 1 page" in _alert(answer), path
        assert (await client.get(path, params={"page": "1"})).status_code == 200, path


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/ui/?range=month", "range"),
        ("/ui/executions?status=bogus", "status"),
        ("/ui/executions?start_date=yesterday", "start_date"),
        ("/ui/executions?end_date=2024-13-45T99:00", "end_date"),
        ("/ui/workflows?status=bogus", "status"),
        ("/ui/schedules?enabled=maybe", "enabled"),
        ("/ui/schedules?workflow_id=%00", "workflow_id"),
    ],
)
async def test_bad_filters_are_a_400(
    signed_in: tuple[httpx.AsyncClient, dict[str, str]], path: str, words: str
) -> None:
    client, _ = signed_in
    answer = await client.get(path)
    assert answer.status_code == 400, path
    assert words in _alert(answer)
    assert "Traceback" not in answer.text


async def test_every_page_of_an_empty_database(
    token: str, app: Starlette, make_client: Client
) -> None:
    """No records at all: every page answers 200 with its empty state."""
    client = make_client(app)
    await _sign_in(client, token)
    for path in (
        "/ui/",
        "/ui/workflows",
        "/ui/executions",
        "/ui/approvals",
        "/ui/schedules",
        "/ui/webhooks",
    ):
        answer = await client.get(path)
        assert answer.status_code == 200, path
        assert 'class="empty"' in answer.text, path
    for range_ in ("hour", "day", "week"):
        assert (await client.get("/ui/", params={"range": range_})).status_code == 200


async def test_a_workflow_deleted_while_its_pages_are_open(
    engine: Engine, signed_in: tuple[httpx.AsyncClient, dict[str, str]]
) -> None:
    """The workflow's page, its run form and its execution list answer 404 / an empty
    list once it is gone; its executions' pages still open."""
    client, ids = signed_in
    page = await client.get(f"/ui/workflows/{ids['workflow_id']}")
    assert page.status_code == 200
    await engine.workflows.delete(ids["workflow_id"])
    gone = await client.get(f"/ui/workflows/{ids['workflow_id']}")
    assert gone.status_code == 404
    assert "not found" in _alert(gone)
    run = await client.post(
        f"/ui/workflows/{ids['workflow_id']}/run", data={"csrf_token": _csrf(page.text)}
    )
    assert run.status_code == 404
    listed = await client.get("/ui/executions", params={"workflow_id": ids["workflow_id"]})
    assert listed.status_code == 200
    execution = await client.get(f"/ui/executions/{ids['execution_id']}")
    assert execution.status_code in (200, 404)
    assert "Internal error" not in execution.text


# -- what each scope sees ----------------------------------------------------------------------


async def test_callback_answers_need_webhooks_admin(
    engine: Engine, token: str, app: Starlette, make_client: Client
) -> None:
    """An execution's callback attempts carry what the callback URL answered; /api/v1 shows
    delivery answers only to webhooks:admin. A token that may only read executions (or
    start them with any callback_url) sees the outcome and HTTP status, not the answer's
    body or the error: the dashboard is no way to read back what an internal URL says."""
    engine.allow_private_urls = True
    principal = engine.tokens.authenticate(token)
    with Receiver() as receiver:
        wf = await engine.workflows.create(
            {
                "name": "Calls back",
                "type": "custom",
                "configuration": {
                    "steps": [{"name": "s", "action": "transform", "expressions": {"v": "1"}}]
                },
            },
            actor=principal,
        )
        await engine.workflows.activate(wf.id)
        execution = await engine.executions.execute(
            wf.id, {}, callback_url=receiver.url + "/refuse", actor=principal
        )
        execution_id = execution.execution_id
        deadline = anyio.current_time() + 60
        while not any(d.attempts for d in await engine.webhooks.callback_deliveries(execution_id)):
            assert anyio.current_time() < deadline, "the callback was never attempted"
            await anyio.sleep(0.2)
    admin = make_client(app)
    await _sign_in(admin, token)
    shown = await admin.get(f"/ui/executions/{execution_id}")
    assert "refused by the test receiver" in shown.text
    reader = make_client(app)
    await _sign_in(reader, engine.tokens.create_token("usr_reader", ["executions:read"]))
    page = await reader.get(f"/ui/executions/{execution_id}")
    assert page.status_code == 200
    assert "refused by the test receiver" not in page.text
    assert "503" in page.text
    assert "webhooks:admin" in page.text


async def test_csrf_tokens_are_masked_on_every_page(
    engine: Engine, token: str, app: Starlette, make_client: Client
) -> None:
    """BREACH: a compressed HTTPS page that reflects the attacker's text (filters, next=)
    must not carry the same secret bytes on every answer. Each page shows the session's
    CSRF token under a fresh mask: never the token itself, different each time, each one
    accepted; another session's is refused. The sign-in form's too."""
    ids = await _seed(engine, token)
    client = make_client(app)
    login = await client.get("/ui/login")
    assert client.cookies["abi_dashboard_login"] not in login.text
    again = await client.get("/ui/login")
    assert _csrf(again.text) != _csrf(login.text)
    await client.post("/ui/login", data={"token": token, "csrf_token": _csrf(login.text)})
    dash = next(
        r for r in app.router.routes if isinstance(r, Mount) and r.path == "/ui"
    ).app.state.dashboard
    session = dash.sessions.get(client.cookies["abi_dashboard_session"])
    first = await client.get("/ui/executions?workflow_id=abc")
    second = await client.get("/ui/executions?workflow_id=abc")
    assert session.csrf not in first.text
    assert _csrf(first.text) != _csrf(second.text)
    path = f"/ui/schedules/{ids['schedule_id']}"
    assert (
        await client.post(path + "/disable", data={"csrf_token": _csrf(first.text)})
    ).status_code == 303
    assert (
        await client.post(path + "/enable", data={"csrf_token": _csrf(second.text)})
    ).status_code == 303
    other = make_client(app)
    await _sign_in(other, token)
    foreign = _csrf((await other.get("/ui/")).text)
    refused = await client.post(path + "/disable", data={"csrf_token": foreign})
    assert refused.status_code == 403
    assert (await engine.schedules.get(ids["schedule_id"])).enabled


@pytest.mark.parametrize(
    "value", ["", "x", "é" * 40, "!!!!", "AAA", "A" * 43, "QUJD", None, "=" * 8, "A\x00B"]
)
def test_garbage_csrf_values_are_refused(value: str | None) -> None:
    secret = "s" * 43
    assert not unmasks_to(value, secret)
    assert unmasks_to(mask(secret), secret)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 40_000,  # deeper than Python's recursion limit
        '{"a": ' + "[" * 100 + "]" * 100 + "}",  # deeper than /api/v1 accepts (64)
        '{"a": NaN}',
        '{"a": 1e999}',
        '{"a": "\\ud800"}',
    ],
    ids=["recursion", "depth", "nan", "infinity", "surrogate"],
)
async def test_run_form_json_is_checked_like_a_request_body(
    signed_in: tuple[httpx.AsyncClient, dict[str, str]], engine: Engine, text: str
) -> None:
    """The run form's JSON goes through the checks of an /api/v1 body (depth, NaN and
    infinities, lone surrogates): a 400 naming the field, never a 500, nothing started."""
    client, ids = signed_in
    page = await client.get(f"/ui/workflows/{ids['workflow_id']}")
    before = (await engine.executions.list(page=1, page_size=1)).pagination.total_items
    for field in ("parameters_json",):
        answer = await client.post(
            f"/ui/workflows/{ids['workflow_id']}/run",
            data={"csrf_token": _csrf(page.text), field: text},
        )
        assert answer.status_code == 400, answer.text[-500:]
        assert "Parameters (JSON)" in _alert(answer)
    after = (await engine.executions.list(page=1, page_size=1)).pagination.total_items
    assert after == before


#: Values no query parameter or form field should turn into a 500.
NASTY = [
    "",
    "-1",
    "abc",
    "1e999",
    "nan",
    "\x00",
    "%",
    "é",
    "9" * 5000,
    "2024-02-30T25:61",
    "{}",
    "<script>",
    "failed,bogus",
    "a" * 20_000,
]


async def test_no_query_value_or_form_field_is_a_500(
    signed_in: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    """Every page with every query parameter the dashboard reads set to each nasty
    value, and every action with each form field: 4xx at worst, never a 500."""
    client, ids = signed_in
    csrf = _csrf((await client.get("/ui/")).text)
    pages = [p.format(**ids) for p in PAGED] + [
        "/ui/",
        "/ui/workflows/{workflow_id}".format(**ids),
        "/ui/executions/{execution_id}".format(**ids),
        "/ui/login",
    ]
    params = ["page", "status", "range", "workflow_id", "schedule_id", "start_date"]
    params += ["end_date", "enabled", "type", "next"]
    failures = []
    for path in pages:
        for name in params:
            for value in NASTY:
                answer = await client.get(path, params={name: value})
                if answer.status_code >= 500 or "Traceback" in answer.text:
                    failures.append((path, name, value[:20], answer.status_code))
    actions = [
        "/ui/workflows/{workflow_id}/run",
        "/ui/executions/{execution_id}/approve",
        "/ui/executions/{execution_id}/cancel",
        "/ui/schedules/{schedule_id}/enable",
        "/ui/webhooks/{webhook_id}/deliveries/dlv_x/redeliver",
    ]
    for template in actions:
        for name in ("comment", "back", "parameters_json", "param.label", "param.x.present"):
            for value in NASTY:
                answer = await client.post(
                    template.format(**ids), data={"csrf_token": csrf, name: value}
                )
                if answer.status_code >= 500 or "Traceback" in answer.text:
                    failures.append((template, name, value[:20], answer.status_code))
    assert failures == []
