"""Signed inbound triggers, as the REST API shows them (``/api/v1/triggers``).

Like :mod:`abi_engine.models`, every class is an attrs class turned into JSON
by the one converter; every field is present, ``null`` when empty.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import attrs

from abi_engine.limits import DESCRIPTION, Choice, Json, Text
from abi_engine.trigger_signing import SCHEMES

__all__ = ["Trigger", "TriggerRequest", "TriggerSignature"]

#: Field limits of the request bodies (see :mod:`abi_engine.limits`).
SCHEME = Choice(SCHEMES)
HEADER_NAME = Text(
    min_length=1,
    max_length=100,
    pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
    hint="must be an HTTP header name",
)
PREFIX = Text(max_length=50, pattern=r"^[!-~]*$", hint="must be visible ASCII (no spaces)")
#: A secret: 8 to 512 visible ASCII characters (``whsec_...`` for ``standard_webhooks``).
TRIGGER_SECRET = Text(
    min_length=8,
    max_length=518,
    pattern=r"^[!-~]{8,518}$",
    hint="must be 8 to 518 visible ASCII characters (no spaces)",
)
#: ``{"parameter": "expression"}``: at most 64, 16 KiB in all.
MAPPING = Json(max_bytes=16_384, max_keys=64)


@attrs.define(kw_only=True)
class TriggerSignature:
    """How requests to a trigger are signed.

    ``scheme``: ``standard_webhooks`` (default; headers ``webhook-id``,
    ``webhook-timestamp``, ``webhook-signature``), ``hmac_sha256`` (hex
    HMAC-SHA256 of the body after ``prefix``, default ``sha256=``, in
    ``header``, default ``X-Hub-Signature-256``: GitHub's way) or ``stripe``
    (``t=<timestamp>,v1=<hex HMAC-SHA256 of "{t}.{body}">`` in ``header``,
    default ``Stripe-Signature``). ``id_header`` names the header carrying the
    delivery id of the last two (``standard_webhooks`` always uses ``webhook-id``):
    a request repeating an id answers the execution the first one started.
    """

    scheme: Annotated[str, SCHEME] = "standard_webhooks"
    header: Annotated[str, HEADER_NAME] | None = None
    prefix: Annotated[str, PREFIX] | None = None
    id_header: Annotated[str, HEADER_NAME] | None = None


@attrs.define(kw_only=True)
class TriggerRequest:
    """The body of ``PUT /api/v1/triggers/{id}``.

    ``secret``: without one, a new trigger gets a generated ``whsec_`` secret,
    returned whole in this answer only (an existing trigger keeps its secret).
    ``parameters`` maps each execution parameter to a safe expression over
    ``body`` (the request's JSON) and ``headers`` (lower-case names), e.g.
    ``{"customer_id": "body.customer.id"}``; without a mapping the body
    itself is the parameters.
    """

    workflow_id: Annotated[str, Text(min_length=1, max_length=100)]
    secret: Annotated[str, TRIGGER_SECRET] | None = None
    signature: TriggerSignature = attrs.Factory(TriggerSignature)
    parameters: Annotated[dict[str, str], MAPPING] | None = None
    description: Annotated[str, DESCRIPTION] | None = None


@attrs.define(kw_only=True)
class Trigger:
    """A signed inbound trigger: ``POST /api/v1/triggers/{id}/invoke`` starts an
    execution of ``workflow_id`` when its signature verifies.

    ``secret`` is whole only in the answer that generated it, else masked
    (``whsec_****abcd``).
    """

    id: str
    workflow_id: str
    secret: str
    signature: TriggerSignature
    parameters: dict[str, str] | None = None
    description: str | None = None
    created_by: str | None = None
    created_at: datetime
    updated_at: datetime
