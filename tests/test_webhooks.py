"""Webhook subscriptions: the service, REST, the Python API, the command line, signing.

Deliveries go to a real HTTP receiver on 127.0.0.1 (``webhook_testing``),
which the engines here may reach because they allow private URLs, except
where a test checks that an engine without that permission refuses them.
Delivery itself (retries, durability, URL rules at delivery) is tested in
``test_webhook_delivery.py``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from abi_asgi import create_app
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError
from webhook_testing import (  # noqa: F401 - the *_fixture names register fixtures
    STEPS,
    Receiver,
    all_finished,
    eng_fixture,
    fast,
    make_engine_fixture,
    make_workflow,
    receiver_fixture,
    until_deliveries,
    wait_sync,
)

from abi_engine import Engine
from abi_engine.errors import InvalidRequest, NotFound, WebhookNotFound
from abi_engine.ids import utcnow
from abi_engine.models_webhooks import Delivery, DeliveryStatus, Webhook
from abi_engine.webhook_signing import mask_secret, secret_key, sign
from abi_engine.webhooks import STANDARD_RETRY_SCHEDULE, WebhookSettings

# -- subscriptions -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_generated_secret_is_shown_once_then_masked(engine: Engine) -> None:
    """Without a secret the engine makes whsec_+base64(24 bytes), shown whole only on create."""
    created = await engine.webhooks.create(
        {"url": "https://example.com/hook", "events": ["workflow.created"]}
    )
    assert created.id.startswith("wh_")
    assert created.secret.startswith("whsec_")
    assert len(base64.b64decode(created.secret.removeprefix("whsec_"), validate=True)) == 24
    shown = await engine.webhooks.get(created.id)
    assert shown.secret == "whsec_****" + created.secret[-4:]
    assert created.secret not in json.dumps(
        [w.secret for w in (await engine.webhooks.list()).items]
    )
    assert shown.enabled is True
    assert shown.events == ["workflow.created"]


@pytest.mark.anyio
async def test_given_secret_kept_and_masked(engine: Engine) -> None:
    """The seed's request (url, events, secret, description) is stored as given; reads mask it."""
    body = {
        "url": "https://example.com/webhooks/workflows",
        "events": ["workflow.created", "workflow.executed", "execution.completed"],
        "secret": "whsec_abcdefghijklmnopqrstuvwxyz",
        "description": "Production webhook for workflow events",
    }
    created = await engine.webhooks.create(body)
    assert (created.url, created.events, created.secret, created.description) == (
        body["url"],
        body["events"],
        body["secret"],
        body["description"],
    )
    assert (await engine.webhooks.get(created.id)).secret == "whsec_****wxyz"
    assert mask_secret("whsec_short") == "whsec_****"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("events", "field"),
    [
        (["workflow.created", "workflow.exploded"], "events[1]"),
        (["nope"], "events[0]"),
        ([], "events"),
        ("workflow.created", "events"),
        ([1], "events[0]"),
    ],
)
async def test_bad_events_name_the_field(engine: Engine, events: Any, field: str) -> None:
    """Unknown event types, empty or non-list events: INVALID_REQUEST naming the field."""
    with pytest.raises(InvalidRequest) as caught:
        await engine.webhooks.create({"url": "https://example.com/h", "events": events})
    assert caught.value.details["field"] == field


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "not a url",
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://metadata.google.internal/",
        "https://user:pw@example.com/",
    ],
)
async def test_bad_or_private_urls_refused_at_registration(engine: Engine, url: str) -> None:
    """Non-http(s), malformed and private URLs are refused when private URLs are not allowed."""
    with pytest.raises(InvalidRequest) as caught:
        await engine.webhooks.create({"url": url, "events": ["workflow.created"]})
    assert caught.value.details["field"] == "url"
    assert (await engine.webhooks.list()).pagination.total_items == 0


@pytest.mark.anyio
@pytest.mark.parametrize("secret", ["abc", "whsec_", "whsec_has space", "whsec_" + "a" * 600, 42])
async def test_bad_secrets_refused(engine: Engine, secret: Any) -> None:
    """A secret must be 'whsec_' and 1..512 printable, spaceless characters."""
    with pytest.raises(InvalidRequest) as caught:
        await engine.webhooks.create(
            {"url": "https://example.com/h", "events": ["workflow.created"], "secret": secret}
        )
    assert caught.value.details["field"] == "secret"


