"""Signed inbound triggers (#16): the signature verifier (hypothesis), engine.triggers,
and POST /triggers/{id}/invoke over real HTTP without a token, on both backends."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from served_engines import served
from standardwebhooks.webhooks import Webhook as StandardWebhook

from abi_engine import Engine, StepContext, WorkflowType, hookimpl, step
from abi_engine.errors import InvalidRequest, TriggerNotFound, Unauthorized, WorkflowNotFound
from abi_engine.testing import engine_for
from abi_engine.trigger_signing import (
    TOLERANCE_SECONDS,
    SignatureRule,
    sign_hmac_sha256,
    sign_stripe,
    verify,
)
from abi_engine.webhook_signing import generate_secret

pytestmark = pytest.mark.anyio

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NOW = 1_800_000_000


def _standard_headers(secret: str, msg_id: str, stamp: int, body: bytes) -> dict[str, str]:
    signature = StandardWebhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, UTC), body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": signature}


ids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)
bodies = st.binary(max_size=300)


@given(msg_id=ids, body=bodies, skew=st.integers(-TOLERANCE_SECONDS, TOLERANCE_SECONDS))
def test_standard_webhooks_signatures_verify(msg_id: str, body: bytes, skew: int) -> None:
    """What the standardwebhooks library signs verifies, within the tolerance, and gives
    the webhook-id as the delivery id."""
    headers = _standard_headers(SECRET, msg_id, NOW + skew, body)
    assert verify(SignatureRule(), SECRET, headers, body, NOW) == msg_id


@given(
    msg_id=ids,
    body=bodies,
    part=st.sampled_from(["body", "id", "timestamp", "signature", "secret"]),
    data=st.data(),
)
def test_tampered_standard_webhooks_requests_fail(
    msg_id: str, body: bytes, part: str, data: st.DataObject
) -> None:
    """Any change to the body, id, timestamp or signature (or another secret) fails."""
    headers = _standard_headers(SECRET, msg_id, NOW, body)
    secret = SECRET
    if part == "body":
        body = body + data.draw(st.binary(min_size=1, max_size=5))
    elif part == "id":
        headers["webhook-id"] = msg_id + data.draw(ids)
    elif part == "timestamp":
        headers["webhook-timestamp"] = str(NOW + data.draw(st.integers(1, 10**6)))
    elif part == "signature":
        headers["webhook-signature"] = headers["webhook-signature"][:-6] + "AAAAA="
    else:
        secret = generate_secret()
    with pytest.raises(Unauthorized):
        verify(SignatureRule(), secret, headers, body, NOW)


@given(skew=st.integers(TOLERANCE_SECONDS + 1, 10**7), sign=st.sampled_from([-1, 1]))
def test_timestamps_out_of_tolerance_fail(skew: int, sign: int) -> None:
    """A correctly signed request stamped more than 5 minutes away is refused."""
    headers = _standard_headers(SECRET, "msg_1", NOW + sign * skew, b"{}")
    with pytest.raises(Unauthorized):
        verify(SignatureRule(), SECRET, headers, b"{}", NOW)
    stripe = {"stripe-signature": sign_stripe("sk", NOW + sign * skew, b"{}")}
    with pytest.raises(Unauthorized):
        verify(SignatureRule(scheme="stripe"), "sk", stripe, b"{}", NOW)


@given(body=bodies, tampered=bodies, secret=ids)
def test_hmac_sha256_and_stripe_schemes(body: bytes, tampered: bytes, secret: str) -> None:
    """GitHub's and Stripe's ways: the right signature verifies, another body fails."""
    github = SignatureRule(scheme="hmac_sha256", id_header="X-GitHub-Delivery")
    headers = {"x-hub-signature-256": sign_hmac_sha256(secret, body), "x-github-delivery": "d1"}
    assert verify(github, secret, headers, body, NOW) == "d1"
    stripe = SignatureRule(scheme="stripe")
    signed = {"stripe-signature": f"{sign_stripe(secret, NOW, body)},v0=ignored"}
    assert verify(stripe, secret, signed, body, NOW) is None
    if tampered != body:
        with pytest.raises(Unauthorized):
            verify(github, secret, headers, tampered, NOW)
        with pytest.raises(Unauthorized):
            verify(stripe, secret, signed, tampered, NOW)


def test_custom_header_and_prefix() -> None:
    """hmac_sha256 reads the named header with the named prefix; missing headers fail."""
    rule = SignatureRule(scheme="hmac_sha256", header="X-Signature", prefix="")
    good = {"x-signature": sign_hmac_sha256("s3cret-key", b"x", prefix="")}
    assert verify(rule, "s3cret-key", good, b"x", NOW) is None
    for headers in ({}, {"x-hub-signature-256": sign_hmac_sha256("s3cret-key", b"x")}):
        with pytest.raises(Unauthorized):
            verify(rule, "s3cret-key", headers, b"x", NOW)
    with pytest.raises(Unauthorized):
        verify(SignatureRule(), SECRET, {}, b"x", NOW)


class Echo(WorkflowType):
    """Returns its parameters."""

    name = "trigger_echo"

    @step
    async def echo(self, ctx: StepContext) -> Any:
        return dict(ctx.parameters)


class Plugin:
    @hookimpl
    def abi_workflow_types(self, register: Any) -> None:
        register(Echo)


async def _workflow(engine: Engine) -> str:
    workflow = await engine.workflows.create({"name": "echo", "type": "trigger_echo"})
    await engine.workflows.activate(workflow.id)
    return workflow.id


async def test_engine_triggers_crud_and_invoke(databases: Any) -> None:
    """put (secret generated once, masked after), get, list, delete; invoke maps the body
    and a replayed webhook-id answers the same execution."""
    async with engine_for(Plugin(), db=str(databases())) as engine:
        wf = await _workflow(engine)
        mapping = {"customer_id": "body.customer.id", "kind": "headers['x-kind']"}
        created = await engine.triggers.put("orders", {"workflow_id": wf, "parameters": mapping})
        assert created.secret.startswith("whsec_")
        assert "****" not in created.secret
        shown = await engine.triggers.get("orders")
        assert shown.secret.startswith("whsec_****")
        assert shown.secret != created.secret
        again = await engine.triggers.put("orders", {"workflow_id": wf, "parameters": mapping})
        assert "****" in again.secret  # kept, never shown again
        assert [t.id for t in (await engine.triggers.list()).items] == ["orders"]
        body = json.dumps({"customer": {"id": "c_9"}}).encode()
        headers = {**_standard_headers(created.secret, "msg_a", int(time.time()), body)}
        headers["x-kind"] = "paid"
        first = await engine.triggers.invoke("orders", headers, body)
        replay = await engine.triggers.invoke("orders", headers, body)
        assert replay.execution_id == first.execution_id
        done = await engine.executions.wait(first.execution_id, timeout=10)
        assert done.result == {"customer_id": "c_9", "kind": "paid"}
        other = b'{"customer": 3}'
        signed = _standard_headers(created.secret, "msg_b", int(time.time()), other)
        with pytest.raises(InvalidRequest) as bad:
            await engine.triggers.invoke("orders", signed, other)
        assert bad.value.details["field"] == "parameters.customer_id"
        await engine.triggers.delete("orders")
        with pytest.raises(TriggerNotFound):
            await engine.triggers.get("orders")
        with pytest.raises(Unauthorized):
            await engine.triggers.invoke("orders", headers, body)


async def test_put_checks_its_input(databases: Any) -> None:
    """Bad ids, mappings, schemes, secrets and unknown workflows are refused by field."""
    async with engine_for(Plugin(), db=str(databases())) as engine:
        wf = await _workflow(engine)
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("a b", {"workflow_id": wf}, "id"),
            ("t", {"workflow_id": wf, "parameters": {"x": "body["}}, "parameters.x"),
            ("t", {"workflow_id": wf, "parameters": {"1x": "body"}}, "parameters.1x"),
            ("t", {"workflow_id": wf, "signature": {"scheme": "md5"}}, "signature.scheme"),
            ("t", {"workflow_id": wf, "secret": "short"}, "secret"),
            ("t", {"workflow_id": wf, "unknown": 1}, "unknown"),
        ]
        for trigger_id, body, field in cases:
            with pytest.raises(InvalidRequest) as raised:
                await engine.triggers.put(trigger_id, body)
            assert raised.value.details["field"] == field, body
        with pytest.raises(WorkflowNotFound):
            await engine.triggers.put("t", {"workflow_id": "wf_missing"})


async def test_a_replay_on_two_engines_starts_one_execution(databases: Any) -> None:
    """The same delivery sent to two engines at once (two processes) starts one execution."""
    database = str(databases())
    async with engine_for(Plugin(), db=database) as one, engine_for(Plugin(), db=database) as two:
        wf = await _workflow(one)
        trigger = await one.triggers.put("t", {"workflow_id": wf})
        for n in range(5):
            body = json.dumps({"n": n}).encode()
            headers = _standard_headers(trigger.secret, f"msg_{n}", int(time.time()), body)
            seen: list[str] = []

            async def invoke(
                engine: Engine, headers: Any = headers, body: bytes = body, seen: Any = seen
            ) -> None:
                seen.append((await engine.triggers.invoke("t", headers, body)).execution_id)

            async with anyio.create_task_group() as tg:
                for engine in (one, two, one, two):
                    tg.start_soon(invoke, engine)
            assert len(set(seen)) == 1, seen
        listed = await one.executions.list(workflow_id=wf, page_size=100)
        assert listed.pagination.total_items == 5


@pytest.fixture
def served_engine(databases: Any) -> Iterator[Any]:
    with served(databases(), plugins=[Plugin()]) as found:
        yield found


def test_invoke_over_http_without_a_token(served_engine: Any) -> None:
    """Real uvicorn: PUT with a token; invoke without one answers 202 with the execution,
    a replay the same execution, a bad/expired/missing signature 401, a huge body 413;
    the OpenAPI document marks invoke as needing no token."""
    engine = served_engine.engine
    client = served_engine.client()
    wf = engine.call(_workflow, engine)
    put = client.put("/api/v1/triggers/gh", json={"workflow_id": wf})
    assert put.status_code == 200, put.text
    secret = put.json()["data"]["secret"]
    assert client.get("/api/v1/triggers/gh").json()["data"]["secret"] != secret
    anonymous = httpx.Client(base_url=served_engine.base_url, timeout=60)
    url = "/api/v1/triggers/gh/invoke"
    body = b'{"order": 1}'

    def send(headers: dict[str, str], content: bytes = body) -> httpx.Response:
        return anonymous.post(url, content=content, headers=headers)

    with anonymous:
        signed = _standard_headers(secret, "msg_1", int(time.time()), body)
        first = send(signed)
        assert first.status_code == 202, first.text
        execution_id = first.json()["data"]["execution_id"]
        replay = send(signed)
        assert (replay.status_code, replay.json()["data"]["execution_id"]) == (202, execution_id)
        old = _standard_headers(secret, "msg_2", int(time.time()) - 301, body)
        tampered = {**signed, "webhook-id": "msg_3"}
        for headers in (old, tampered, {}):
            refused = send(headers)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "UNAUTHORIZED"
        huge = b'{"x": "' + b"a" * 2_000_000 + b'"}'
        assert (
            send(_standard_headers(secret, "msg_4", int(time.time()), huge), huge).status_code
            == 413
        )
        unknown = anonymous.post("/api/v1/triggers/nope/invoke", content=body, headers=signed)
        assert unknown.status_code == 401
    done = engine.call(engine.executions.wait, execution_id, timeout=10)
    assert done.result == {"order": 1}
    document = client.get("/api/v1/openapi.json").json()
    assert document["paths"]["/api/v1/triggers/{trigger_id}/invoke"]["post"]["security"] == []
    assert document["paths"]["/api/v1/triggers/{trigger_id}"]["put"]["security"] != []
