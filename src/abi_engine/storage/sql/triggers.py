"""Signed inbound triggers in storage (mixed into :class:`~abi_engine.storage.sql.store.SQLStore`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from abi_engine.converter import structure, unstructure
from abi_engine.models_triggers import Trigger, TriggerSignature
from abi_engine.storage._codec import dumps, from_ms, loads, to_ms
from abi_engine.storage.sql.dialect import Dialect

__all__ = ["TriggersMixin"]

_COLUMNS = "id, workflow_id, secret, config, created_by, created_at, updated_at"


def _trigger(row: Sequence[Any]) -> Trigger:
    config = loads(row[3]) or {}
    return Trigger(
        id=row[0],
        workflow_id=row[1],
        secret=row[2],
        signature=structure(config.get("signature") or {}, TriggerSignature),
        parameters=config.get("parameters"),
        description=config.get("description"),
        created_by=row[4],
        created_at=from_ms(row[5]),  # type: ignore[arg-type]
        updated_at=from_ms(row[6]),  # type: ignore[arg-type]
    )


class TriggersMixin:
    """Trigger storage, in the shared SQL."""

    dialect: ClassVar[Dialect]
    _read: Callable[[], Any]
    write: Callable[[Callable[[Any], Any]], Any]
    _upsert_created: Callable[[Any, str, str, Sequence[Any]], bool]

    def put_trigger(self, trigger: Trigger) -> bool:
        sql = self.dialect.upsert(
            "triggers",
            _COLUMNS.split(", "),
            key=("id",),
            update=("workflow_id", "secret", "config", "updated_at"),
        )
        config = {
            "signature": unstructure(trigger.signature),
            "parameters": trigger.parameters,
            "description": trigger.description,
        }
        args = (
            trigger.id,
            trigger.workflow_id,
            trigger.secret,
            dumps(config),
            trigger.created_by,
            to_ms(trigger.created_at),
            to_ms(trigger.updated_at),
        )
        return bool(self.write(lambda conn: self._upsert_created(conn, "triggers", sql, args)))

    def get_trigger(self, trigger_id: str) -> Trigger | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM triggers WHERE id = ?", (trigger_id,)
            ).fetchone()
        return None if row is None else _trigger(row)

    def list_triggers(self, page: int, page_size: int) -> tuple[list[Trigger], int]:
        with self._read() as conn:
            total = conn.execute("SELECT count(*) FROM triggers").fetchone()
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM triggers ORDER BY id LIMIT ? OFFSET ?",
                (page_size, (page - 1) * page_size),
            ).fetchall()
        return [_trigger(row) for row in rows], int(total[0] if total else 0)

    def delete_trigger(self, trigger_id: str) -> bool:
        return bool(
            self.write(
                lambda conn: (
                    conn.execute("DELETE FROM triggers WHERE id = ?", (trigger_id,)).rowcount > 0
                )
            )
        )
