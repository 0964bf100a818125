"""The audit log's entries, as the REST API shows them (``GET /api/v1/audit``).

Like :mod:`abi_engine.models`, an attrs class turned into JSON by the one
converter; every field is present, ``null`` when empty.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

import attrs

__all__ = [
    "AuditDraft",
    "AuditEntry",
    "AuditQuery",
    "canonical_json",
    "chain_hash",
    "entry_content",
]


@attrs.define(kw_only=True)
class AuditEntry:
    """One change, as recorded.

    Fields: ``id`` (increasing), ``at`` (when), ``actor`` (the user id of the
    token used, ``"cli"`` or ``"system"``), ``action`` (e.g.
    ``workflow.update``), ``target_type`` and ``target_id`` (what changed),
    ``before`` and ``after`` (the fields that changed, secrets redacted;
    ``null`` where there was nothing before or is nothing after),
    ``prev_hash`` and ``hash`` (the chain: SHA-256 of this entry's canonical
    JSON and the previous entry's hash).
    """

    id: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    prev_hash: str
    hash: str


@attrs.frozen(kw_only=True)
class AuditDraft:
    """An entry to append: the store gives it its ``id``, ``prev_hash`` and ``hash``."""

    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str | None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class AuditQuery:
    """Filters of a page of the audit log (newest first); ``None``: any."""

    actor: str | None = None
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    page: int = 1
    page_size: int = 10


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON: keys sorted, no spaces, UTF-8 characters as they are."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, content: dict[str, Any]) -> str:
    """The hash of an entry: SHA-256 (hex) of the previous entry's hash, a newline, and
    the canonical JSON of the entry's ``content`` (:func:`entry_content`)."""
    return hashlib.sha256(f"{prev_hash}\n{canonical_json(content)}".encode()).hexdigest()


def entry_content(entry_id: int, at_ms: int, draft: AuditDraft | AuditEntry) -> dict[str, Any]:
    """What an entry's hash covers: every field but the hashes, ``at`` in epoch ms."""
    return {
        "id": entry_id,
        "at": at_ms,
        "actor": draft.actor,
        "action": draft.action,
        "target_type": draft.target_type,
        "target_id": draft.target_id,
        "before": draft.before,
        "after": draft.after,
    }
