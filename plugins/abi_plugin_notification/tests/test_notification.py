"""The notification type end to end: a real SMTP server and a real Slack receiver on 127.0.0.1."""

from __future__ import annotations

import copy
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from abi_engine import Engine, ExecutionStatus, Integration, StepStatus, hookimpl
from abi_engine.errors import (
    InvalidRequest,
    InvalidWorkflowConfig,
    ParameterValidationError,
    WorkflowExecutionError,
)

from .conftest import SMTP_PASSWORD, SMTP_USER, EngineFactory, Mailbox, Receiver, smtp_config

pytestmark = pytest.mark.anyio

#: The seed's notification configuration, exactly.
SEED_CONFIG: dict[str, Any] = {
    "channels": ["email", "slack"],
    "templates": {"email": "template_123", "slack": "template_456"},
    "recipients": {"email": ["user@example.com"], "slack": ["#channel", "@user"]},
    "priority_rules": [
        {"condition": "severity == 'high'", "priority": "urgent"},
        {"condition": "severity == 'medium'", "priority": "normal"},
    ],
}
LIBRARY = {
    "template_123": {
        "subject": "[$priority] Incident ${incident.id}: $title",
        "body": "Severity: $severity\nService: ${incident.service}\n\n$title",
    },
    "template_456": "Incident ${incident.id} ($severity): $title",
}
INTEGRATIONS = [{"id": "int_smtp", "required": True}, {"id": "int_slack", "required": True}]
EVENT = {
    "severity": "high",
    "title": "Checkout is down",
    "incident": {"id": "INC-42", "service": "checkout"},
}
STEPS = ["resolve_priority", "render", "send_email", "send_slack", "summarize"]


def seed_config(**changes: Any) -> dict[str, Any]:
    """The seed's configuration with its templates defined inline, and ``changes``."""
    return {**copy.deepcopy(SEED_CONFIG), "template_library": LIBRARY, **changes}


async def notify(
    engine: Engine,
    configuration: dict[str, Any],
    parameters: dict[str, Any],
    integrations: list[dict[str, Any]] = INTEGRATIONS,
) -> Any:
    """Create and activate a notification workflow and execute it synchronously."""
    workflow = await engine.workflows.create(
        {
            "name": "Incident alerts",
            "type": "notification",
            "configuration": configuration,
            "integrations": integrations,
        }
    )
    await engine.workflows.activate(workflow.id)
    return await engine.executions.execute(workflow.id, parameters, timeout_seconds=30)


async def test_seed_configuration_sends_email_and_slack(
    engine: Engine, smtp: tuple[Mailbox, int], slack: Receiver
) -> None:
    """An urgent incident: one email with priority headers, one Slack post per recipient."""
    execution = await notify(engine, seed_config(), EVENT)
    assert execution.status is ExecutionStatus.COMPLETED
    assert execution.steps is not None
    assert [(s.name, s.status) for s in execution.steps] == [
        (name, StepStatus.COMPLETED) for name in STEPS
    ]
    mailbox, _ = smtp
    [(sender, rcpt, mail)] = mailbox.messages
    assert (sender, rcpt) == ("alerts@example.com", ["user@example.com"])
    assert mail["To"] == "user@example.com"
    assert mail["From"] == "ABI Alerts <alerts@example.com>"
    assert mail["Subject"] == "[urgent] Incident INC-42: Checkout is down"
    assert (mail["X-Priority"], mail["Importance"], mail["X-ABI-Priority"]) == (
        "1 (Highest)",
        "high",
        "urgent",
    )
    assert mail["X-ABI-Execution-Id"] == execution.execution_id
    body = mail.get_content().replace("\r\n", "\n")
    assert body == "Severity: high\nService: checkout\n\nCheckout is down\n"
    assert slack.paths == ["/services/T0/B0/XyZsecret"] * 2
    assert [b["channel"] for b in slack.bodies] == ["#channel", "@user"]
    assert slack.bodies[0]["text"] == "[URGENT] Incident INC-42 (high): Checkout is down"
    result = execution.result
    assert (result["priority"], result["matched_rule"], result["sent"], result["failed"]) == (
        "urgent",
        0,
        3,
        0,
    )
    email = result["channels"]["email"]
    assert (email["template"], email["integration"], email["sent"]) == (
        "template_123",
        "int_smtp",
        1,
    )
    assert email["recipients"][0]["status"] == "sent"
    assert email["recipients"][0]["message_id"] == mail["Message-ID"]
    assert [r["recipient"] for r in result["channels"]["slack"]["recipients"]] == [
        "#channel",
        "@user",
    ]


