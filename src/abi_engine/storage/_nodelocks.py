"""Which nodes on one SQLite database are alive, from kernel file locks.

Leases decide who may take an execution over (see
:mod:`abi_engine.runtime.leases`); they are the rule on every store. On SQLite, every
process that opens the database runs on the same machine (or shares its
kernel through a bind mount), so the kernel can also say at once that a
process ended: each running node holds an exclusive ``flock`` on its own file
in ``<database>-nodes/``, and the kernel drops the lock when the process ends,
however it ends (``kill -9`` included). A node whose file is no longer locked
is gone: its executions are taken over without waiting for their leases.

No conclusion is ever drawn from a host name or a process id, which mean
nothing across PID namespaces (containers sharing a host name, cloned
machines). A file that cannot be read, or no file at all, says nothing: the
lease decides.

Each file is created under a temporary name, locked, then renamed into place,
so no other process ever sees it unlocked while its node lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path

__all__ = ["NodeLocks"]

log = logging.getLogger("abi_engine.storage")

_SUFFIX = ".lock"


def _file_name(node_id: str) -> str:
    return hashlib.sha256(node_id.encode()).hexdigest()[:24] + _SUFFIX


class NodeLocks:
    """The lock files of the nodes of one database (``<path>-nodes/``)."""

    def __init__(self, database_path: str) -> None:
        self.directory = Path(f"{database_path}-nodes")
        self._held: dict[str, int] = {}  # node id -> descriptor of its locked file

    def register(self, node_id: str) -> None:
        """Hold the lock of ``node_id`` (a node of this process) until :meth:`unregister`."""
        if node_id in self._held:
            return
        final = self.directory / _file_name(node_id)
        temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        for attempt in (1, 2):
            try:
                self.directory.mkdir(exist_ok=True)
                fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            except FileNotFoundError:  # another node removed the empty directory just now
                if attempt == 1:
                    continue
                raise
            except OSError as exc:  # a read-only directory: only the leases will tell
                log.warning("no liveness lock for node %s (%s); leases only", node_id, exc)
                return
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, node_id.encode())
            os.replace(temporary, final)
        except OSError as exc:
            os.close(fd)
            log.warning("no liveness lock for node %s (%s); leases only", node_id, exc)
            return
        self._held[node_id] = fd

    def unregister(self, node_id: str) -> None:
        """Drop the lock of ``node_id`` and its file (the node stopped cleanly)."""
        fd = self._held.pop(node_id, None)
        if fd is None:
            return
        try:
            (self.directory / _file_name(node_id)).unlink(missing_ok=True)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):  # only when empty: other nodes may be in it
            self.directory.rmdir()

    def dead(self) -> list[str]:
        """The node ids whose lock file is not locked: their process has ended."""
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return []
        mine = {_file_name(node_id) for node_id in self._held}
        found: list[str] = []
        for entry in entries:
            if not entry.name.endswith(_SUFFIX) or entry.name in mine:
                continue
            node_id = _probe(entry.path)
            if node_id is not None:
                found.append(node_id)
        return found

    def forget(self, node_id: str) -> None:
        """Remove the file of a dead node (nothing of it is left to take over)."""
        with contextlib.suppress(OSError):
            (self.directory / _file_name(node_id)).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()

    def close(self) -> None:
        for node_id in list(self._held):
            self.unregister(node_id)


def _probe(path: str) -> str | None:
    """The node id in ``path`` if no process holds its lock, else ``None``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # alive
        try:
            text = os.read(fd, 4096).decode(errors="replace").strip()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return text or None
    except OSError:
        return None
    finally:
        os.close(fd)
