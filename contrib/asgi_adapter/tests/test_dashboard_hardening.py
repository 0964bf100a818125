"""The dashboard under attack and abuse, over HTTP against the real app (httpx in-process):
the adapter's rate limit, session floods and rotation, cross-site requests without an
Origin, htmx polls after the session ended, and bad query parameters on every page (a
clear 4xx page, never a 500 and never silently something else)."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from starlette.applications import Starlette
from test_dashboard_security import _csrf, _seed, _sign_in

from abi_engine import Engine

pytestmark = pytest.mark.anyio

Client = Callable[..., httpx.AsyncClient]


def _alert(response: httpx.Response) -> str:
    found = re.search(r'class="error" role="alert">([^<]*)<', response.text)
    assert found is not None, response.text[:300]
    return found.group(1)


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
    for path in ("/ui/", "/ui/workflows", "/ui/executions", "/ui/approvals", "/ui/schedules"):
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