@pytest.mark.parametrize(
    ("parameters", "priority", "rule", "x_priority"),
    [
        ({"severity": "medium"}, "normal", 1, "3 (Normal)"),
        ({"severity": "low"}, "low", None, "5 (Lowest)"),
        ({}, "low", None, "5 (Lowest)"),
    ],
)
async def test_priority_rules_first_match_else_default(
    engine: Engine,
    smtp: tuple[Mailbox, int],
    parameters: dict[str, Any],
    priority: str,
    rule: int | None,
    x_priority: str,
) -> None:
    """The first rule that holds sets the priority; none holding gives default_priority."""
    configuration = seed_config(
        default_priority="low",
        channels=["email"],
        templates={"email": {"body": "Priority $priority"}},
        recipients={"email": ["user@example.com"]},
    )
    execution = await notify(engine, configuration, parameters)
    assert (execution.result["priority"], execution.result["matched_rule"]) == (priority, rule)
    mail = smtp[0].messages[0][2]
    assert mail["X-Priority"] == x_priority
    assert mail.get_content().strip() == f"Priority {priority}"


async def test_templates_registered_by_a_plugin(
    make_engine: EngineFactory, smtp: tuple[Mailbox, int], slack: Receiver
) -> None:
    """The seed's configuration as it is: template ids registered by another plugin."""

    class Templates:
        @hookimpl
        def abi_notification_templates(self, register: Callable[[str, Any], None]) -> None:
            register("template_123", {"subject": "Alert: $title", "body": "$title"})
            register("template_456", "*$title*")

    engine = await make_engine(Templates(), allow_private_urls=True)
    await engine.integrations.put("int_smtp", "smtp", smtp_config(smtp[1]))
    await engine.integrations.put("int_slack", "slack", {"webhook_url": f"{slack.url}/hook"})
    execution = await notify(
        engine, copy.deepcopy(SEED_CONFIG), {"severity": "high", "title": "Hi"}
    )
    assert execution.status is ExecutionStatus.COMPLETED
    assert smtp[0].messages[0][2]["Subject"] == "Alert: Hi"
    assert slack.bodies[0]["text"] == "[URGENT] *Hi*"


async def test_slack_values_are_escaped(engine: Engine, slack: Receiver) -> None:
    """Parameter values cannot inject Slack markup (<!channel>); the template's own markup stays."""
    configuration = {
        "channels": ["slack"],
        "templates": {"slack": "<https://status.example.com|Status>: $title"},
        "recipients": {"slack": ["#ops"]},
    }
    await notify(
        engine, configuration, {"title": "<!channel> & co"}, [{"id": "int_slack", "required": True}]
    )
    assert (
        slack.bodies[0]["text"] == "<https://status.example.com|Status>: &lt;!channel&gt; &amp; co"
    )


async def test_smtp_login(make_engine: EngineFactory, smtp: tuple[Mailbox, int]) -> None:
    """With username and password the email channel logs in before sending."""
    engine = await make_engine(allow_private_urls=True)
    config = smtp_config(smtp[1], username=SMTP_USER, password=SMTP_PASSWORD)
    await engine.integrations.put("int_mail", "smtp", config)
    configuration = {
        "channels": ["email"],
        "templates": {"email": {"body": "Hello"}},
        "recipients": {"email": ["ops@example.com"]},
        "channel_integrations": {"email": "int_mail"},
    }
    execution = await notify(engine, configuration, {}, [{"id": "int_mail", "required": True}])
    assert execution.result["channels"]["email"]["integration"] == "int_mail"
    assert smtp[0].logins == [SMTP_USER]
    assert len(smtp[0].messages) == 1


