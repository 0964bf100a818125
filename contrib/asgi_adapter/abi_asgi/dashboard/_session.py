"""Dashboard sessions: an access token exchanged for a server-side session.

The browser holds only a random session id, in an ``HttpOnly``,
``SameSite=Strict`` cookie scoped to the dashboard's path (``Secure`` when the
request came over HTTPS). The server keeps, per session, the access token
(checked again on every request with the engine's token service, so a revoked
token ends its sessions within the service's cache time), the CSRF token every
form posts back, and an absolute expiry. Signing out forgets the session at
once. Sessions live in this process's memory: restarting the server signs
everyone out.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable

import attrs

__all__ = ["COOKIE", "LOGIN_COOKIE", "Session", "SessionStore"]

#: The session cookie's name.
COOKIE = "abi_dashboard_session"
#: The sign-in form's double-submit CSRF cookie (before a session exists).
LOGIN_COOKIE = "abi_dashboard_login"


@attrs.frozen(kw_only=True)
class Session:
    """One signed-in browser."""

    id: str
    token: str = attrs.field(repr=False)
    csrf: str = attrs.field(repr=False)
    expires_at: float

    def csrf_ok(self, value: str | None) -> bool:
        """Whether ``value`` is this session's CSRF token (compared in constant time)."""
        return value is not None and hmac.compare_digest(value.encode(), self.csrf.encode())


class SessionStore:
    """Sessions by id, each ending ``ttl_seconds`` after sign-in (or at sign-out)."""

    def __init__(
        self,
        ttl_seconds: float = 8 * 3600,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self.ttl_seconds = ttl_seconds
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, token: str) -> Session:
        """A new session for ``token`` (the oldest ones make room past ``max_sessions``)."""
        session = Session(
            id=secrets.token_urlsafe(32),
            token=token,
            csrf=secrets.token_urlsafe(32),
            expires_at=self._clock() + self.ttl_seconds,
        )
        with self._lock:
            self._prune()
            while len(self._sessions) >= self.max_sessions:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id``; ``None`` when unknown or expired."""
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires_at <= self._clock():
                del self._sessions[session_id]
                return None
            return session

    def revoke(self, session_id: str | None) -> bool:
        """Forget a session; whether it existed."""
        with self._lock:
            return self._sessions.pop(session_id or "", None) is not None

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]

    def __len__(self) -> int:
        with self._lock:
            self._prune()
            return len(self._sessions)
