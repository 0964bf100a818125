"""The ``notification`` workflow type: its configuration, its checks and its steps.

Steps, in order:

``resolve_priority``
    Evaluates ``priority_rules`` over the parameters; the first rule that
    holds gives the priority, else ``default_priority``.
``render``
    Renders each channel's template (subject and body) with the parameters.
``send_<channel>``
    One step per channel, in the order of ``channels``: sends the rendered
    message to each recipient, with the step retry policy of ``retry``.
``summarize``
    The execution's result: the priority and each recipient's outcome.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import attrs

from abi_engine import Host, RetryPolicy, StepContext, StepSpec, WorkflowType
from abi_engine.errors import (
    AbiError,
    InvalidRequest,
    InvalidWorkflowConfig,
    ParameterValidationError,
)
from abi_engine.netguard import check_url
from abi_plugin_notification.channels import send_email, send_slack, send_webhook
from abi_plugin_notification.providers import check_address
from abi_plugin_notification.rules import PRIORITIES, RuleError, check_condition, first_match
from abi_plugin_notification.templates import (
    MessageTemplate,
    MissingVariable,
    TemplateError,
    is_template_id,
    lookup,
    parse_template,
    render,
)

__all__ = [
    "CHANNELS",
    "DEFAULT_INTEGRATIONS",
    "RESERVED_VARIABLES",
    "Notification",
    "NotificationConfiguration",
    "NotificationFailed",
    "PriorityRule",
    "RetrySettings",
]

#: The channels a workflow may list.
CHANNELS = ("email", "slack", "webhook")
#: The integration each channel sends through unless ``channel_integrations`` says otherwise.
DEFAULT_INTEGRATIONS = {"email": "int_smtp", "slack": "int_slack"}
#: Template variables the engine provides (they win over parameters of the same name).
RESERVED_VARIABLES = ("priority", "execution_id", "workflow_id", "parameters")
MAX_RECIPIENTS = 100
MAX_RULES = 100
_SLACK_RECIPIENT = re.compile(r"^[#@][A-Za-z0-9._\-]{1,80}$")
_INTEGRATION_ID = re.compile(r"^int_[A-Za-z0-9_.\-]{1,120}$")


#: Send steps whose served recipients are remembered between tries (oldest forgotten first).
_MAX_SERVED = 10_000


@attrs.define(kw_only=True)
class PriorityRule:
    """A ``priority_rules`` entry: when ``condition`` holds, the priority is ``priority``."""

    condition: str
    priority: str


@attrs.define(kw_only=True)
class RetrySettings:
    """``configuration.retry``: how each send step is retried."""

    attempts: int = 3
    backoff_seconds: float = 1.0
    backoff_multiplier: float = 2.0
    max_backoff_seconds: float = 60.0


@attrs.define(kw_only=True)
class NotificationConfiguration:
    """A ``notification`` workflow's configuration (see docs/notification.md)."""

    channels: list[str]
    templates: dict[str, Any]
    recipients: dict[str, list[str]]
    priority_rules: list[PriorityRule] = attrs.Factory(list)
    default_priority: str = "normal"
    template_library: dict[str, Any] = attrs.Factory(dict)
    channel_integrations: dict[str, str] = attrs.Factory(dict)
    retry: RetrySettings = attrs.Factory(RetrySettings)
    fail_on_error: bool = True
    webhook_timeout_seconds: float = 10.0


class NotificationFailed(Exception):
    """A channel could not deliver to some recipients (``fail_on_error``)."""