async def test_wrong_smtp_password_fails_without_showing_it(
    make_engine: EngineFactory, smtp: tuple[Mailbox, int]
) -> None:
    """A refused login fails send_email; the recorded error never contains the password."""
    engine = await make_engine(allow_private_urls=True)
    wrong = "wrong-pa55word"
    await engine.integrations.put(
        "int_smtp", "smtp", smtp_config(smtp[1], username=SMTP_USER, password=wrong)
    )
    configuration = {
        "channels": ["email"],
        "templates": {"email": {"body": "Hello"}},
        "recipients": {"email": ["ops@example.com"]},
        "retry": {"attempts": 1},
    }
    with pytest.raises(WorkflowExecutionError) as raised:
        await notify(engine, configuration, {}, [{"id": "int_smtp", "required": True}])
    done = await engine.executions.get(raised.value.details["execution_id"])
    assert done.error is not None
    assert (done.error.step, done.error.type) == ("send_email", "NotificationFailed")
    assert "SMTPAuthenticationError" in done.error.message
    assert wrong not in done.error.message
    assert smtp[0].messages == []


async def test_smtp_server_down_fails_the_step_after_its_retries(
    engine: Engine, smtp: tuple[Mailbox, int]
) -> None:
    """Nothing listening on the SMTP port: send_email fails after its tries, error recorded."""
    port = smtp[1]
    await engine.integrations.put("int_smtp", "smtp", smtp_config(port + 1 if port < 65535 else 1))
    configuration = seed_config(channels=["email"], retry={"attempts": 2, "backoff_seconds": 0})
    configuration["recipients"] = {"email": ["user@example.com"]}
    configuration["templates"] = {"email": "template_123"}
    with pytest.raises(WorkflowExecutionError) as raised:
        await notify(engine, configuration, EVENT, [{"id": "int_smtp", "required": True}])
    done = await engine.executions.get(raised.value.details["execution_id"])
    assert done.status is ExecutionStatus.FAILED
    assert done.steps is not None
    send = done.steps[2]
    assert (send.name, send.status, send.attempts) == ("send_email", StepStatus.FAILED, 2)
    assert send.error is not None
    assert "user@example.com" in send.error.message
    assert "SMTP 127.0.0.1" in send.error.message


async def test_refused_recipient_is_retried_alone(
    engine: Engine, smtp: tuple[Mailbox, int]
) -> None:
    """A recipient refused once (451) is sent again on the next try; the others only once."""
    mailbox = smtp[0]
    mailbox.refuse_once.add("b@example.com")
    configuration = {
        "channels": ["email"],
        "templates": {"email": {"body": "Hello"}},
        "recipients": {"email": ["a@example.com", "b@example.com", "c@example.com"]},
        "retry": {"attempts": 2, "backoff_seconds": 0},
    }
    execution = await notify(engine, configuration, {}, [{"id": "int_smtp", "required": True}])
    assert execution.status is ExecutionStatus.COMPLETED
    assert [m[1] for m in mailbox.messages] == [
        ["a@example.com"],
        ["c@example.com"],
        ["b@example.com"],
    ]
    assert execution.steps is not None
    assert execution.steps[2].attempts == 2
    assert execution.result["channels"]["email"]["sent"] == 3


async def test_failures_recorded_per_recipient_without_fail_on_error(
    engine: Engine, smtp: tuple[Mailbox, int], slack: Receiver
) -> None:
    """fail_on_error false: the execution completes and each recipient's outcome is listed."""
    smtp[0].refuse.add("gone@example.com")
    slack.status = 500
    configuration = seed_config(fail_on_error=False, retry={"attempts": 1})
    configuration["recipients"]["email"] = ["user@example.com", "gone@example.com"]
    execution = await notify(engine, configuration, EVENT)
    assert execution.status is ExecutionStatus.COMPLETED
    result = execution.result
    assert (result["sent"], result["failed"]) == (1, 3)
    email = result["channels"]["email"]["recipients"]
    assert [r["status"] for r in email] == ["sent", "failed"]
    assert "550" in email[1]["error"]
    slack_outcome = result["channels"]["slack"]["recipients"][0]
    assert slack_outcome["status"] == "failed"
    assert "answered 500" in slack_outcome["error"]
    assert "XyZsecret" not in slack_outcome["error"]


