"""Notification templates in storage: the same SQL on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from abi_engine.models import NotificationTemplate
from abi_engine.storage._codec import from_ms, to_ms

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
    """Template storage for both stores; ``_MARK`` is the backend's placeholder."""

    _MARK: str
    _read: Callable[[], Any]
    write: Callable[[Callable[[Any], Any]], Any]

    def put_template(self, template: NotificationTemplate) -> bool:
        m = self._MARK

        def run(conn: Any) -> bool:
            existed = conn.execute(
                f"SELECT 1 FROM notification_templates WHERE id = {m}", (template.id,)
            ).fetchone()
            conn.execute(
                f"INSERT INTO notification_templates ({_COLUMNS})"
                f" VALUES ({m}, {m}, {m}, {m}, {m}, {m}) ON CONFLICT (id) DO UPDATE SET"
                " subject = excluded.subject, body = excluded.body,"
                " description = excluded.description, updated_at = excluded.updated_at",
                (
                    template.id,
                    template.subject,
                    template.body,
                    template.description,
                    to_ms(template.created_at),
                    to_ms(template.updated_at),
                ),
            )
            return existed is None

        return bool(self.write(run))

    def get_template(self, template_id: str) -> NotificationTemplate | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM notification_templates WHERE id = {self._MARK}",
                (template_id,),
            ).fetchone()
        return None if row is None else _template(row)

    def list_templates(self, page: int, page_size: int) -> tuple[list[NotificationTemplate], int]:
        m = self._MARK
        with self._read() as conn:
            total = conn.execute("SELECT count(*) FROM notification_templates").fetchone()
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM notification_templates ORDER BY id LIMIT {m} OFFSET {m}",
                (page_size, (page - 1) * page_size),
            ).fetchall()
        return [_template(row) for row in rows], int(total[0] if total else 0)

    def delete_template(self, template_id: str) -> bool:
        m = self._MARK
        return bool(
            self.write(
                lambda conn: (
                    conn.execute(
                        f"DELETE FROM notification_templates WHERE id = {m}", (template_id,)
                    ).rowcount
                    > 0
                )
            )
        )

    def find_templates(self, ids: Iterable[str]) -> dict[str, NotificationTemplate]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        marks = ", ".join([self._MARK] * len(wanted))
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM notification_templates WHERE id IN ({marks})", wanted
            ).fetchall()
        return {row[0]: _template(row) for row in rows}
