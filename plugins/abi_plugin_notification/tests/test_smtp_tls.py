"""Implicit TLS (``ssl: true``) checks the SMTP server's certificate before it logs in."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from abi_plugin_notification.channels import send_email
from abi_plugin_notification.providers import SmtpConfig

from .conftest import SMTP_PASSWORD, SMTP_USER, Mailbox, _free_port


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key: (cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.anyio
async def test_ssl_refuses_a_certificate_nobody_vouches_for(
    certificate: tuple[Path, Path],
) -> None:
    """ssl: true against a self-signed certificate fails the send; no login, no message."""
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
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