async def test_slack_failure_fails_the_step(engine: Engine, slack: Receiver) -> None:
    """A Slack webhook answering 500 fails send_slack; the webhook URL is not in the error."""
    slack.status = 500
    configuration = {
        "channels": ["slack"],
        "templates": {"slack": {"body": "Hi"}},
        "recipients": {"slack": ["#ops"]},
        "retry": {"attempts": 1},
    }
    with pytest.raises(WorkflowExecutionError) as raised:
        await notify(engine, configuration, {}, [{"id": "int_slack", "required": True}])
    assert raised.value.details["step"] == "send_slack"
    assert "XyZsecret" not in raised.value.details["error_message"]


async def test_webhook_channel(engine: Engine, slack: Receiver) -> None:
    """The webhook channel POSTs the rendered message as JSON to each URL."""
    configuration = {
        "channels": ["webhook"],
        "templates": {"webhook": {"subject": "Deploy", "body": "Deployed $version"}},
        "recipients": {"webhook": [f"{slack.url}/hooks/deploys"]},
    }
    execution = await notify(engine, configuration, {"version": "1.2.3"}, [])
    [body] = slack.bodies
    assert slack.paths == ["/hooks/deploys"]
    assert body["type"] == "notification"
    assert (body["subject"], body["body"], body["priority"]) == (
        "Deploy",
        "Deployed 1.2.3",
        "normal",
    )
    assert body["execution_id"] == execution.execution_id
    assert execution.result["channels"]["webhook"]["integration"] is None


