"""Standard Webhooks signatures: secrets, keys and the ``webhook-*`` headers.

Every webhook or callback request carries ``webhook-id`` (the event id, the
same on every retry), ``webhook-timestamp`` (Unix seconds of the attempt) and,
when the target has a secret, ``webhook-signature``: ``v1,<base64
HMAC-SHA256 of "{id}.{timestamp}.{body}">``, several space-separated while a
rotated secret's predecessor still signs.

The HMAC key is what the Standard Webhooks reference library for Python
derives from the secret: the part after ``whsec_``, base64-decoded the way
that library decodes it (padding added, characters outside the alphabet
skipped), so any secret it accepts verifies with it. A secret it cannot
decode (or that decodes to nothing) is still accepted: its key is then the
UTF-8 bytes of the part after ``whsec_``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence

__all__ = [
    "SECRET_PREFIX",
    "generate_secret",
    "mask_secret",
    "secret_key",
    "sign",
    "signature_header",
]

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (see the module docstring)."""
    body = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(body + "==")
    except (binascii.Error, ValueError):
        key = b""
    return key or body.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int | str, body: str | bytes) -> str:
    """One signature: ``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">``."""
    payload = body if isinstance(body, bytes) else body.encode("utf-8")
    message = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(secret_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(
    secrets: Sequence[str], msg_id: str, timestamp: int | str, body: str | bytes
) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def generate_secret() -> str:
    """A new secret: ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode("ascii")


def mask_secret(secret: str) -> str:
    """How a stored secret is shown: ``whsec_****`` and its last four characters.

    Secrets shorter than 12 characters after the prefix show no characters at all.
    """
    tail = secret[len(SECRET_PREFIX) :]
    return SECRET_PREFIX + "****" + (tail[-4:] if len(tail) >= 12 else "")
