"""Implicit TLS (``ssl: true``) checks the SMTP server's certificate before it logs in."""

from __future__ import annotations

import ssl

import pytest
import trustme
from aiosmtpd.controller import Controller

from abi_plugin_notification.channels import send_email
from abi_plugin_notification.providers import SmtpConfig

from .conftest import SMTP_PASSWORD, SMTP_USER, Mailbox, _free_port


@pytest.fixture
def server_context() -> ssl.SSLContext:
    """A TLS server context for 127.0.0.1 with a certificate from a throwaway CA (trustme)
    that no system trusts."""
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.mark.anyio
async def test_ssl_refuses_a_certificate_nobody_vouches_for(
    server_context: ssl.SSLContext,
) -> None:
    """ssl: true against a certificate no trusted CA signed fails the send; no login, no message."""
    context = server_context
    mailbox, port = Mailbox(), _free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        ssl_context=context,
        authenticator=mailbox.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        settings = SmtpConfig(
            host="127.0.0.1",
            port=port,
            starttls=False,
            ssl=True,
            username=SMTP_USER,
            password=SMTP_PASSWORD,
            from_address="alerts@example.com",
        )
        message = {
            "subject": "s",
            "body": "b",
            "priority": "normal",
            "execution_id": "exec_1",
            "workflow_id": "wf_1",
        }
        outcomes = await send_email(settings, message, ["ada@example.com"], True)
    finally:
        controller.stop()
    assert [o["status"] for o in outcomes] == ["failed"]
    assert "CERTIFICATE_VERIFY_FAILED" in outcomes[0]["error"]
    assert mailbox.logins == []
    assert mailbox.messages == []


def test_smtp_connects_to_the_checked_address_not_a_new_lookup(
    smtp: tuple[Mailbox, int],
) -> None:
    """The connection goes to the address resolved and checked, never to a second DNS answer."""
    from abi_plugin_notification.channels import _PinnedSMTP

    mailbox, port = smtp
    # A name that resolves nowhere: had smtplib looked it up again, connecting would fail.
    with _PinnedSMTP("127.0.0.1", host="mail.example.invalid", port=port, timeout=5) as client:
        client.sendmail("from@example.com", ["to@example.com"], "Subject: hi\r\n\r\nbody")
    assert [(sender, rcpts) for sender, rcpts, _ in mailbox.messages] == [
        ("from@example.com", ["to@example.com"])
    ]
