"""The audit log: who changed what, when, and how (``engine.audit``).

Every change made through the operations of :mod:`abi_engine.api` (the REST
API and the Python API) or the command line is recorded once it is committed,
by one call, :meth:`AuditLog.record`: the actor (the token's user id,
``"cli"`` or ``"system"``), the action (``workflow.update``...), the target,
and the fields that changed, before and after, with secrets redacted
(:func:`redact`). Entries are chained: each one's ``hash`` is SHA-256 over
its canonical JSON and the previous entry's hash, so changing, inserting or
removing an entry in the middle breaks the chain, and :meth:`AuditLog.verify`
names the first entry that does not follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

from abi_engine.errors import InvalidRequest
from abi_engine.ids import parse_time, utcnow
from abi_engine.models import Page
from abi_engine.models_audit import AuditDraft, AuditEntry, AuditQuery, chain_hash, entry_content
from abi_engine.services import Service, check_page
from abi_engine.storage._codec import to_ms
from abi_engine.storage.base import Store

__all__ = ["REDACTED", "AuditLog", "ChainCheck", "diff", "redact"]

#: What a secret is replaced with.
REDACTED = "[redacted]"

#: Parts of a key whose value is a secret (compared lowercased).
_SECRET_KEYS = (
    "secret",
    "token",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "authorization",
    "credential",
    "private_key",
)
#: Prefixes of values that are secrets wherever they are (webhook secrets, tokens).
_SECRET_PREFIXES = ("whsec_", "abi_")


def _secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in _SECRET_KEYS)


def redact(value: Any) -> Any:
    """``value`` (JSON) with every secret replaced by :data:`REDACTED`: values under keys
    naming secrets (``secret``, ``callback_secret``, ``token``, ``password``,
    ``api_key``, ``authorization``, ``credentials``...), and strings that look like
    webhook secrets (``whsec_...``) or access tokens (``abi_...``)."""
    if isinstance(value, Mapping):
        return {
            str(k): (REDACTED if _secret_key(str(k)) and v is not None else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str) and value.startswith(_SECRET_PREFIXES):
        return REDACTED
    return value


def diff(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The top-level fields that differ between ``before`` and ``after``, each side
    redacted; a side that is ``None`` (nothing before a creation, after a deletion)
    stays ``None`` and the other is given whole."""
    b = None if before is None else redact(dict(before))
    a = None if after is None else redact(dict(after))
    if b is None or a is None:
        return b, a
    keys = [k for k in dict.fromkeys([*b, *a]) if b.get(k) != a.get(k)]
    return {k: b[k] for k in keys if k in b}, {k: a[k] for k in keys if k in a}


@attrs.frozen(kw_only=True)
class ChainCheck:
    """What :meth:`AuditLog.verify` found: ``ok``, how many entries it ``checked``, and
    when not ok, the id of the first entry that breaks the chain and why."""

    ok: bool
    checked: int
    first_id: int | None = None
    last_id: int | None = None
    broken_id: int | None = None
    reason: str | None = None


class AuditLog(Service):
    """Records changes and reads them back (see the module's docstring).

    :param retention_days: entries older than this many days go when
        :meth:`prune` runs (``None``: keep them all).
    :param clock: the current time (UTC), for tests.
    """

    def __init__(
        self,
        store: Store,
        *,
        retention_days: int | None = 365,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__(store)
        self.retention_days = retention_days
        self.clock = clock

    async def record(
        self,
        actor: str,
        action: str,
        target_type: str,
        target_id: str | None,
        *,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry: ``actor`` did ``action`` to ``target_type`` ``target_id``;
        ``before``/``after`` are the target's JSON before and after (only the fields that
        differ are kept, secrets redacted)."""
        changed_before, changed_after = diff(before, after)
        draft = AuditDraft(
            at=self.clock(),
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            before=changed_before,
            after=changed_after,
        )
        return await self._store.append_audit(draft)

    async def list(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page: Any = 1,
        page_size: Any = 10,
    ) -> Page[AuditEntry]:
        """One page of entries, newest first, filtered by any of the arguments
        (``since`` inclusive, ``until`` exclusive; RFC 3339 strings or datetimes)."""
        page, page_size = check_page(page, page_size)
        query = AuditQuery(
            actor=_text(actor, "actor"),
            action=_text(action, "action"),
            target_type=_text(target_type, "target_type"),
            target_id=_text(target_id, "target_id"),
            since=_time(since, "since"),
            until=_time(until, "until"),
            page=page,
            page_size=page_size,
        )
        items, total = await self._store.list_audit(query)
        return Page.build(items, page, page_size, total)

    async def verify(self, batch: int = 1000) -> ChainCheck:
        """Walk the whole log, oldest first, recomputing each hash and checking each entry
        chains to the one before (the oldest kept entry is trusted for its ``prev_hash``:
        older ones may have been pruned); the head must name the last entry."""
        after, prev, checked, first = 0, None, 0, None
        while True:
            entries = await self._store.audit_entries(after, batch)
            for entry in entries:
                problem = _check(entry, prev)
                if problem is not None:
                    return ChainCheck(
                        ok=False,
                        checked=checked,
                        first_id=first,
                        broken_id=entry.id,
                        reason=problem,
                    )
                first = entry.id if first is None else first
                prev, checked = entry, checked + 1
            if len(entries) < batch:
                break
            after = entries[-1].id
        return await self._check_head(prev, checked, first)

    async def _check_head(
        self, last: AuditEntry | None, checked: int, first: int | None
    ) -> ChainCheck:
        head_id, head_hash = await self._store.audit_head()
        last_id = None if last is None else last.id
        if last is not None and (head_id, head_hash) != (last.id, last.hash):
            return ChainCheck(
                ok=False,
                checked=checked,
                first_id=first,
                last_id=last_id,
                broken_id=head_id,
                reason=f"the head names entry {head_id}, but the last entry is {last.id}"
                " or its hash differs (entries after it were removed or changed)",
            )
        return ChainCheck(ok=True, checked=checked, first_id=first, last_id=last_id)

    async def prune(self, now: datetime | None = None, batch: int = 500) -> int:
        """Delete entries older than :attr:`retention_days`, ``batch`` per transaction;
        how many went."""
        if self.retention_days is None:
            return 0
        before = (now or self.clock()) - timedelta(days=self.retention_days)
        total = 0
        while True:
            gone = await self._store.prune_audit(before, batch)
            total += gone
            if gone < batch:
                return total


def _check(entry: AuditEntry, prev: AuditEntry | None) -> str | None:
    """Why ``entry`` does not follow ``prev`` (``None``: the oldest kept), or ``None``."""
    if prev is not None:
        if entry.id != prev.id + 1:
            return f"entry {entry.id} follows entry {prev.id}: entries between are missing"
        if entry.prev_hash != prev.hash:
            return f"its prev_hash is not the hash of entry {prev.id}"
    expected = chain_hash(entry.prev_hash, entry_content(entry.id, _ms(entry.at), entry))
    if expected != entry.hash:
        return "its hash does not match its content (the entry was changed)"
    return None


def _ms(value: datetime) -> int:
    ms = to_ms(value)
    assert ms is not None
    return ms


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidRequest(f"'{field}' must be a string of 1 to 200 characters", {"field": field})
    return value


def _time(value: Any, field: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return parse_time(value)
    except (ValueError, TypeError):
        raise InvalidRequest(f"'{field}' must be an RFC 3339 time", {"field": field}) from None
