"""The integration providers the notification type sends through: ``smtp`` and ``slack``.

Connected like any integration (``engine.integrations.put("int_smtp", "smtp",
{...})`` or ``PUT /api/v1/integrations/int_smtp``). Secrets (the SMTP
``password``, the Slack webhook URL's path) are stored but never shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from email.headerregistry import Address
from typing import Any
from urllib.parse import urlsplit

import attrs

from abi_engine import IntegrationProvider
from abi_engine.converter import structure
from abi_engine.errors import InvalidRequest
from abi_engine.netguard import check_host, check_url

__all__ = ["MASK", "SlackConfig", "SlackProvider", "SmtpConfig", "SmtpProvider", "check_address"]

#: What a secret shows as in answers (the engine's own mask).
MASK = "********"


def check_address(value: str) -> str:
    """Return ``value`` if it is a plain email address (``user@example.com``), else raise ValueError."""
    if not isinstance(value, str) or any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError("expected an email address such as user@example.com")
    try:
        address = Address(addr_spec=value)
    except (ValueError, IndexError, TypeError):
        raise ValueError(f"{value!r} is not an email address") from None
    if not address.username or "." not in address.domain or address.addr_spec != value:
        raise ValueError(f"{value!r} is not an email address such as user@example.com")
    return value


def _bad(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid value for 'config.{field}': {message}",
        {"field": f"config.{field}", "errors": [{"field": f"config.{field}", "message": message}]},
    )


@attrs.define(kw_only=True)
class SmtpConfig:
    """An ``smtp`` connection: where and how mail is submitted."""

    host: str
    from_address: str
    port: int = 587
    username: str | None = None
    password: str | None = None
    starttls: bool = True
    ssl: bool = False
    from_name: str | None = None
    timeout_seconds: float = 10.0


class SmtpProvider(IntegrationProvider):
    """An SMTP server: ``host``, ``port``, ``username``/``password``, ``starttls`` or ``ssl``, ``from_address``."""

    name = "smtp"
    description = "SMTP server for email notifications (host, port, credentials, TLS, sender)"
    Config = SmtpConfig
    host_fields = ("host",)  # the engine refuses private hosts at put (check_outbound)

    def validate(self, config: Mapping[str, Any]) -> SmtpConfig:
        parsed: SmtpConfig = super().validate(config)
        check_host(parsed.host, field="config.host", allow_private=True)  # its form only
        if not 1 <= parsed.port <= 65535:
            raise _bad("port", "must be between 1 and 65535")
        if parsed.starttls and parsed.ssl:
            raise _bad("ssl", "give at most one of 'starttls' and 'ssl'")
        if (parsed.username is None) != (parsed.password is None):
            raise _bad("password", "'username' and 'password' go together")
        try:
            check_address(parsed.from_address)
        except ValueError as exc:
            raise _bad("from_address", str(exc)) from None
        if not 0 < parsed.timeout_seconds <= 120:
            raise _bad("timeout_seconds", "must be more than 0 and at most 120")
        return parsed

    def mask(self, config: Mapping[str, Any]) -> dict[str, Any]:
        shown = dict(config)
        if shown.get("password") is not None:
            shown["password"] = MASK
        return shown

    def client(self, config: Mapping[str, Any], *, allow_private_urls: bool = False) -> SmtpConfig:
        """The connection's settings, structured (the email channel connects with them,
        checking the address itself)."""
        return structure(dict(config), SmtpConfig)


@attrs.define(kw_only=True)
class SlackConfig:
    """A ``slack`` connection: an incoming webhook."""

    webhook_url: str
    username: str | None = None
    icon_emoji: str | None = None
    timeout_seconds: float = 10.0


class SlackProvider(IntegrationProvider):
    """A Slack incoming webhook (``webhook_url``); the URL is the secret."""

    name = "slack"
    description = "Slack incoming webhook for Slack notifications"
    Config = SlackConfig
    url_fields = ("webhook_url",)  # the engine refuses private URLs at put (check_outbound)

    def validate(self, config: Mapping[str, Any]) -> SlackConfig:
        parsed: SlackConfig = super().validate(config)
        check_url(parsed.webhook_url, field="config.webhook_url", allow_private=True)  # its form
        if not 0 < parsed.timeout_seconds <= 60:
            raise _bad("timeout_seconds", "must be more than 0 and at most 60")
        return parsed

    def mask(self, config: Mapping[str, Any]) -> dict[str, Any]:
        shown = dict(config)
        url = shown.get("webhook_url")
        if isinstance(url, str):
            try:
                parts = urlsplit(url)
                shown["webhook_url"] = f"{parts.scheme}://{parts.hostname}/{MASK}"
            except ValueError:
                shown["webhook_url"] = MASK
        return shown

    def client(self, config: Mapping[str, Any], *, allow_private_urls: bool = False) -> SlackConfig:
        """The connection's settings, structured (the slack channel posts with them)."""
        return structure(dict(config), SlackConfig)
