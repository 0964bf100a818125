"""Sending one rendered message on a channel: email (SMTP), slack (incoming webhook), webhook.

Each sender takes the rendered message and the recipients still to serve and
returns one outcome per recipient: ``{"recipient", "status": "sent"|"failed",
"error"?, "message_id"?}``. Errors never carry a password or a webhook URL.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Sequence
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread

from abi_engine.netguard import check_host, check_url, guarded_client, resolve_checked
from abi_plugin_notification.providers import MASK, SlackConfig, SmtpConfig

__all__ = [
    "DEFAULT_SUBJECT",
    "PRIORITY_HEADERS",
    "Message",
    "send_email",
    "send_slack",
    "send_webhook",
]

#: The headers an email carries for each priority.
PRIORITY_HEADERS: dict[str, dict[str, str]] = {
    "urgent": {"X-Priority": "1 (Highest)", "Importance": "high", "Priority": "urgent"},
    "high": {"X-Priority": "2 (High)", "Importance": "high", "Priority": "urgent"},
    "normal": {"X-Priority": "3 (Normal)", "Importance": "normal", "Priority": "normal"},
    "low": {"X-Priority": "5 (Lowest)", "Importance": "low", "Priority": "non-urgent"},
}
_MAX_ERROR_CHARS = 300
#: An email's subject when its template has none.
DEFAULT_SUBJECT = "Notification"

Message = dict[str, Any]  # {"subject", "body", "priority", "execution_id", "workflow_id"}


def _scrub(text: str, secrets: Sequence[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text[:_MAX_ERROR_CHARS]


def _error(exc: BaseException, secrets: Sequence[str | None] = ()) -> str:
    return _scrub(f"{type(exc).__name__}: {exc}", secrets)


def _failed(recipients: Sequence[str], error: str) -> list[dict[str, Any]]:
    return [{"recipient": r, "status": "failed", "error": error} for r in recipients]


def _email(settings: SmtpConfig, message: Message, recipient: str) -> EmailMessage:
    mail = EmailMessage()
    sender = Address(display_name=settings.from_name or "", addr_spec=settings.from_address)
    mail["From"] = sender
    mail["To"] = recipient
    mail["Subject"] = message["subject"] or DEFAULT_SUBJECT
    mail["Date"] = formatdate(usegmt=True)
    mail["Message-ID"] = make_msgid(domain=settings.from_address.rsplit("@", 1)[-1])
    for name, value in PRIORITY_HEADERS[message["priority"]].items():
        mail[name] = value
    mail["X-ABI-Priority"] = message["priority"]
    mail["X-ABI-Execution-Id"] = message["execution_id"]
    mail.set_content(message["body"])
    return mail


class _PinnedSMTP(smtplib.SMTP):
    """SMTP connecting to an address checked beforehand (the host name kept for TLS)."""

    def __init__(self, address: str, **options: Any) -> None:
        self._address = address
        super().__init__(**options)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self._address, port), timeout, self.source_address)


class _PinnedSMTPS(smtplib.SMTP_SSL):
    """SMTP over TLS connecting to an address checked beforehand, verifying ``host``."""

    def __init__(self, address: str, **options: Any) -> None:
        self._address = address
        super().__init__(**options)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        plain = socket.create_connection((self._address, port), timeout, self.source_address)
        return self.context.wrap_socket(plain, server_hostname=host)


def _smtp_send(
    settings: SmtpConfig, message: Message, recipients: Sequence[str], allow_private: bool
) -> list[dict[str, Any]]:
    """Blocking: one connection, one message per recipient (run in a worker thread)."""
    secrets = [settings.password]
    try:
        # Checked again (the engine's setting may have changed since the put), then
        # connected to the address that was checked: a DNS answer that changes
        # afterwards cannot point the connection at a private address.
        check_host(settings.host, field="config.host", allow_private=allow_private)
        address = resolve_checked(settings.host, settings.port, allow_private=allow_private)[0]
        timeout = settings.timeout_seconds
        smtp: smtplib.SMTP
        if settings.ssl:
            # smtplib's own default context verifies nothing: give it one that does.
            context = ssl.create_default_context()
            smtp = _PinnedSMTPS(
                address, host=settings.host, port=settings.port, timeout=timeout, context=context
            )
        else:
            smtp = _PinnedSMTP(address, host=settings.host, port=settings.port, timeout=timeout)
        with smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.username is not None:
                smtp.login(settings.username, settings.password or "")
            outcomes = []
            for recipient in recipients:
                mail = _email(settings, message, recipient)
                try:
                    smtp.send_message(mail, settings.from_address, [recipient])
                except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError) as exc:
                    outcomes.append(_failed([recipient], _error(exc, secrets))[0])
                    continue
                sent = {"recipient": recipient, "status": "sent", "message_id": mail["Message-ID"]}
                outcomes.append(sent)
            return outcomes
    except Exception as exc:
        where = f"SMTP {settings.host}:{settings.port}: "
        return _failed(recipients, where + _error(exc, secrets))


async def send_email(
    settings: SmtpConfig, message: Message, recipients: Sequence[str], allow_private: bool
) -> list[dict[str, Any]]:
    """Send ``message`` to each recipient through the SMTP server of ``settings``."""
    return await anyio.to_thread.run_sync(
        _smtp_send, settings, message, list(recipients), allow_private
    )


async def _post(url: str, body: dict[str, Any], timeout: float, allow_private: bool) -> None:
    """POST JSON, refusing private addresses unless allowed; raise on any answer >= 400."""
    check_url(url, field="url", allow_private=allow_private)
    # The transport checks the address (resolving in a thread) and connects to it.
    async with guarded_client(allow_private=allow_private, timeout=timeout) as client:
        response = await client.post(url, json=body)
    if response.status_code >= 400:
        raise RuntimeError(f"answered {response.status_code}: {response.text[:200]}")


def slack_text(message: Message) -> str:
    """The Slack text: a bold subject line when there is one, urgent ones flagged."""
    flag = {"urgent": "[URGENT] ", "high": "[HIGH] "}.get(message["priority"], "")
    subject = message.get("subject")
    head = f"{flag}*{subject}*\n" if subject else flag
    return f"{head}{message['body']}"


async def send_slack(
    settings: SlackConfig, message: Message, recipients: Sequence[str], allow_private: bool
) -> list[dict[str, Any]]:
    """Post ``message`` to the incoming webhook once per channel or user (``#ops``, ``@ada``)."""
    outcomes = []
    secrets = [settings.webhook_url, urlsplit(settings.webhook_url).path]
    for recipient in recipients:
        body: dict[str, Any] = {"text": slack_text(message), "channel": recipient}
        if settings.username:
            body["username"] = settings.username
        if settings.icon_emoji:
            body["icon_emoji"] = settings.icon_emoji
        try:
            await _post(settings.webhook_url, body, settings.timeout_seconds, allow_private)
        except Exception as exc:
            outcomes.append(_failed([recipient], "Slack: " + _error(exc, secrets))[0])
            continue
        outcomes.append({"recipient": recipient, "status": "sent"})
    return outcomes


async def send_webhook(
    message: Message, recipients: Sequence[str], timeout: float, allow_private: bool
) -> list[dict[str, Any]]:
    """POST the message as JSON to each recipient URL."""
    outcomes = []
    body = {"type": "notification", **message}
    for url in recipients:
        try:
            await _post(url, body, timeout, allow_private)
        except Exception as exc:
            outcomes.append(_failed([url], _error(exc))[0])
            continue
        outcomes.append({"recipient": url, "status": "sent"})
    return outcomes
