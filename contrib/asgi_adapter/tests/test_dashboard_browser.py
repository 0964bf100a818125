"""The dashboard end to end in headless Chromium (Debian's binary, driven by Playwright).

uvicorn serves the adapter on 127.0.0.1 over a SQLite file; records are made over the REST
API (dashboard_site.py). No fixed sleeps: Playwright's expect() waits, generously. Each page
is screenshotted into build/dashboard-screenshots/ (git-ignored) for a reviewer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_site import SCREENSHOTS, XSS, Site, poll, running_site
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT = 30_000  # ms: the machine is shared and loaded


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(tmp_path_factory.mktemp("site")) as served:
        yield served


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """A fresh Chromium profile (no browser is ever downloaded: Debian's chromium)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    expect.set_options(timeout=WAIT)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(WAIT)
        try:
            yield context
        finally:
            context.close()


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, site: Site, token: str) -> None:
    page.goto(site.url + "/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def test_operator_day(site: Site, browser: BrowserContext) -> None:
    """Sign in, find the failed execution from the overview, read the failing step's error
    on the timeline, cancel a running execution, approve a waiting approval, disable a
    schedule, redeliver a failed delivery, sign out. Nothing seeded runs as script."""
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(site.url + "/ui/login")
    shot(page, "01-sign-in")
    sign_in(page, site, site.token)
    expect(page.locator("#queue-depth")).to_have_text(re.compile(r"\d+"))
    expect(page.locator(".chart svg rect.f-failed").first).to_be_attached()
    shot(page, "02-overview")

    # the failure, from the overview to its step
    failures = page.locator("section", has=page.get_by_role("heading", name="Latest failures"))
    failures.get_by_role("link", name=site.ids["failed_execution"]).click()
    expect(page).to_have_url(re.compile(site.ids["failed_execution"]))
    step = page.locator("li.step[data-step='divide']")
    expect(step.locator(".badge")).to_have_text("failed")
    expect(step.locator(".step-error")).to_contain_text("division by zero")
    expect(step.locator("svg rect.f-failed")).to_be_attached()
    expect(page.locator("li.step[data-step='prepare'] .badge")).to_have_text("completed")
    expect(page.get_by_text(XSS).first).to_be_visible()  # the parameter, as text
    shot(page, "03-execution-failed")

    # workflows and a workflow's page with its run form
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Workflows").click()
    expect(page.get_by_role("heading", name="Workflows")).to_be_visible()
    shot(page, "04-workflows")
    page.get_by_role("link", name="Nightly totals " + XSS).click()
    expect(page.get_by_role("button", name="Run workflow")).to_be_visible()
    shot(page, "05-workflow")

    # cancel the running execution
    page.goto(site.url + "/ui/executions?status=running")
    page.get_by_role("link", name=site.ids["running_execution"]).click()
    expect(page.locator("h1 .badge")).to_have_text("running")
    expect(page.locator("li.step[data-step='fetch'] .badge")).to_have_text("running")
    shot(page, "06-execution-running")
    page.get_by_role("button", name="Cancel execution").click()
    expect(page.locator("h1 .badge")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel execution")).to_have_count(0)

    # approve the waiting approval, with a comment
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Approvals").click()
    card = page.locator(f"article[data-execution='{site.ids['approval_execution']}']")
    expect(card).to_be_visible()
    shot(page, "07-approvals")
    card.get_by_label("Comment").fill("Approved <b>fine</b>")
    card.get_by_role("button", name="Approve").click()
    expect(
        page.locator(f"article[data-execution='{site.ids['approval_execution']}']")
    ).to_have_count(0)
    page.goto(f"{site.url}/ui/executions/{site.ids['approval_execution']}")
    expect(page.locator("h1 .badge")).to_have_text("completed")
    expect(page.locator("#signals").locator("..")).to_contain_text("Approved <b>fine</b>")

    # disable the schedule
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Schedules").click()
    row = page.locator(f"tr[data-schedule='{site.ids['schedule']}']")
    expect(row).to_contain_text("Europe/Paris")
    shot(page, "08-schedules")
    row.get_by_role("link", name="Every morning " + XSS).click()
    expect(page.locator("#next-run time.local")).to_be_visible()
    shot(page, "09-schedule")
    page.get_by_role("button", name="Disable schedule").click()
    expect(page.get_by_role("button", name="Enable schedule")).to_be_visible()
    expect(page.locator("h1 .badge")).to_have_text("disabled")

    # redeliver the failed delivery: the receiver refuses again, as a second attempt
    hits = len([h for h in site.receiver.hits if h.startswith("/refuse")])
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Webhooks").click()
    shot(page, "10-webhooks")
    page.get_by_role("link", name="Ops alerts " + XSS).click()
    delivery = page.locator(f"article[data-delivery='{site.ids['failed_delivery']}']")
    expect(delivery.locator(".attempts tbody tr")).to_have_count(1)
    expect(delivery).to_contain_text("503")
    shot(page, "11-webhook")
    delivery.get_by_role("button", name="Redeliver").click()
    poll(
        lambda: len([h for h in site.receiver.hits if h.startswith("/refuse")]) > hits,
        "the redelivery to reach the receiver",
    )
    with site.api() as api:
        poll(
            lambda: any(
                d["id"] == site.ids["failed_delivery"]
                and d["status"] == "failed"
                and d["attempt_count"] == 2
                for d in api.get(f"/webhooks/{site.ids['webhook']}/deliveries").json()["data"][
                    "items"
                ]
            ),
            "the second attempt to be recorded",
        )
    page.reload()
    expect(delivery.locator(".attempts tbody tr")).to_have_count(2)

    # sign out: the session is gone, pages send back to the sign-in form
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    page.goto(site.url + "/ui/executions")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    assert page.title() != "pwned"
    assert dialogs == []


def test_reader_sees_no_cancel_and_a_forged_cancel_is_refused(
    site: Site, browser: BrowserContext
) -> None:
    """A token without executions:write sees no cancel button; posting the form anyway,
    with the session's own CSRF token, gets 403 FORBIDDEN and cancels nothing."""
    with site.api() as api:
        slow = api.get("/workflows").json()["data"]["items"]
        slow_id = next(w["id"] for w in slow if w["name"] == "Slow fetch")
        execution = api.post(f"/workflows/{slow_id}/execute_async", json={}).json()["data"]
    execution_id = execution["execution_id"]
    page = browser.new_page()
    sign_in(page, site, site.reader_token)
    page.goto(f"{site.url}/ui/executions/{execution_id}")
    expect(page.locator("h1 .badge")).to_have_text(re.compile("queued|running"))
    expect(page.get_by_role("button", name="Cancel execution")).to_have_count(0)
    expect(page.get_by_role("link", name="Approvals")).to_be_visible()
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert csrf
    answer = page.request.post(
        f"{site.url}/ui/executions/{execution_id}/cancel",
        form={"csrf_token": csrf},
        headers={"origin": site.url},
    )
    assert answer.status == 403
    assert "executions:write" in answer.text()
    with site.api() as api:
        status = api.get(f"/workflow_executions/{execution_id}").json()["data"]["status"]
        assert status in ("queued", "running")
        assert api.post(f"/workflow_executions/{execution_id}/cancel").status_code == 200


def test_phone_width_is_readable(site: Site, browser: BrowserContext) -> None:
    """At 390 px nothing scrolls sideways on the overview and an execution's page; the main
    navigation is reachable with the keyboard."""
    page = browser.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, site, site.token)
    for path in ("/ui/", f"/ui/executions/{site.ids['failed_execution']}", "/ui/executions"):
        page.goto(site.url + path)
        expect(page.locator("main")).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (path, overflow)
    shot(page, "12-phone-execution")
    page.goto(site.url + "/ui/")
    page.keyboard.press("Tab")
    expect(page.locator("a.skip")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("a.brand")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Overview")).to_be_focused()


def test_a_live_page_whose_session_ends_goes_to_sign_in(
    site: Site, browser: BrowserContext
) -> None:
    """A running execution's page polls with htmx; signing out in another tab makes the
    next poll load the sign-in page (HX-Redirect), instead of splicing the sign-in form
    into the page or silently showing stale data."""
    with site.api() as api:
        slow = api.get("/workflows").json()["data"]["items"]
        slow_id = next(w["id"] for w in slow if w["name"] == "Slow fetch")
        execution = api.post(f"/workflows/{slow_id}/execute_async", json={}).json()["data"]
    execution_id = execution["execution_id"]
    watching = browser.new_page()
    sign_in(watching, site, site.token)
    watching.goto(f"{site.url}/ui/executions/{execution_id}")
    expect(watching.locator("h1 .badge")).to_have_text(re.compile("queued|running"))
    expect(watching.locator("#live[hx-trigger]")).to_be_attached()
    other = browser.new_page()
    other.goto(site.url + "/ui/")
    other.get_by_role("button", name="Sign out").click()
    expect(other.get_by_text("You are signed out.")).to_be_visible()
    expect(watching).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Fexecutions%2F"))
    expect(watching.get_by_role("heading", name="Sign in")).to_be_visible()
    with site.api() as api:
        assert api.post(f"/workflow_executions/{execution_id}/cancel").status_code == 200
