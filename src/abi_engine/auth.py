"""Users, access tokens and scopes.

Tokens are 256-bit random strings (``abi_`` + URL-safe base64); only their
SHA-256 hash is stored. A token acts for one user (``usr_...``) with a set of
scopes; an operation needing a scope the token lacks raises ``Forbidden``.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from abi_engine.converter import structure
from abi_engine.errors import (
    Forbidden,
    InvalidRequest,
    InvalidState,
    TokenNotFound,
    Unauthorized,
)
from abi_engine.ids import new_id, utcnow
from abi_engine.models import CreatedToken, Page, RevokeResult, Scope, Token, TokenCreateRequest
from abi_engine.services import check_page
from abi_engine.storage.aio import call_store
from abi_engine.storage.base import Store, TokenLimitReached

__all__ = ["ALL_SCOPES", "Principal", "TokenService", "hash_token", "normalize_user_id"]

ALL_SCOPES: frozenset[Scope] = frozenset(Scope)
TOKEN_PREFIX = "abi_"
#: The longest token name the self-service operations accept.
MAX_TOKEN_NAME = 200


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
        if (scope if isinstance(scope, Scope) else Scope(scope)) not in self.scopes:
            raise Forbidden(
                f"The access token lacks the '{scope}' scope",
                {"required_scope": str(scope)},
            )


class TokenService:
    """Creates, checks, lists and revokes access tokens (``engine.tokens``).

    Checked tokens are remembered for ``cache_seconds`` (default 5): a token
    revoked by this engine stops working at once; one revoked by another
    process sharing the database, within that time. At most ``max_cached``
    tokens are remembered, the oldest remembered dropped first. Revoking a token revokes
    the tokens descended from it too (``parent_id``: minted from it with
    :meth:`create_own`, or from those, and so on).

    The ``*_own`` coroutines are the self-service operations of the REST API
    (``/api/v1/tokens``): a caller manages the tokens of its own user only.
    :meth:`create_own` refuses to mint once the user holds
    ``max_tokens_per_user`` live tokens (all of them count, those made by
    :meth:`create_token` too; ``None``: no limit). :meth:`create_token` (the
    operators' command line) is never limited.
    """

    def __init__(
        self,
        store: Store,
        *,
        cache_seconds: float = 5.0,
        max_tokens_per_user: int | None = 100,
        max_cached: int = 10_000,
    ) -> None:
        self._store = store
        self.cache_seconds = cache_seconds
        self.max_tokens_per_user = max_tokens_per_user
        #: The most checked tokens remembered; past it the oldest remembered is dropped.
        self.max_cached = max_cached
        # digest -> (principal, monotonic deadline), oldest first; changed under the lock
        self._cache: dict[str, tuple[Principal, float]] = {}
        # Counts revocations, so that a check that read a token before a revocation
        # (in another thread) does not put it back into the cache afterwards.
        self._revocations = 0
        self._cache_lock = threading.Lock()

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
        return self._insert(user_id, scope_set, name)[0]

    def _insert(
        self,
        user_id: str,
        scopes: frozenset[Scope],
        name: str | None,
        parent_id: str | None = None,
        max_live: int | None = None,
    ) -> tuple[str, Token]:
        """Store a new token of ``user_id`` (created when new): the token and its record.

        :raises Unauthorized: ``parent_id`` is no longer a live token (revoked
            after the caller was checked): it mints nothing.
        :raises InvalidState: ``max_live`` given and the user already holds that
            many live tokens (``details.max_tokens_per_user``).
        """
        now = utcnow()
        self._store.ensure_user(user_id, now)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = Token(
            id=new_id("tok_"),
            user_id=user_id,
            scopes=scopes,
            created_at=now,
            name=name,
            parent_id=parent_id,
        )
        try:
            stored = self._store.insert_token(record, hash_token(token), max_live=max_live)
        except TokenLimitReached as exc:
            raise InvalidState(
                f"The user already holds {exc.limit} live access tokens, the most allowed;"
                " revoke some first",
                {"limit": "max_tokens_per_user", "max_tokens_per_user": exc.limit},
            ) from None
        if not stored:
            raise Unauthorized("The calling access token has been revoked")
        return token, record

    def cached(self, token: str | None) -> Principal | None:
        """The principal of ``token`` when a check within ``cache_seconds`` found it live
        (and no revocation here since), without reading the store; else ``None``.

        Cheap and never blocking: an event loop asks it first and takes
        :meth:`authenticate`, which may read the store, to a thread only when it
        answers ``None``.
        """
        if not token:
            return None
        entry = self._cache.get(hash_token(token))
        if entry is not None and entry[1] > time.monotonic():
            return entry[0]
        return None

    def authenticate(self, token: str | None) -> Principal:
        """The principal of ``token``; raise ``Unauthorized`` when missing or unknown."""
        if not token:
            raise Unauthorized("Missing access token")
        digest = hash_token(token)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        revocations = self._revocations
        record = self._store.get_token(digest)
        if record is None:
            with self._cache_lock:
                self._cache.pop(digest, None)
            raise Unauthorized("Invalid access token")
        principal = Principal(user_id=record.user_id, scopes=record.scopes, token_id=record.id)
        with self._cache_lock:
            if revocations == self._revocations:  # else the record read may be revoked by now
                self._remember(digest, (principal, now + self.cache_seconds))
        return principal

    def _remember(self, digest: str, entry: tuple[Principal, float]) -> None:
        """Cache ``entry`` as the newest, dropping the oldest past ``max_cached`` (under the lock)."""
        cache = self._cache
        cache.pop(digest, None)
        while cache and len(cache) >= self.max_cached:
            del cache[next(iter(cache))]
        if self.max_cached > 0:
            cache[digest] = entry

    def list_tokens(self, user_id: str | None = None) -> list[Token]:
        """The live tokens (of ``user_id`` when given), newest first: ids, never the secrets."""
        return self._store.list_tokens(normalize_user_id(user_id) if user_id else None)

    def revoke_token(self, token_id: str, *, user_id: str | None = None) -> bool:
        """Revoke a token by its id (``tok_...``) and its descendants; whether a live one was revoked.

        See :meth:`revoke_tree`, which also tells which descendants were revoked.
        """
        return bool(self.revoke_tree(token_id, user_id=user_id))

    def revoke_tree(self, token_id: str, *, user_id: str | None = None) -> list[str]:
        """Revoke a token and every live token descended from it; the ids revoked.

        The descendants are the tokens created from it through the self-service
        operation, those created from them, and so on; all are revoked in one
        transaction. The answer lists ``token_id`` first, then the descendants
        revoked; it is empty when there was no live token with that id. With
        ``user_id``, only a token of that user is revoked. They stop
        authenticating at once in this engine, and within ``cache_seconds`` in
        other processes on the same database.
        """
        owner = normalize_user_id(user_id) if user_id is not None else None
        revoked = self._store.revoke_token(token_id, utcnow(), owner)
        if not revoked and owner is not None:
            return []  # not this user's: leave the cache (other users' tokens) alone
        gone = {token_id, *revoked}
        with self._cache_lock:
            self._revocations += 1
            self._cache = {
                digest: entry
                for digest, entry in self._cache.items()
                if entry[0].token_id not in gone
            }
        return revoked

    # -- self-service (the REST operations) ------------------------------------------------

    async def list_own(
        self, actor: Principal, *, page: Any = 1, page_size: Any = 10
    ) -> Page[Token]:
        """One page of the caller's user's live tokens, newest first (never the secrets)."""
        page, page_size = check_page(page, page_size)
        owner = normalize_user_id(actor.user_id)
        items, total = await call_store(
            self._store, self._store.list_user_tokens, owner, page, page_size
        )
        return Page.build(items, page, page_size, total)

    async def create_own(self, actor: Principal, data: Mapping[str, Any]) -> CreatedToken:
        """Create a token for the caller's user; the answer holds the token, this once.

        ``data`` is a :class:`~abi_engine.models.TokenCreateRequest`. ``scopes``
        defaults to the caller's scopes.

        :raises InvalidRequest: bad types, unknown fields or scopes, an empty
            ``scopes`` list, a name too long (``details.field`` names the field).
        :raises Forbidden: a scope the calling token does not have.
        :raises InvalidState: the user already holds ``max_tokens_per_user``
            live tokens (``details.max_tokens_per_user``): revoke some first.
        """
        try:
            req = structure(data, TokenCreateRequest)
        except InvalidRequest as exc:
            if str(exc.details.get("field", "")).startswith("scopes"):
                exc.details["allowed"] = sorted(s.value for s in ALL_SCOPES)
            raise
        if req.name is not None and len(req.name) > MAX_TOKEN_NAME:
            raise InvalidRequest(
                f"'name' must be at most {MAX_TOKEN_NAME} characters", {"field": "name"}
            )
        if req.scopes is None:
            scopes = actor.scopes
        elif not req.scopes:
            raise InvalidRequest(
                "'scopes' must name at least one scope (omit it for the calling token's scopes)",
                {"field": "scopes", "allowed": sorted(s.value for s in ALL_SCOPES)},
            )
        else:
            scopes = frozenset(req.scopes)
            missing = sorted(s.value for s in scopes - actor.scopes)
            if missing:
                raise Forbidden(
                    "A token cannot grant scopes the calling token lacks: " + ", ".join(missing),
                    {"field": "scopes", "missing_scopes": missing},
                )
        token, record = await call_store(
            self._store,
            self._insert,
            normalize_user_id(actor.user_id),
            scopes,
            req.name,
            actor.token_id,
            self.max_tokens_per_user,
        )
        return CreatedToken(
            id=record.id,
            user_id=record.user_id,
            scopes=record.scopes,
            created_at=record.created_at,
            name=record.name,
            parent_id=record.parent_id,
            token=token,
        )

    async def revoke_own(self, actor: Principal, token_id: Any) -> RevokeResult:
        """Revoke one of the caller's user's live tokens (the calling one too) and its descendants.

        :raises TokenNotFound: no live token of the caller's user has this id
            (another user's token gets the same answer).
        """
        revoked = (
            await call_store(self._store, self.revoke_tree, token_id, user_id=actor.user_id)
            if isinstance(token_id, str)
            else []
        )
        if not revoked:
            raise TokenNotFound(str(token_id))
        return RevokeResult(id=token_id, revoked=True, revoked_descendants=len(revoked) - 1)
