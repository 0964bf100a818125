"""The ``notification`` workflow type: messages on email, Slack and webhooks, by priority.

A notification workflow lists its ``channels``, a template and recipients for
each, and ``priority_rules`` (safe expressions over the parameters) that set
the priority. Email goes through an SMTP server and Slack through an incoming
webhook, each connected as an integration of the providers this plugin
registers (``smtp``, ``slack``); templates come from the workflow's
``template_library``, from plugins (the ``abi_notification_templates`` hook),
or inline. See ``docs/notification.md``.

Registered through the ``abi_engine`` entry point and the public hooks only,
exactly as a third-party workflow type would be.
"""

from __future__ import annotations

from collections.abc import Callable

from abi_engine import IntegrationProvider, WorkflowType, hookimpl
from abi_plugin_notification.providers import SlackProvider, SmtpProvider
from abi_plugin_notification.templates import MessageTemplate, parse_template, render
from abi_plugin_notification.workflow import (
    CHANNELS,
    Notification,
    NotificationConfiguration,
    NotificationFailed,
    PriorityRule,
)

__all__ = [
    "CHANNELS",
    "MessageTemplate",
    "Notification",
    "NotificationConfiguration",
    "NotificationFailed",
    "PriorityRule",
    "SlackProvider",
    "SmtpProvider",
    "parse_template",
    "render",
]


@hookimpl
def abi_workflow_types(register: Callable[[type[WorkflowType]], None]) -> None:
    register(Notification)


@hookimpl
def abi_integration_providers(register: Callable[[IntegrationProvider], None]) -> None:
    register(SmtpProvider())
    register(SlackProvider())
