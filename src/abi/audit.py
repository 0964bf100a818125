"""The audit log through the seed's Python API: ``AuditLogReader``, in-process or remote.

>>> from abi.audit import AuditLogReader
>>> reader = AuditLogReader(access_token="...")          # doctest: +SKIP
>>> reader.list_entries(action="workflow.update").items  # doctest: +SKIP

It finds the engine as :mod:`abi.workflows` does (``engine=``, ``base_url=``,
``ABI_ENGINE_URL``, ``ABI_ENGINE_DB``) and needs a token with ``audit:read``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from abi._client import _Client, _drop_none, _structure
from abi_engine.ids import format_time
from abi_engine.models import Page
from abi_engine.models_audit import AuditEntry

__all__ = ["AuditEntry", "AuditLogReader"]


def _time(value: datetime | str | None) -> str | None:
    return format_time(value) if isinstance(value, datetime) else value


class AuditLogReader(_Client):
    """Reads the audit log: who changed what, when, and how.

    :param access_token: the bearer token to act with (scope ``audit:read``).
    :param engine: an in-process :class:`abi_engine.Engine` to use.
    :param base_url: the root URL of a remote REST API (``/api/v1`` lives under it).
    :param timeout: seconds a remote call may take.
    """

    def list_entries(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page: int = 1,
        page_size: int = 10,
    ) -> Page[AuditEntry]:
        """One page of entries, newest first, filtered by any of the arguments (``since``
        inclusive, ``until`` exclusive).

        :raises InvalidRequest: a bad filter or page (naming it).
        :raises Forbidden: the token lacks ``audit:read``.
        """
        query: dict[str, Any] = _drop_none(
            {
                "actor": actor,
                "action": action,
                "target_type": target_type,
                "target_id": target_id,
                "since": _time(since),
                "until": _time(until),
                "page": page,
                "page_size": page_size,
            }
        )
        data = self._transport.request("list_audit", query=query)
        return _structure(data, Page[AuditEntry])