def _bad(field: str, message: str, **extra: Any) -> InvalidWorkflowConfig:
    return InvalidWorkflowConfig(
        f"Invalid value for 'configuration.{field}': {message}",
        {"field": f"configuration.{field}", **extra},
    )


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Notification(WorkflowType):
    """Sends a message on each configured channel, prioritised by rules over the parameters."""

    name = "notification"
    description = "Sends notifications based on events"
    docs_url = "docs/notification.md"
    Configuration = NotificationConfiguration

    _registered: Mapping[str, Any] = {}
    #: The engine's host (managed templates, outbound policy), once bound.
    _host: Host | None = None

    def __init__(self) -> None:
        # Recipients already served by an earlier try of a send step, so a retry
        # sends only to those that failed (kept in memory: a restart may resend).
        self._served: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def bind(self, host: Host) -> None:
        self._host = host
        self._registered = host.registered_templates

    @property
    def _allow_private(self) -> bool:
        return self._host is not None and self._host.allow_private_urls

    # -- configuration -------------------------------------------------------------------------

    def check_configuration(self, config: NotificationConfiguration) -> None:
        self._check_channels(config)
        for channel in config.channels:
            self._check_recipients(channel, config.recipients[channel])
        for key in config.recipients:
            if key not in config.channels:
                raise _bad(f"recipients.{key}", f"{key!r} is not one of the channels")
        library = self._library(config)
        for key in config.templates:
            if key not in config.channels:
                raise _bad(f"templates.{key}", f"{key!r} is not one of the channels")
        for channel in config.channels:
            self.template_for(config, channel, library)
        self._check_rules(config)
        for channel, integration in config.channel_integrations.items():
            if channel not in ("email", "slack"):
                raise _bad(f"channel_integrations.{channel}", "only email and slack use one")
            if not _INTEGRATION_ID.match(integration):
                raise _bad(f"channel_integrations.{channel}", "expected an id such as int_smtp")
        retry = config.retry
        if not 1 <= retry.attempts <= 10:
            raise _bad("retry.attempts", "must be between 1 and 10")
        if retry.backoff_seconds < 0 or retry.max_backoff_seconds < 0:
            raise _bad("retry.backoff_seconds", "must not be negative")
        if retry.backoff_multiplier < 1:
            raise _bad("retry.backoff_multiplier", "must be at least 1")
        if not 0 < config.webhook_timeout_seconds <= 60:
            raise _bad("webhook_timeout_seconds", "must be more than 0 and at most 60")

    def _check_channels(self, config: NotificationConfiguration) -> None:
        if not config.channels:
            raise _bad("channels", "list at least one channel", allowed=list(CHANNELS))
        for index, channel in enumerate(config.channels):
            if channel not in CHANNELS:
                raise _bad(
                    f"channels[{index}]", f"unknown channel {channel!r}", allowed=list(CHANNELS)
                )
            if channel in config.channels[:index]:
                raise _bad(f"channels[{index}]", f"{channel!r} is listed twice")
            if not config.recipients.get(channel):
                raise _bad(f"recipients.{channel}", f"the {channel} channel has no recipients")
            if channel not in config.templates:
                raise _bad(f"templates.{channel}", f"the {channel} channel has no template")

    def _check_recipients(self, channel: str, recipients: list[str]) -> None:
        if len(recipients) > MAX_RECIPIENTS:
            raise _bad(f"recipients.{channel}", f"at most {MAX_RECIPIENTS} recipients")
        for index, recipient in enumerate(recipients):
            where = f"recipients.{channel}[{index}]"
            if recipient in recipients[:index]:
                raise _bad(where, f"{recipient!r} is listed twice")
            if channel == "email":
                try:
                    check_address(recipient)
                except ValueError as exc:
                    raise _bad(where, str(exc)) from None
            elif channel == "slack" and not _SLACK_RECIPIENT.match(recipient):
                raise _bad(where, "expected a channel ('#alerts') or a user ('@ada')")
            elif channel == "webhook":
                try:
                    check_url(recipient, field=where, allow_private=self._allow_private)
                except AbiError as exc:
                    raise _bad(where, exc.message.split(": ", 1)[-1]) from None

    def _library(self, config: NotificationConfiguration) -> dict[str, MessageTemplate]:
        library = {}
        for template_id, value in config.template_library.items():
            if not is_template_id(template_id):
                raise _bad(
                    f"template_library.{template_id}",
                    "template ids are letters, digits, '_', '.', '-' (at most 100)",
                )
            try:
                library[template_id] = parse_template(value, source=template_id)
            except TemplateError as exc:
                field, _, message = str(exc).partition(": ")
                if not message:
                    field, message = "", field
                raise _bad(f"template_library.{template_id}.{field}".rstrip("."), message) from None
        return library

    def _managed_id(
        self, config: NotificationConfiguration, channel: str, library: Mapping[str, Any]
    ) -> str | None:
        """The id of the managed template ``channel`` names, if it names one.

        An id that neither the workflow's ``template_library`` nor a plugin
        defines names a template managed by the engine
        (``PUT /api/v1/notification_templates/{id}``), which may not exist yet.
        """
        value = config.templates[channel]
        if (
            isinstance(value, str)
            and is_template_id(value)
            and value not in library
            and value not in self._registered
        ):
            return value
        return None

    def template_ids(self, config: NotificationConfiguration) -> list[str]:
        """The managed templates the channels name (the engine shows them on the workflow)."""
        library = config.template_library
        found = (self._managed_id(config, channel, library) for channel in config.channels)
        return list(dict.fromkeys(i for i in found if i is not None))

    def check_template(self, template: Any) -> None:
        """A managed template's subject and body must be well-formed (400 naming the field)."""
        value = {"body": template.body}
        if template.subject is not None:
            value["subject"] = template.subject
        try:
            parse_template(value, source=template.id)
        except TemplateError as exc:
            field, _, message = str(exc).partition(": ")
            raise InvalidRequest(
                f"Invalid value for '{field}': {message}", {"field": field}
            ) from None

    def template_for(
        self,
        config: NotificationConfiguration,
        channel: str,
        library: Mapping[str, MessageTemplate] | None = None,
        managed: Mapping[str, Any] | None = None,
    ) -> MessageTemplate | None:
        """The template of ``channel``: a library, registered or managed id, or inline text.

        ``None`` for a managed template not known here: ``managed`` (templates
        read by the caller) or else what the engine last read. The engine
        refuses to execute while one is missing.
        """
        value = config.templates[channel]
        library = self._library(config) if library is None else library
        where = f"templates.{channel}"
        if isinstance(value, str) and is_template_id(value):
            if value in library:
                return library[value]
            if value in self._registered:
                try:
                    return parse_template(self._registered[value], source=value)
                except TemplateError as exc:
                    raise _bad(where, f"registered template {value!r}: {exc}") from None
            if managed is not None:
                found = managed.get(value)
            else:
                found = self._host.cached_template(value) if self._host is not None else None
            if found is None:
                return None
            return MessageTemplate(body=found.body, subject=found.subject, source=value)
        try:
            return parse_template(value)
        except TemplateError as exc:
            raise _bad(where, str(exc)) from None

    def _check_rules(self, config: NotificationConfiguration) -> None:
        if len(config.priority_rules) > MAX_RULES:
            raise _bad("priority_rules", f"at most {MAX_RULES} rules")
        if config.default_priority not in PRIORITIES:
            raise _bad("default_priority", "unknown priority", allowed=list(PRIORITIES))
        for index, rule in enumerate(config.priority_rules):
            try:
                check_condition(rule.condition)
            except RuleError as exc:
                raise _bad(f"priority_rules[{index}].condition", str(exc)) from None
            if rule.priority not in PRIORITIES:
                raise _bad(
                    f"priority_rules[{index}].priority",
                    f"unknown priority {rule.priority!r}",
                    allowed=list(PRIORITIES),
                )

    # -- parameters ----------------------------------------------------------------------------

    def check_parameters(self, params: Any, config: NotificationConfiguration) -> None:
        """Every placeholder of every template has a value (else 422 naming it)."""
        values: dict[str, Any] = {name: "" for name in RESERVED_VARIABLES} | dict(params)
        values["parameters"] = dict(params)
        for channel in config.channels:
            template = self.template_for(config, channel)
            if template is None:  # a managed template the engine checks exists, then reads
                continue
            for variable in sorted(template.variables()):
                try:
                    lookup(values, variable)
                except MissingVariable:
                    raise ParameterValidationError(
                        f"The {channel} template {template.source!r} uses ${{{variable}}},"
                        " which the parameters do not have",
                        {"field": f"parameters.{variable}", "channel": channel},
                    ) from None

    # -- steps -----------------------------------------------------------------------------------

    def steps(self, config: NotificationConfiguration) -> list[StepSpec]:
        retry = RetryPolicy(
            attempts=config.retry.attempts,
            backoff_seconds=config.retry.backoff_seconds,
            backoff_multiplier=config.retry.backoff_multiplier,
            max_backoff_seconds=config.retry.max_backoff_seconds,
        )
        specs = [
            StepSpec(name="resolve_priority", fn=self.resolve_priority),
            StepSpec(name="render", fn=self.render),
        ]
        for channel in config.channels:
            send = partial(self.send, channel)
            specs.append(StepSpec(name=f"send_{channel}", fn=send, retry=retry))
        specs.append(StepSpec(name="summarize", fn=self.summarize))
        return specs

    async def resolve_priority(self, ctx: StepContext) -> dict[str, Any]:
        config: NotificationConfiguration = ctx.config
        conditions = [rule.condition for rule in config.priority_rules]
        index, notes = first_match(conditions, ctx.parameters)
        priority = (
            config.default_priority if index is None else config.priority_rules[index].priority
        )
        return {"priority": priority, "matched_rule": index, "notes": notes}

    async def render(self, ctx: StepContext) -> dict[str, Any]:
        config: NotificationConfiguration = ctx.config
        priority = ctx.results["resolve_priority"]["priority"]
        values = {
            **ctx.parameters,
            "priority": priority,
            "execution_id": ctx.execution_id,
            "workflow_id": ctx.workflow_id,
            "parameters": dict(ctx.parameters),
        }
        rendered = {}
        ids = self.template_ids(config)
        managed = await self._host.find_templates(ids) if ids and self._host is not None else {}
        for channel in config.channels:
            template = self.template_for(config, channel, managed=managed)
            if template is None:
                raise LookupError(
                    f"notification template {config.templates[channel]!r} does not exist"
                    " (deleted since the execution started?)"
                )
            escape: Callable[[str], str] = _slack_escape if channel == "slack" else str
            subject = template.subject
            rendered[channel] = {
                "template": template.source,
                "subject": None if subject is None else render(subject, values, escape),
                "body": render(template.body, values, escape),
            }
        return rendered

    async def send(self, channel: str, ctx: StepContext) -> dict[str, Any]:
        """Send the channel's message to each recipient an earlier try did not serve."""
        config: NotificationConfiguration = ctx.config
        rendered = ctx.results["render"][channel]
        message = {
            "subject": rendered["subject"],
            "body": rendered["body"],
            "priority": ctx.results["resolve_priority"]["priority"],
            "execution_id": ctx.execution_id,
            "workflow_id": ctx.workflow_id,
        }
        key = (ctx.execution_id, ctx.step_name)
        while len(self._served) >= _MAX_SERVED:  # entries of executions ended between tries
            self._served.pop(next(iter(self._served)))
        served = self._served.setdefault(key, {})
        recipients = config.recipients[channel]
        failures: dict[str, dict[str, Any]] = {}
        todo = [r for r in recipients if r not in served]
        for outcome in await self._deliver(channel, ctx, message, todo):
            target = served if outcome["status"] == "sent" else failures
            target[outcome["recipient"]] = outcome
        outcomes = [served.get(r) or failures[r] for r in recipients]
        if failures and config.fail_on_error:
            if ctx.attempt >= config.retry.attempts:
                self._served.pop(key, None)
            detail = "; ".join(
                f"{o['recipient']}: {o['error']}" for o in list(failures.values())[:5]
            )
            raise NotificationFailed(
                f"{channel}: {len(failures)} of {len(outcomes)} recipients failed: {detail}"
            )
        self._served.pop(key, None)
        return {
            "template": rendered["template"],
            "integration": self._integration(config, channel),
            "sent": len(outcomes) - len(failures),
            "failed": len(failures),
            "recipients": outcomes,
        }

    @staticmethod
    def _integration(config: NotificationConfiguration, channel: str) -> str | None:
        if channel not in DEFAULT_INTEGRATIONS:
            return None
        return config.channel_integrations.get(channel, DEFAULT_INTEGRATIONS[channel])

    async def _deliver(
        self, channel: str, ctx: StepContext, message: dict[str, Any], recipients: list[str]
    ) -> list[dict[str, Any]]:
        config: NotificationConfiguration = ctx.config
        if not recipients:
            return []
        if channel == "webhook":
            timeout = config.webhook_timeout_seconds
            return await send_webhook(message, recipients, timeout, self._allow_private)
        integration_id = self._integration(config, channel) or ""
        provider = "smtp" if channel == "email" else "slack"
        connection = ctx.integrations.get(integration_id)
        if connection is None:
            raise LookupError(
                f"integration {integration_id!r} is not one of this workflow's connected"
                f" integrations: list it in the workflow's integrations and connect it with"
                f" the {provider!r} provider"
            )
        if connection.provider != provider:
            raise LookupError(
                f"integration {integration_id!r} is a {connection.provider!r} connection;"
                f" the {channel} channel needs a {provider!r} one"
            )
        settings = ctx.client(integration_id)
        if channel == "email":
            return await send_email(settings, message, recipients, self._allow_private)
        return await send_slack(settings, message, recipients, self._allow_private)

    async def summarize(self, ctx: StepContext) -> dict[str, Any]:
        config: NotificationConfiguration = ctx.config
        priority = ctx.results["resolve_priority"]
        channels = {channel: ctx.results[f"send_{channel}"] for channel in config.channels}
        return {
            "priority": priority["priority"],
            "matched_rule": priority["matched_rule"],
            "channels": channels,
            "sent": sum(c["sent"] for c in channels.values()),
            "failed": sum(c["failed"] for c in channels.values()),
        }
