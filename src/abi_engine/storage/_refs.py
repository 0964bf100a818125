"""Execution events kept by reference, packed: one outbox row per commit (shared by backends).

The runtime makes several execution events per execution (started, each
step, finished); written one row each they would cost more than the
execution. Instead every commit writes its reference events as one row of
type :data:`PACKED_TYPE`: ``id`` is the first of a block of consecutive event
ids (:func:`abi_engine.ids.new_id_block`), ``timestamp`` the first event's,
and ``refs`` one line per event: ``type``, execution id, step index (empty
for none) and epoch milliseconds, tab-separated. Event ``k`` of the row has
id ``id_at(first, k)`` and is delivered as ``(event_seq, event_index=k)``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import NamedTuple

from abi_engine.events import ExecutionEventRef
from abi_engine.ids import id_at, new_id_block
from abi_engine.storage._codec import from_ms, loads, to_ms

__all__ = ["PACKED_TYPE", "OutboxEntry", "outbox_entries", "pack", "unpack", "whole_rows"]

#: The ``type`` of an outbox row that holds packed reference events.
PACKED_TYPE = "*"


def pack(refs: Sequence[ExecutionEventRef]) -> tuple[str, int, str]:
    """``(first event id, first timestamp in ms, packed text)`` for one row holding ``refs``."""
    first = new_id_block("evt_", len(refs))
    lines = [
        f"{r.type}\t{r.execution_id}\t{'' if r.step_index is None else r.step_index}"
        f"\t{to_ms(r.timestamp)}"
        for r in refs
    ]
    return first, to_ms(refs[0].timestamp) or 0, "\n".join(lines)


def unpack(first: str | None, text: str) -> list[ExecutionEventRef]:
    """The events of a packed row, with their ids (none when ``first`` is ``None``)."""
    events = []
    for k, line in enumerate(text.split("\n")):
        kind, execution_id, step, ms = line.split("\t")
        events.append(
            ExecutionEventRef(
                kind,
                execution_id,
                int(step) if step else None,
                from_ms(int(ms)),  # type: ignore[arg-type]
                None if first is None else id_at(first, k),
            )
        )
    return events


class OutboxEntry(NamedTuple):
    """One event of the outbox, for the fan-out: where it is, what it is, what it is about.

    ``execution_id`` is given for the callback event types only (the
    execution whose ``callback_url`` may want the event).
    """

    seq: int
    offset: int
    event_id: str
    type: str
    timestamp: int
    execution_id: str | None


def outbox_entries(
    rows: Iterable[tuple[int, str, str, int, str | None, str | None]],
    callback_types: Collection[str],
) -> list[OutboxEntry]:
    """The events of outbox rows ``(seq, id, type, timestamp, data, refs)``, packed ones unpacked."""
    entries = []
    for seq, event_id, kind, timestamp, data, refs in rows:
        if refs is not None:
            for k, ref in enumerate(unpack(event_id, refs)):
                about = ref.execution_id if ref.type in callback_types else None
                entries.append(
                    OutboxEntry(
                        seq, k, ref.id or event_id, ref.type, to_ms(ref.timestamp) or 0, about
                    )
                )
            continue
        about = None
        if kind in callback_types and data is not None:
            found = loads(data).get("execution_id")
            about = found if isinstance(found, str) else None
        entries.append(OutboxEntry(seq, 0, event_id, kind, timestamp, about))
    return entries


def whole_rows(entries: list[OutboxEntry], limit: int) -> list[OutboxEntry]:
    """The first entries up to the row that brings their count to ``limit`` (rows stay whole)."""
    for n, entry in enumerate(entries, start=1):
        if n >= limit and (n == len(entries) or entries[n].seq != entry.seq):
            return entries[:n]
    return entries