async def test_webhook_host_resolved_off_the_event_loop(
    engine: Engine, slack: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook and slack channels look hosts up in a worker thread, never on the loop."""
    on_loop: list[object] = []
    real = socket.getaddrinfo

    def spy(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            on_loop.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    configuration = {
        "channels": ["webhook"],
        "templates": {"webhook": {"body": "Deployed $version"}},
        "recipients": {"webhook": [f"{slack.url}/hooks/deploys"]},
    }
    await notify(engine, configuration, {"version": "1.2.3"}, [])
    assert slack.paths == ["/hooks/deploys"]
    assert on_loop == []


async def test_integration_must_be_the_workflows_own(engine: Engine) -> None:
    """A connected int_smtp the workflow does not list is not used: the step fails, saying so."""
    configuration = seed_config(channels=["email"])
    configuration["recipients"] = {"email": ["user@example.com"]}
    configuration["templates"] = {"email": "template_123"}
    configuration["retry"] = {"attempts": 1}
    with pytest.raises(WorkflowExecutionError) as raised:
        await notify(engine, configuration, EVENT, [])
    assert "list it in the workflow's integrations" in raised.value.details["error_message"]


async def test_private_smtp_host_refused_without_allow_private(
    make_engine: EngineFactory, smtp: tuple[Mailbox, int]
) -> None:
    """The engine's outbound rules apply to the SMTP host too: at put, and again at use (for a
    connection stored anyway, as by an engine that allowed it)."""
    engine = await make_engine()
    with pytest.raises(InvalidRequest) as refused:
        await engine.integrations.put("int_smtp", "smtp", smtp_config(smtp[1]))
    assert refused.value.details["field"] == "config.host"
    now = datetime.now(UTC)
    engine.store.put_integration(
        Integration(
            id="int_smtp",
            provider="smtp",
            config=smtp_config(smtp[1]),
            created_at=now,
            updated_at=now,
        )
    )
    configuration = {
        "channels": ["email"],
        "templates": {"email": {"body": "Hi"}},
        "recipients": {"email": ["user@example.com"]},
        "retry": {"attempts": 1},
    }
    with pytest.raises(WorkflowExecutionError) as raised:
        await notify(engine, configuration, {}, [{"id": "int_smtp", "required": True}])
    assert "not allowed" in raised.value.details["error_message"]
    assert smtp[0].messages == []


async def test_missing_template_variable_is_refused_before_running(engine: Engine) -> None:
    """A placeholder without a value: 422 naming parameters.<variable>, nothing sent."""
    with pytest.raises(ParameterValidationError) as raised:
        await notify(engine, seed_config(), {"severity": "high", "title": "x"})
    assert raised.value.details["field"] == "parameters.incident.id"
    assert "template_123" in raised.value.message


async def test_provider_configs_are_checked_and_masked(
    engine: Engine, smtp: tuple[Mailbox, int]
) -> None:
    """smtp and slack connections: bad values name config.<field>; secrets never shown."""
    shown = await engine.integrations.put(
        "int_smtp", "smtp", smtp_config(smtp[1], username="u", password="hunter2")
    )
    assert shown.config["password"] == "********"
    assert (await engine.integrations.get("int_smtp")).config["password"] == "********"
    slack = await engine.integrations.get("int_slack")
    assert "XyZsecret" not in slack.config["webhook_url"]
    for provider, config, field in [
        ("smtp", smtp_config(0), "config.port"),
        ("smtp", smtp_config(25, from_address="not an address"), "config.from_address"),
        ("smtp", smtp_config(25, username="u"), "config.password"),
        ("smtp", smtp_config(25, starttls=True, ssl=True), "config.ssl"),
        ("smtp", {"host": "mail.example.com"}, "config.from_address"),
        ("slack", {"webhook_url": "hooks.slack.com/x"}, "config.webhook_url"),
    ]:
        with pytest.raises(InvalidRequest) as raised:
            await engine.integrations.put("int_bad", provider, config)
        assert raised.value.details["field"] == field, (provider, config)


BAD_CONFIGS = [
    ({"channels": ["email", "sms"]}, "configuration.channels[1]"),
    ({"channels": ["email", "email"]}, "configuration.channels[1]"),
    ({"channels": []}, "configuration.channels"),
    ({"recipients": {"email": ["user@example.com"]}}, "configuration.recipients.slack"),
    ({"templates": {"email": "template_123"}}, "configuration.templates.slack"),
    (
        {"recipients": {"email": ["not-an-address"], "slack": ["#c"]}},
        "configuration.recipients.email[0]",
    ),
    (
        {"recipients": {"email": ["user@example.com"], "slack": ["channel"]}},
        "configuration.recipients.slack[0]",
    ),
    (
        {"recipients": {"email": ["a@example.com"], "slack": ["#c"], "sms": ["1"]}},
        "configuration.recipients.sms",
    ),
    (
        {"priority_rules": [{"condition": "severity ==", "priority": "urgent"}]},
        "configuration.priority_rules[0].condition",
    ),
    (
        {"priority_rules": [{"condition": "severity.__class__", "priority": "urgent"}]},
        "configuration.priority_rules[0].condition",
    ),
    (
        {"priority_rules": [{"condition": "__import__('os')", "priority": "urgent"}]},
        "configuration.priority_rules[0].condition",
    ),
    (
        {"priority_rules": [{"condition": "True", "priority": "critical"}]},
        "configuration.priority_rules[0].priority",
    ),
    ({"priority_rules": [{"condition": "True"}]}, "configuration.priority_rules[0].priority"),
    ({"default_priority": "meh"}, "configuration.default_priority"),
    ({"templates": {"email": "Cost: $ 5", "slack": "x y"}}, "configuration.templates.email"),
    (
        {"template_library": {"template_123": {"text": "x"}}},
        "configuration.template_library.template_123.text",
    ),
    (
        {"template_library": {"template_123": {"subject": "$"}}},
        "configuration.template_library.template_123.body",
    ),
    ({"channel_integrations": {"webhook": "int_x"}}, "configuration.channel_integrations.webhook"),
    ({"retry": {"attempts": 0}}, "configuration.retry.attempts"),
    ({"channel": ["email"]}, "configuration.channel"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_CONFIGS, ids=[f for _, f in BAD_CONFIGS])
async def test_bad_configuration_names_the_field(
    engine: Engine, changes: dict[str, Any], field: str
) -> None:
    """Each mistake is INVALID_WORKFLOW_CONFIG naming its field, when the workflow is created."""
    with pytest.raises(InvalidWorkflowConfig) as raised:
        await engine.workflows.create(
            {"name": "bad", "type": "notification", "configuration": seed_config(**changes)}
        )
    assert raised.value.details["field"] == field
