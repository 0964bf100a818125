"""Logs (#15, point 3): the JSON formatter's lines, and no secret in any log record.

A representative run (access tokens made and refused, webhooks with their
secrets delivering and failing, callbacks with their secrets, an integration's
credentials used by an ``http_request`` step that fails, a step whose error
quotes the callback secret) is logged at DEBUG on every engine backend; no
record, message, extra field or traceback holds a secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import runtime_plugins
from hypothesis import given
from hypothesis import strategies as st
from webhook_testing import (  # noqa: F401 - the *_fixture names register fixtures
    Receiver,
    eventually,
    make_engine_fixture,
    receiver_fixture,
)

from abi_engine import Engine
from abi_engine.errors import AbiError, Unauthorized
from abi_engine.logs import JsonFormatter

WEBHOOK_SECRET = "whsec_TG9nU2VjcmV0V2ViaG9va0tleTEyMzQ1Njc4"
CALLBACK_SECRET = "whsec_Q2FsbGJhY2tTZWNyZXRLZXk5ODc2NTQzMjE="
BEARER = "integration-bearer-5ecr3t-7a1b9c"
PASSWORD = "basic-pa55word-0f3e2d"


def _formatted(records: list[logging.LogRecord]) -> list[str]:
    formatter = JsonFormatter()
    return [formatter.format(r) for r in records]


@pytest.mark.anyio
async def test_no_secret_in_any_log_record(
    make_engine: Callable[..., Engine], receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Everything logged at DEBUG while secrets flow through the engine holds none of them."""
    caplog.set_level(logging.DEBUG)
    receiver.plan("/hook", [500, 200])
    receiver.plan("/callback", [503, 200])
    receiver.plan("/api/fail", [500])
    engine = make_engine(plugins=[runtime_plugins])
    secrets = [WEBHOOK_SECRET, CALLBACK_SECRET, BEARER, PASSWORD]
    async with engine:
        made = engine.tokens.create_token("usr_ops", None, name="ops")
        secrets.append(made)
        with pytest.raises(Unauthorized):
            engine.tokens.authenticate(made + "x")
        principal = engine.tokens.authenticate(made)
        child = await engine.tokens.create_own(principal, {"name": "child"})
        secrets.append(child.token)
        hook = await engine.webhooks.create(
            {"url": receiver.url("/hook"), "events": ["workflow.created"], "secret": WEBHOOK_SECRET}
        )
        rotated = await engine.webhooks.update(hook.id, {"rotate_secret": True})
        if rotated.secret:
            secrets.append(rotated.secret)
        await engine.integrations.put(
            "int_crm",
            "http",
            {"base_url": receiver.url("/api"), "auth": {"type": "bearer", "token": BEARER}},
        )
        await engine.integrations.put(
            "int_erp",
            "http",
            {
                "base_url": receiver.url("/api"),
                "auth": {"type": "basic", "username": "u", "password": PASSWORD},
            },
        )
        calls = await engine.workflows.create(
            {
                "name": "calls",
                "type": "custom",
                "integrations": [{"id": "int_crm", "required": True}],
                "configuration": {
                    "steps": [
                        {
                            "name": "call",
                            "action": "http_request",
                            "integration": "int_crm",
                            "path": "/fail",
                        }
                    ]
                },
            }
        )
        await engine.workflows.activate(calls.id)
        failed = await engine.executions.execute(
            calls.id,
            {},
            wait=False,
            callback_url=receiver.url("/callback"),
            callback_secret=CALLBACK_SECRET,
        )
        three = await engine.workflows.create(
            {"name": "t", "type": "test_three", "configuration": {}}
        )
        await engine.workflows.activate(three.id)
        with pytest.raises(AbiError):  # the step's error quotes the callback secret
            await engine.executions.execute(
                three.id,
                {"do": {"second": {"raise": f"leaked {CALLBACK_SECRET}"}}},
                callback_url=receiver.url("/callback"),
                callback_secret=CALLBACK_SECRET,
            )
        await eventually(lambda: len(receiver.received("/hook")) >= 2)
        await eventually(lambda: len(receiver.received("/callback")) >= 3)
        assert (await engine.executions.get(failed.execution_id)).status.value == "failed"
        with anyio.move_on_after(0.5):  # let the last attempts be recorded and logged
            await anyio.sleep(0.5)
    lines = _formatted(caplog.records)
    assert any(failed.execution_id in line for line in lines)  # failures were logged
    keys = {s.removeprefix("whsec_") for s in secrets} | set(secrets)
    for line in lines:
        for secret in keys:
            assert secret not in line, (secret, line)


def test_json_formatter_line() -> None:
    """One JSON object: time (UTC, Z), level, logger, message, the extra fields, the traceback."""
    logger = logging.getLogger("abi_engine.test_logs")
    try:
        raise ValueError("bad")
    except ValueError:
        record = logger.makeRecord(
            logger.name,
            logging.WARNING,
            __file__,
            1,
            "execution %s failed",
            ("exec_1",),
            exc_info=__import__("sys").exc_info(),
            extra={"execution_id": "exec_1", "error": {"code": "X"}},
        )
    line = json.loads(JsonFormatter().format(record))
    assert line["time"].endswith("Z")
    assert line["level"] == "warning"
    assert line["logger"] == "abi_engine.test_logs"
    assert line["message"] == "execution exec_1 failed"
    assert line["execution_id"] == "exec_1"
    assert line["error"] == {"code": "X"}
    assert "ValueError: bad" in line["exception"]


@given(st.dictionaries(st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True), st.text(), max_size=5))
def test_json_formatter_keeps_any_extra(extra: dict[str, Any]) -> None:
    """Any extra field (not a LogRecord attribute) comes out as a key of the line, and the
    line is always one line of valid JSON."""
    reserved = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
    extra = {k: v for k, v in extra.items() if k not in reserved}
    record = logging.getLogger("x").makeRecord(
        "x", logging.INFO, "f", 1, "m\nn", (), None, extra=extra
    )
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = json.loads(text)
    for key, value in extra.items():
        assert line[key] == value


@pytest.mark.anyio
async def test_failed_firing_logs_one_line_with_ids(
    make_engine: Callable[..., Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """A due time that cannot start an execution is one warning with the schedule's and
    workflow's ids and the error as fields (the JSON line's keys)."""
    caplog.set_level(logging.INFO, logger="abi_engine")
    engine = make_engine()
    async with engine:
        wf = await engine.workflows.create(
            {
                "name": "f",
                "type": "custom",
                "configuration": {"steps": [{"name": "w", "action": "delay", "seconds": 0}]},
                "integrations": [{"id": "int_gone", "required": True}],
            }
        )
        await engine.workflows.activate(wf.id)
        schedule = await engine.schedules.create(
            wf.id,
            {
                "name": "s",
                "schedule_type": "interval",
                "interval_value": 60,
                "interval_unit": "seconds",
            },
        )
        assert schedule.next_execution is not None
        await engine.scheduler.tick(schedule.next_execution)
    lines = [json.loads(line) for line in _formatted(caplog.records)]
    [line] = [x for x in lines if x.get("schedule_id") == schedule.id]
    assert line["level"] == "warning"
    assert line["logger"] == "abi_engine.scheduler"
    assert line["workflow_id"] == wf.id
    assert line["error"]["code"] == "INTEGRATION_MISSING"
    assert line["due_at"]