@pytest.mark.anyio
async def test_update_replaces_given_fields_only(engine: Engine) -> None:
    """PUT semantics: given fields replace, absent ones stay; rotate_secret shows the new one once."""
    hook = await engine.webhooks.create(
        {"url": "https://example.com/a", "events": ["workflow.created"], "description": "d"}
    )
    updated = await engine.webhooks.update(hook.id, {"events": ["workflow.deleted"]})
    assert (updated.url, updated.events, updated.description) == (
        "https://example.com/a",
        ["workflow.deleted"],
        "d",
    )
    assert updated.updated_at >= hook.updated_at
    updated = await engine.webhooks.update(
        hook.id, {"url": "https://example.org/b", "description": None, "enabled": False}
    )
    assert (updated.url, updated.description, updated.enabled) == (
        "https://example.org/b",
        None,
        False,
    )
    assert updated.secret == mask_secret(hook.secret)
    rotated = await engine.webhooks.update(hook.id, {"rotate_secret": True})
    assert rotated.secret.startswith("whsec_")
    assert "****" not in rotated.secret
    assert rotated.secret != hook.secret
    assert (await engine.webhooks.get(hook.id)).secret == mask_secret(rotated.secret)
    given_secret = await engine.webhooks.update(hook.id, {"secret": "whsec_" + "Z" * 32})
    assert given_secret.secret == "whsec_****ZZZZ"
    for body, field in [
        ({"colour": "red"}, "colour"),
        ({"events": ["bogus"]}, "events[0]"),
        ({"url": "http://127.0.0.1/"}, "url"),
        ({"secret": "nope"}, "secret"),
        ({"secret": "whsec_" + "a" * 20, "rotate_secret": True}, "rotate_secret"),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            await engine.webhooks.update(hook.id, body)
        assert caught.value.details["field"] == field
    assert (await engine.webhooks.get(hook.id)).url == "https://example.org/b"


@pytest.mark.anyio
async def test_unknown_webhook_is_not_found(engine: Engine) -> None:
    """Get, update, delete, deliveries and redeliver of a missing webhook: WEBHOOK_NOT_FOUND."""
    hook = await engine.webhooks.create(
        {"url": "https://example.com/a", "events": ["workflow.created"]}
    )
    assert (await engine.webhooks.delete(hook.id)).deleted is True
    calls = [
        engine.webhooks.get(hook.id),
        engine.webhooks.update(hook.id, {"enabled": False}),
        engine.webhooks.delete(hook.id),
        engine.webhooks.deliveries(hook.id),
        engine.webhooks.redeliver(hook.id, "dlv_x"),
    ]
    for call in calls:
        with pytest.raises(WebhookNotFound) as caught:
            await call
        assert caught.value.code == "WEBHOOK_NOT_FOUND"
        assert caught.value.http_status == 404
        assert caught.value.details == {"webhook_id": hook.id}


@pytest.mark.anyio
async def test_list_pages_newest_first(engine: Engine) -> None:
    """Subscriptions list newest first in pages; bad page values are INVALID_REQUEST."""
    ids = []
    for n in range(3):
        hook = await engine.webhooks.create(
            {"url": f"https://example.com/{n}", "events": ["workflow.created"]}
        )
        ids.append(hook.id)
        await anyio.sleep(0.002)
    first = await engine.webhooks.list(page=1, page_size=2)
    second = await engine.webhooks.list(page=2, page_size=2)
    assert [w.id for w in first.items + second.items] == ids[::-1]
    assert (first.pagination.total_items, first.pagination.total_pages) == (3, 2)
    assert all(w.secret.startswith("whsec_****") for w in first.items)
    with pytest.raises(InvalidRequest):
        await engine.webhooks.list(page_size=101)


@pytest.mark.anyio
async def test_outbox_keeps_what_subscriptions_ask_for(make_engine: Callable[..., Engine]) -> None:
    """Execution events are kept only while an enabled subscription wants them, in every process."""
    one, two = make_engine(), make_engine()
    assert not one.events.wants("execution.step_completed")
    assert one.events.wants("workflow.created")  # always kept
    hook = await one.webhooks.create(
        {"url": "https://example.com/a", "events": ["execution.step_completed", "workflow.created"]}
    )
    assert one.events.wants("execution.step_completed")
    assert not two.events.wants("execution.step_completed")
    two.webhooks.refresh_subscriptions()  # what the worker does every refresh interval
    assert two.events.wants("execution.step_completed")
    await one.webhooks.update(hook.id, {"enabled": False})
    assert not one.events.wants("execution.step_completed")
    assert one.events.wants("workflow.created")  # the engine's own types stay
    await one.webhooks.update(hook.id, {"enabled": True})
    await one.webhooks.delete(hook.id)
    assert not one.events.wants("execution.step_completed")
    assert make_engine().events.wants("execution.step_completed") is False


# -- REST -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_rest_webhooks(eng: Engine, receiver: Receiver) -> None:
    """The REST operations: create 201, list, get, put, deliveries, redeliver 202, delete, errors."""
    admin = eng.tokens.create_token("usr_admin", ["webhooks:admin"])
    reader = eng.tokens.create_token("usr_reader", ["workflows:read"])
    transport = httpx.ASGITransport(app=create_app(eng, rate_limit=None))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver/api/v1",
        headers={"Authorization": f"Bearer {admin}"},
    ) as client:
        body = {
            "url": receiver.url(),
            "events": ["workflow.created", "workflow.executed", "execution.completed"],
            "secret": "whsec_abcdefghijklmnopqrstuvwxyz",
            "description": "Production webhook for workflow events",
        }
        r = await client.post("/webhooks", json=body)
        assert r.status_code == 201, r.text
        created = r.json()["data"]
        assert created["secret"] == body["secret"]
        assert created["created_by"] == "usr_admin"
        hook_id = created["id"]
        r = await client.get(f"/webhooks/{hook_id}")
        assert r.json()["data"]["secret"] == "whsec_****wxyz"
        r = await client.get("/webhooks", params={"page": 1, "page_size": 5})
        assert r.json()["data"]["pagination"]["total_items"] == 1
        r = await client.put(f"/webhooks/{hook_id}", json={"description": "new"})
        assert r.status_code == 200
        assert r.json()["data"]["description"] == "new"
        receiver.plan("/hook", [500])
        await make_workflow(eng, active=False)
        await until_deliveries(eng, hook_id, all_finished)
        r = await client.get(f"/webhooks/{hook_id}/deliveries")
        page = r.json()["data"]
        assert page["pagination"]["total_items"] == 1
        delivery = page["items"][0]
        assert delivery["status"] == "failed"
        assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 500, 500]
        assert delivery["next_attempt_at"] is None  # present, null once finished
        receiver.plan("/hook", [200])
        r = await client.post(f"/webhooks/{hook_id}/deliveries/{delivery['id']}/redeliver")
        assert r.status_code == 202, r.text
        assert r.json()["data"]["status"] == "pending"
        await until_deliveries(eng, hook_id, all_finished)
        r = await client.post(f"/webhooks/{hook_id}/deliveries/dlv_nope/redeliver")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "NOT_FOUND")
        r = await client.post("/webhooks", json={**body, "events": ["workflow.created", "x"]})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "INVALID_REQUEST"
        assert r.json()["error"]["details"]["field"] == "events[1]"
        r = await client.post("/webhooks", json={"url": "http://10.0.0.1/", "events": []})
        assert r.status_code == 400
        r = await client.get("/webhooks", headers={"Authorization": f"Bearer {reader}"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "FORBIDDEN")
        r = await client.delete(f"/webhooks/{hook_id}")
        assert r.json()["data"] == {"id": hook_id, "deleted": True}
        for method, path in [
            ("GET", f"/webhooks/{hook_id}"),
            ("PUT", f"/webhooks/{hook_id}"),
            ("DELETE", f"/webhooks/{hook_id}"),
            ("GET", f"/webhooks/{hook_id}/deliveries"),
        ]:
            r = await client.request(method, path, json={} if method == "PUT" else None)
            assert (r.status_code, r.json()["error"]["code"]) == (404, "WEBHOOK_NOT_FOUND")
        spec = (await client.get("/openapi.json")).json()
        assert "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver" in spec["paths"]
        assert "Webhook" in spec["components"]["schemas"]


def test_models_round_trip_through_the_converter() -> None:
    """Webhook and Delivery JSON carries RFC 3339 times and every field (null when empty)."""
    from abi_engine.converter import unstructure

    now = utcnow()
    hook = Webhook(
        id="wh_1", url="https://e.com", secret="whsec_****", created_at=now, updated_at=now
    )
    data = unstructure(hook)
    assert data["created_at"].endswith("Z")
    delivery = Delivery(
        id="dlv_1",
        event_id="evt_1",
        event_type="workflow.created",
        status=DeliveryStatus.SUCCEEDED,
        created_at=now,
        updated_at=now,
    )
    shown = unstructure(delivery)
    assert shown["webhook_id"] is None  # every field present, null when empty
    assert shown["next_attempt_at"] is None
    assert shown["status"] == "succeeded"


# -- signing --------------------------------------------------------------------------------


def test_standard_retry_schedule_by_default() -> None:
    """By default: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (8 attempts)."""
    settings = WebhookSettings()
    assert (
        settings.retry_schedule
        == STANDARD_RETRY_SCHEDULE
        == (5, 300, 1800, 7200, 18000, 36000, 36000)
    )
    assert settings.max_attempts == 8
    assert settings.delay_after(8) is None
    delays = [settings.delay_after(n) for n in range(1, 8)]
    for delay, nominal in zip(delays, STANDARD_RETRY_SCHEDULE, strict=True):
        assert delay is not None
        assert nominal * 0.9 <= delay <= nominal * 1.1
    with pytest.raises(ValueError, match="retry delays"):
        WebhookSettings(retry_schedule=(1, -1))


_NOW = int(time.time())


@given(
    key=st.binary(min_size=1, max_size=64),
    msg_id=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=40),
    body=st.text(max_size=300),
    offset=st.integers(min_value=-200, max_value=200),
)
@hsettings(suppress_health_check=[HealthCheck.too_slow])
def test_signature_property_matches_standardwebhooks(
    key: bytes, msg_id: str, body: str, offset: int
) -> None:
    """Sign then verify with standardwebhooks for random secrets, bodies, ids and times; tampering fails."""
    secret = "whsec_" + base64.b64encode(key).decode()
    timestamp = str(int(time.time()) + offset)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
    verifier = Verifier(secret)
    assert verifier.verify(body, headers, json_parse=False) is None
    for tampered in (
        (body + "x", headers),
        (body, {**headers, "webhook-id": msg_id + "x"}),
        (body, {**headers, "webhook-timestamp": str(int(timestamp) + 1)}),
    ):
        with pytest.raises(WebhookVerificationError):
            verifier.verify(tampered[0], tampered[1], json_parse=False)


