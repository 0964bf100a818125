"""Users, access tokens and scopes.

Tokens are 256-bit random strings (``abi_`` + URL-safe base64); only their
SHA-256 hash is stored. A token acts for one user (``usr_...``) with a set of
scopes; an operation needing a scope the token lacks raises ``Forbidden``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable

import attrs

from abi_engine.errors import Forbidden, InvalidRequest, Unauthorized
from abi_engine.ids import new_id, utcnow
from abi_engine.models import Scope, Token
from abi_engine.storage.base import Store

__all__ = ["ALL_SCOPES", "Principal", "TokenService", "hash_token", "normalize_user_id"]

ALL_SCOPES: frozenset[Scope] = frozenset(Scope)
TOKEN_PREFIX = "abi_"


def hash_token(token: str) -> str:
    """The stored form of a token: hex SHA-256 (tokens carry 256 random bits)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def normalize_user_id(user_id: str) -> str:
    """User ids carry the ``usr_`` prefix; add it when missing."""
    user_id = user_id.strip()
    if not user_id or any(c.isspace() for c in user_id):
        raise InvalidRequest("A user id must be a non-empty word", {"field": "user"})
    return user_id if user_id.startswith("usr_") else f"usr_{user_id}"


@attrs.frozen(kw_only=True)
class Principal:
    """Who is calling: a user and the scopes of the token used."""

    user_id: str
    scopes: frozenset[Scope] = ALL_SCOPES
    token_id: str | None = None

    def require(self, scope: Scope | str) -> None:
        """Raise ``Forbidden`` unless the token has ``scope``."""
        if Scope(scope) not in self.scopes:
            raise Forbidden(
                f"The access token lacks the '{scope}' scope",
                {"required_scope": str(scope)},
            )


class TokenService:
    """Creates, checks, lists and revokes access tokens (``engine.tokens``).

    Checked tokens are remembered for ``cache_seconds`` (default 5): a token
    revoked by this engine stops working at once; one revoked by another
    process sharing the database, within that time.
    """

    def __init__(self, store: Store, *, cache_seconds: float = 5.0) -> None:
        self._store = store
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Principal, float]] = {}

    def create_token(
        self,
        user_id: str,
        scopes: Iterable[Scope | str] | None = None,
        *,
        name: str | None = None,
    ) -> str:
        """Create a token for ``user_id`` (created when new) and return it.

        The token is shown only here; the store keeps its hash. ``scopes``
        defaults to all scopes.
        """
        user_id = normalize_user_id(user_id)
        try:
            scope_set = ALL_SCOPES if scopes is None else frozenset(Scope(s) for s in scopes)
        except ValueError as exc:
            raise InvalidRequest(
                f"Unknown scope: {exc}", {"field": "scope", "allowed": sorted(ALL_SCOPES)}
            ) from None
        now = utcnow()
        self._store.ensure_user(user_id, now)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = Token(
            id=new_id("tok_"), user_id=user_id, scopes=scope_set, created_at=now, name=name
        )
        self._store.insert_token(record, hash_token(token))
        return token

    def authenticate(self, token: str | None) -> Principal:
        """The principal of ``token``; raise ``Unauthorized`` when missing or unknown."""
        if not token:
            raise Unauthorized("Missing access token")
        digest = hash_token(token)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        record = self._store.get_token(digest)
        if record is None:
            self._cache.pop(digest, None)
            raise Unauthorized("Invalid access token")
        principal = Principal(user_id=record.user_id, scopes=record.scopes, token_id=record.id)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (principal, now + self.cache_seconds)
        return principal

    def list_tokens(self, user_id: str | None = None) -> list[Token]:
        """The live tokens (of ``user_id`` when given), newest first: ids, never the secrets."""
        return self._store.list_tokens(normalize_user_id(user_id) if user_id else None)

    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token by its id (``tok_...``); whether a live one was revoked.

        It stops authenticating at once in this engine, and within
        ``cache_seconds`` in other processes on the same database.
        """
        revoked = self._store.revoke_token(token_id, utcnow())
        self._cache = {
            digest: entry for digest, entry in self._cache.items() if entry[0].token_id != token_id
        }
        return revoked
