"""Checking the signature of an inbound trigger request (``POST /triggers/{id}/invoke``).

Three schemes, each what a well-known sender does:

- ``standard_webhooks`` (the default): the Standard Webhooks headers
  ``webhook-id``, ``webhook-timestamp`` (Unix seconds, within
  :data:`TOLERANCE_SECONDS` of now) and ``webhook-signature`` (space-separated
  ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one of which must
  match), keyed as webhook deliveries are (:func:`~abi_engine.webhook_signing.secret_key`).
  The delivery id is ``webhook-id``.
- ``hmac_sha256`` (GitHub's way): header ``header`` (default
  ``X-Hub-Signature-256``) holds ``prefix`` (default ``sha256=``) and the hex
  HMAC-SHA256 of the raw body, keyed by the secret's UTF-8 bytes. No
  timestamp: the delivery id (header ``id_header``, e.g. ``X-GitHub-Delivery``)
  is what stops a replay.
- ``stripe`` (Stripe's way): header ``header`` (default ``Stripe-Signature``)
  holds ``t=<Unix seconds>,v1=<hex HMAC-SHA256 of "{t}.{body}">`` (several
  ``v1`` allowed, one must match), keyed by the secret's UTF-8 bytes, ``t``
  within the tolerance. The delivery id comes from ``id_header`` when set.

Every comparison is constant-time. :func:`verify` raises
:class:`~abi_engine.errors.Unauthorized` on any failure, saying which part
failed but never what was expected.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

import attrs

from abi_engine.errors import Unauthorized
from abi_engine.webhook_signing import secret_key

__all__ = [
    "DEFAULT_HEADERS",
    "SCHEMES",
    "TOLERANCE_SECONDS",
    "SignatureRule",
    "sign_hmac_sha256",
    "sign_stripe",
    "verify",
]

#: The signature schemes a trigger may use.
SCHEMES = ("standard_webhooks", "hmac_sha256", "stripe")
#: How far (seconds) a signed timestamp may be from now, either way.
TOLERANCE_SECONDS = 300
#: The signature header of each scheme when the trigger names none.
DEFAULT_HEADERS = {
    "standard_webhooks": "webhook-signature",
    "hmac_sha256": "x-hub-signature-256",
    "stripe": "stripe-signature",
}


@attrs.frozen(kw_only=True)
class SignatureRule:
    """How a trigger's requests are signed (see the module docstring)."""

    scheme: str = "standard_webhooks"
    header: str | None = None
    prefix: str | None = None
    id_header: str | None = None


def _hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_hmac_sha256(secret: str, body: bytes, prefix: str = "sha256=") -> str:
    """The ``hmac_sha256`` header value of ``body`` (as GitHub sends it)."""
    return prefix + _hex_hmac(secret, body)


def sign_stripe(secret: str, timestamp: int, body: bytes) -> str:
    """The ``stripe`` header value of ``body`` signed at ``timestamp``."""
    return f"t={timestamp},v1={_hex_hmac(secret, f'{timestamp}.'.encode() + body)}"


def _fail(message: str) -> Unauthorized:
    return Unauthorized(f"Invalid trigger signature: {message}")


def _timestamp(text: str | None, now: float) -> int:
    if text is None or not text.strip().isascii() or not text.strip().isdigit():
        raise _fail("missing or malformed timestamp")
    value = int(text.strip())
    if abs(now - value) > TOLERANCE_SECONDS:
        raise _fail(f"timestamp more than {TOLERANCE_SECONDS} seconds from now")
    return value


def _standard(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> str:
    msg_id = headers.get("webhook-id")
    if not msg_id:
        raise _fail("missing webhook-id")
    stamp = _timestamp(headers.get("webhook-timestamp"), now)
    given = headers.get("webhook-signature", "")
    message = f"{msg_id}.{stamp}.".encode() + body
    expected = base64.b64encode(hmac.new(secret_key(secret), message, hashlib.sha256).digest())
    for part in given.split():
        version, _, signature = part.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode("latin-1"), expected):
            return msg_id
    raise _fail("no matching v1 signature")


def _github(rule: SignatureRule, secret: str, headers: Mapping[str, str], body: bytes) -> None:
    header = (rule.header or DEFAULT_HEADERS["hmac_sha256"]).lower()
    expected = sign_hmac_sha256(secret, body, "sha256=" if rule.prefix is None else rule.prefix)
    given = headers.get(header, "")
    if not hmac.compare_digest(given.encode("latin-1"), expected.encode("latin-1")):
        raise _fail(f"{header} does not match")


def _stripe(
    rule: SignatureRule, secret: str, headers: Mapping[str, str], body: bytes, now: float
) -> None:
    header = (rule.header or DEFAULT_HEADERS["stripe"]).lower()
    parts = [p.partition("=") for p in headers.get(header, "").split(",")]
    stamps = [v for k, _, v in parts if k.strip() == "t"]
    stamp = _timestamp(stamps[0] if len(stamps) == 1 else None, now)
    expected = _hex_hmac(secret, f"{stamp}.".encode() + body).encode()
    for key, _, value in parts:
        if key.strip() == "v1" and hmac.compare_digest(value.strip().encode("latin-1"), expected):
            return
    raise _fail("no matching v1 signature")


def verify(
    rule: SignatureRule, secret: str, headers: Mapping[str, str], body: bytes, now: float
) -> str | None:
    """Check a request's signature (``headers`` with lower-case names, the raw ``body``,
    ``now`` in Unix seconds); return its delivery id (``None`` if it has none).

    :raises Unauthorized: the signature is missing, malformed, wrong or out of time.
    """
    if rule.scheme == "standard_webhooks":
        return _standard(secret, headers, body, now)
    if rule.scheme == "hmac_sha256":
        _github(rule, secret, headers, body)
    elif rule.scheme == "stripe":
        _stripe(rule, secret, headers, body, now)
    else:
        raise _fail(f"unknown scheme {rule.scheme!r}")
    return headers.get(rule.id_header.lower()) if rule.id_header else None