@given(
    secret_body=st.text(
        st.characters(codec="ascii", min_codepoint=33, max_codepoint=126), min_size=1, max_size=60
    )
)
def test_key_derivation_matches_the_reference_library(secret_body: str) -> None:
    """Any secret the library accepts gives its key; one it cannot decode keys with its UTF-8 bytes."""
    secret = "whsec_" + secret_body
    try:
        reference = Verifier(secret)._whsecret
    except Exception:  # the library cannot decode it at all
        assert secret_key(secret) == secret_body.encode("utf-8")
    else:
        assert secret_key(secret) == reference
        timestamp = str(int(time.time()))
        headers = {
            "webhook-id": "evt_1",
            "webhook-timestamp": timestamp,
            "webhook-signature": sign(secret, "evt_1", timestamp, "{}"),
        }
        Verifier(secret).verify("{}", headers)


# -- the Python API (abi.workflows.WebhookManager) ----------------------------------------------


def _manager_scenario(manager: Any, workflows: Any, receiver: Receiver) -> None:
    from abi.workflows import WorkflowConfig

    hook = manager.create_webhook(
        receiver.url(), ["workflow.created"], description="py", secret="whsec_" + "b" * 32
    )
    assert isinstance(hook, Webhook)
    assert hook.secret == "whsec_" + "b" * 32
    assert manager.get_webhook(hook.id).secret == "whsec_****bbbb"
    assert [w.id for w in manager.list_webhooks(page_size=5).items] == [hook.id]
    receiver.plan("/hook", [500])
    workflows.create_workflow(WorkflowConfig(name="py", type="custom", configuration=STEPS))

    def failed() -> bool:
        items = manager.list_deliveries(hook.id).items
        return bool(items) and items[0].status is DeliveryStatus.FAILED

    wait_sync(failed)
    (delivery,) = manager.list_deliveries(hook.id, page=1, page_size=10).items
    assert [a.status_code for a in delivery.attempts] == [500, 500, 500, 500]
    receiver.plan("/hook", [200])
    assert manager.redeliver(hook.id, delivery.id).status is DeliveryStatus.PENDING
    wait_sync(lambda: manager.list_deliveries(hook.id).items[0].status is DeliveryStatus.SUCCEEDED)
    Verifier(hook.secret).verify(receiver.received()[-1].body, receiver.received()[-1].headers)
    with pytest.raises(NotFound):
        manager.redeliver(hook.id, "dlv_missing")
    updated = manager.update_webhook(hook.id, enabled=False, description=None)
    assert (updated.enabled, updated.description) == (False, None)
    with pytest.raises(InvalidRequest) as caught:
        manager.update_webhook(hook.id, events=["nope"])
    assert caught.value.details["field"] == "events[0]"
    assert manager.delete_webhook(hook.id).deleted is True
    with pytest.raises(WebhookNotFound):
        manager.get_webhook(hook.id)
    with pytest.raises(WebhookNotFound):
        manager.get_webhook("../x")


