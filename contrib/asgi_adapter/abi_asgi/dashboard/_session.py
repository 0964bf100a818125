"""Dashboard sessions: an access token exchanged for a server-side session.

The browser holds only a random session id, in an ``HttpOnly``,
``SameSite=Strict`` cookie scoped to the dashboard's path (``Secure`` when the
request came over HTTPS). The server keeps, per session, the access token
(checked again on every request with the engine's token service, so a revoked
token ends its sessions within the service's cache time), the CSRF token every
form posts back, an absolute expiry and an idle timeout. Signing out forgets the session at
once. Sessions live in this process's memory: restarting the server signs
everyone out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable

import attrs

__all__ = ["COOKIE", "LOGIN_COOKIE", "Session", "SessionStore", "mask", "unmasks_to"]

#: The session cookie's name.
COOKIE = "abi_dashboard_session"
#: The sign-in form's double-submit CSRF cookie (before a session exists).
LOGIN_COOKIE = "abi_dashboard_login"


def mask(secret: str) -> str:
    """``secret`` under a fresh one-time pad (``base64url(pad + pad XOR secret)``).

    Pages show CSRF tokens masked, so no two answers carry the same secret bytes:
    a compressed HTTPS page that also reflects an attacker's text (BREACH) then
    leaks nothing about the token.
    """
    raw = secret.encode()
    pad = secrets.token_bytes(len(raw))
    masked = pad + bytes(a ^ b for a, b in zip(pad, raw, strict=True))
    return base64.urlsafe_b64encode(masked).decode("ascii").rstrip("=")


def unmasks_to(value: str | None, secret: str) -> bool:
    """Whether ``value`` is ``secret`` under some mask (see :func:`mask`); the secret's
    bytes are compared in constant time."""
    if not value or not value.isascii():
        return False
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error):
        return False
    half, odd = divmod(len(data), 2)
    if odd or not half:
        return False
    raw = bytes(a ^ b for a, b in zip(data[:half], data[half:], strict=True))
    return hmac.compare_digest(raw, secret.encode())


def _key(session_id: str) -> bytes:
    """What the store files a session under: a digest of its id, never the id itself."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()


@attrs.frozen(kw_only=True)
class Session:
    """One signed-in browser."""

    id: str = attrs.field(repr=False)
    token: str = attrs.field(repr=False)
    csrf: str = attrs.field(repr=False)
    user: str
    expires_at: float

    def masked_csrf(self) -> str:
        """This session's CSRF token as a page shows it: under a fresh mask each time."""
        return mask(self.csrf)

    def csrf_ok(self, value: str | None) -> bool:
        """Whether ``value`` is this session's CSRF token under some mask (the token's
        bytes compared in constant time)."""
        return unmasks_to(value, self.csrf)


class SessionStore:
    """Sessions by id, each ending ``ttl_seconds`` after sign-in, after
    ``idle_seconds`` without a request, or at sign-out.

    Bounded twice: one user holds at most ``max_sessions_per_user`` sessions (its
    oldest end as it signs in again), so one user signing in over and over
    cannot push other users' sessions out; past ``max_sessions`` in all, the
    oldest sessions end. Sessions are filed under a SHA-256 digest of their id:
    a lookup compares no secret byte by byte, and the table holds no usable id.
    """

    def __init__(
        self,
        ttl_seconds: float = 8 * 3600,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        max_sessions_per_user: int = 20,
        idle_seconds: float = 3600,
    ) -> None:
        if ttl_seconds <= 0 or idle_seconds <= 0:
            raise ValueError("ttl_seconds and idle_seconds must be positive")
        if max_sessions < 1 or max_sessions_per_user < 1:
            raise ValueError("max_sessions and max_sessions_per_user must be at least 1")
        self.ttl_seconds = ttl_seconds
        self.max_sessions = max_sessions
        self.max_sessions_per_user = max_sessions_per_user
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._seen: dict[bytes, float] = {}  # when each session was last used
        self._sessions: dict[bytes, Session] = {}  # oldest first
        self._by_user: dict[str, dict[bytes, None]] = {}  # oldest first
        self._lock = threading.Lock()

    def create(self, token: str, user: str | None = None) -> Session:
        """A new session for ``token`` of ``user`` (default: the token stands for its user).

        The user's oldest sessions make room past ``max_sessions_per_user``, everyone's
        oldest past ``max_sessions``.
        """
        session = Session(
            id=secrets.token_urlsafe(32),
            token=token,
            csrf=secrets.token_urlsafe(32),
            user=user
            if user is not None
            else "token:" + hashlib.sha256(token.encode()).hexdigest(),
            expires_at=self._clock() + self.ttl_seconds,
        )
        key = _key(session.id)
        with self._lock:
            self._prune()
            own = self._by_user.get(session.user, {})
            while len(own) >= self.max_sessions_per_user:
                self._drop(next(iter(own)))
            while len(self._sessions) >= self.max_sessions:
                self._drop(next(iter(self._sessions)))
            self._sessions[key] = session
            self._seen[key] = self._clock()
            self._by_user.setdefault(session.user, {})[key] = None
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id``; ``None`` when unknown or expired."""
        if not session_id:
            return None
        key = _key(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            now = self._clock()
            if self._expired(key, session, now):
                self._drop(key)
                return None
            self._seen[key] = now
            return session

    def revoke(self, session_id: str | None) -> bool:
        """Forget a session; whether it existed."""
        if not session_id:
            return False
        with self._lock:
            return self._drop(_key(session_id))

    def _drop(self, key: bytes) -> bool:
        session = self._sessions.pop(key, None)
        self._seen.pop(key, None)
        if session is None:
            return False
        own = self._by_user.get(session.user)
        if own is not None:
            own.pop(key, None)
            if not own:
                del self._by_user[session.user]
        return True

    def _expired(self, key: bytes, session: Session, now: float) -> bool:
        return session.expires_at <= now or now - self._seen.get(key, now) >= self.idle_seconds

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if self._expired(k, s, now)]:
            self._drop(key)

    def __len__(self) -> int:
        with self._lock:
            self._prune()
            return len(self._sessions)
