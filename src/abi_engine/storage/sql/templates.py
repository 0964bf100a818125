"""Notification templates in storage (mixed into :class:`~abi_engine.storage.sql.store.SQLStore`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from abi_engine.models import NotificationTemplate
from abi_engine.storage._codec import from_ms, to_ms
from abi_engine.storage.sql.dialect import Dialect

__all__ = ["TemplatesMixin"]

_COLUMNS = "id, subject, body, description, created_at, updated_at"


def _template(row: Sequence[Any]) -> NotificationTemplate:
    return NotificationTemplate(
        id=row[0],
        subject=row[1],
        body=row[2],
        description=row[3],
        created_at=from_ms(row[4]),  # type: ignore[arg-type]
        updated_at=from_ms(row[5]),  # type: ignore[arg-type]
    )


class TemplatesMixin:
    """Template storage, in the shared SQL."""

    dialect: ClassVar[Dialect]
    _read: Callable[[], Any]
    write: Callable[[Callable[[Any], Any]], Any]
    _upsert_created: Callable[[Any, str, str, Sequence[Any]], bool]

    def put_template(self, template: NotificationTemplate) -> bool:
        sql = self.dialect.upsert(
            "notification_templates",
            _COLUMNS.split(", "),
            key=("id",),
            update=("subject", "body", "description", "updated_at"),
        )
        args = (
            template.id,
            template.subject,
            template.body,
            template.description,
            to_ms(template.created_at),
            to_ms(template.updated_at),
        )
        return bool(
            self.write(lambda conn: self._upsert_created(conn, "notification_templates", sql, args))
        )

    def get_template(self, template_id: str) -> NotificationTemplate | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM notification_templates WHERE id = ?",
                (template_id,),
            ).fetchone()
        return None if row is None else _template(row)

    def list_templates(self, page: int, page_size: int) -> tuple[list[NotificationTemplate], int]:
        with self._read() as conn:
            total = conn.execute("SELECT count(*) FROM notification_templates").fetchone()
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM notification_templates ORDER BY id LIMIT ? OFFSET ?",
                (page_size, (page - 1) * page_size),
            ).fetchall()
        return [_template(row) for row in rows], int(total[0] if total else 0)

    def delete_template(self, template_id: str) -> bool:
        return bool(
            self.write(
                lambda conn: (
                    conn.execute(
                        "DELETE FROM notification_templates WHERE id = ?", (template_id,)
                    ).rowcount
                    > 0
                )
            )
        )

    def find_templates(self, ids: Iterable[str]) -> dict[str, NotificationTemplate]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        condition, args = self.dialect.any_of("id", wanted)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM notification_templates WHERE {condition}", args
            ).fetchall()
        return {row[0]: _template(row) for row in rows}