def test_webhook_manager_in_process(tmp_path: Path, receiver: Receiver) -> None:
    """WebhookManager drives an in-process engine: create, list, deliveries, redeliver, errors."""
    from abi.workflows import WebhookManager, WorkflowManager

    engine = Engine(tmp_path / "py.db", allow_private_urls=True, webhook_settings=fast())
    try:
        token = engine.tokens.create_token("usr_py", ["webhooks:admin", "workflows:write"])
        with (
            WebhookManager(access_token=token, engine=engine) as manager,
            WorkflowManager(access_token=token, engine=engine) as workflows,
        ):
            _manager_scenario(manager, workflows, receiver)
    finally:
        engine.close()


def test_webhook_manager_over_http(tmp_path: Path, receiver: Receiver) -> None:
    """WebhookManager over a real uvicorn server behaves as in-process."""
    import socket
    import threading

    import uvicorn

    from abi.workflows import WebhookManager, WorkflowManager

    engine = Engine(tmp_path / "http.db", allow_private_urls=True, webhook_settings=fast())
    token = engine.tokens.create_token("usr_py", ["webhooks:admin", "workflows:write"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning", http="h11"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_sync(lambda: server.started)
        base_url = f"http://127.0.0.1:{port}"
        with (
            WebhookManager(access_token=token, base_url=base_url) as manager,
            WorkflowManager(access_token=token, base_url=base_url) as workflows,
        ):
            _manager_scenario(manager, workflows, receiver)
            with pytest.raises(WebhookNotFound):
                manager.delete_webhook("wh_none")
    finally:
        server.should_exit = True
        thread.join(15)
        engine.close()
    assert not thread.is_alive()


# -- the command line -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("allow", [True, False])
def test_serve_allow_private_urls(tmp_path: Path, receiver: Receiver, allow: bool) -> None:
    """`abi-engine serve` delivers to 127.0.0.1 with --allow-private-urls and refuses it without."""
    import os
    import socket
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ABI_ENGINE_")}
    db = str(tmp_path / "serve.db")
    token = subprocess.run(
        [sys.executable, "-m", "abi_engine", "token", "create", "--db", db, "--user", "ops"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["serve", "--db", db, "--port", str(port)] + (["--allow-private-urls"] if allow else [])
    proc = subprocess.Popen(
        [sys.executable, "-m", "abi_engine", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:

            def up() -> bool:
                try:
                    return client.get("/health").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_sync(up, timeout=30)
            r = client.post(
                "/webhooks", json={"url": receiver.url(), "events": ["workflow.created"]}
            )
            if not allow:
                assert r.status_code == 400
                assert r.json()["error"]["code"] == "INVALID_REQUEST"
                assert r.json()["error"]["details"]["field"] == "url"
                return
            assert r.status_code == 201, r.text
            secret = r.json()["data"]["secret"]
            r = client.post(
                "/workflows", json={"name": "cli", "type": "custom", "configuration": STEPS}
            )
            assert r.status_code == 201, r.text
            wait_sync(lambda: len(receiver.received()) == 1)
            request = receiver.received()[0]
            body = Verifier(secret).verify(request.body, request.headers)
            assert body["data"]["id"] == r.json()["data"]["id"]
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
