"""Auth: random tokens stored as hashes, scopes, Unauthorized/Forbidden, user ids."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from abi_engine import Engine, Principal, Scope
from abi_engine.api import ApiRequest, call
from abi_engine.auth import TOKEN_PREFIX, TokenService, hash_token, normalize_user_id
from abi_engine.errors import Forbidden, InvalidRequest, InvalidState, Unauthorized
from abi_engine.storage import Store

CUSTOM = {
    "name": "Auth test",
    "type": "custom",
    "configuration": {"steps": [{"name": "s", "action": "delay", "seconds": 0}]},
}


def test_tokens_are_random_and_prefixed(engine: Engine) -> None:
    """Tokens are long, URL-safe, prefixed with abi_, and never repeat."""
    tokens = {engine.tokens.create_token("usr_a") for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX)
        body = token.removeprefix(TOKEN_PREFIX)
        assert len(body) >= 43  # 32 random bytes, base64url
        assert set(body) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_tokens_are_stored_only_as_hashes(engine: Engine, db_path: Path) -> None:
    """The database files never contain a token, only its SHA-256 hash."""
    token = engine.tokens.create_token("usr_a", name="ci")
    engine.close()
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    assert files
    raw = b"".join(p.read_bytes() for p in files)
    assert token.encode() not in raw
    assert token.removeprefix(TOKEN_PREFIX).encode() not in raw
    conn = sqlite3.connect(db_path)
    (stored,) = conn.execute("SELECT hash FROM tokens").fetchone()
    conn.close()
    assert stored == hashlib.sha256(token.encode()).hexdigest() == hash_token(token)


def test_token_survives_a_restart(engine: Engine, db_path: Path) -> None:
    """A token made by one engine authenticates on another engine on the same file."""
    token = engine.tokens.create_token("alice", [Scope.WORKFLOWS_READ])
    engine.close()
    again = Engine(db_path)
    try:
        principal = again.tokens.authenticate(token)
        assert principal.user_id == "usr_alice"
        assert principal.scopes == frozenset({Scope.WORKFLOWS_READ})
    finally:
        again.close()


@pytest.mark.parametrize("token", [None, "", "abi_not-a-real-token", "Bearer x"])
def test_missing_or_unknown_token_is_unauthorized(engine: Engine, token: str | None) -> None:
    """No token or an unknown one raises Unauthorized (401)."""
    with pytest.raises(Unauthorized) as info:
        engine.tokens.authenticate(token)
    assert info.value.http_status == 401


def test_default_token_has_every_scope(principal: Principal) -> None:
    """A token created without scopes carries all of them and passes every check."""
    assert principal.scopes == frozenset(Scope)
    for scope in Scope:
        principal.require(scope)


def test_scopes_are_enforced(make_principal: Callable[..., Principal]) -> None:
    """A token with some scopes passes those and gets Forbidden (403) naming the missing one."""
    reader = make_principal("usr_reader", ["workflows:read", Scope.EXECUTIONS_READ])
    assert reader.scopes == {Scope.WORKFLOWS_READ, Scope.EXECUTIONS_READ}
    reader.require("workflows:read")
    with pytest.raises(Forbidden) as info:
        reader.require(Scope.WORKFLOWS_WRITE)
    assert info.value.http_status == 403
    assert info.value.details == {"required_scope": "workflows:write"}


def test_unknown_scope_is_refused(engine: Engine) -> None:
    """Creating a token with an unknown scope raises InvalidRequest listing the allowed ones."""
    with pytest.raises(InvalidRequest) as info:
        engine.tokens.create_token("usr_a", ["workflows:admin"])
    assert info.value.details["field"] == "scope"
    assert "workflows:read" in info.value.details["allowed"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [("alice", "usr_alice"), ("usr_bob", "usr_bob"), ("  carol ", "usr_carol")],
)
def test_user_ids_get_the_usr_prefix(given: str, expected: str) -> None:
    """User ids are normalized to carry the usr_ prefix exactly once."""
    assert normalize_user_id(given) == expected


@pytest.mark.parametrize("bad", ["", "   ", "two words"])
def test_bad_user_ids(engine: Engine, bad: str) -> None:
    """Empty or whitespace-containing user ids are refused."""
    with pytest.raises(InvalidRequest):
        engine.tokens.create_token(bad)


@pytest.mark.anyio
async def test_created_by_is_the_tokens_user(
    engine: Engine, make_principal: Callable[..., Principal]
) -> None:
    """A workflow created with a token records that token's user as created_by."""
    alice = make_principal("alice")
    wf = await engine.workflows.create(CUSTOM, actor=alice)
    assert wf.created_by == "usr_alice"
    assert (await engine.workflows.get(wf.id)).created_by == "usr_alice"
    data = await call(engine, make_principal("bob"), "create_workflow", ApiRequest(body=CUSTOM))
    assert data["created_by"] == "usr_bob"


@pytest.mark.anyio
async def test_operations_check_their_scope(
    engine: Engine, make_principal: Callable[..., Principal]
) -> None:
    """The operations table refuses a token lacking the operation's scope before doing anything."""
    reader = make_principal("reader", ["workflows:read"])
    with pytest.raises(Forbidden):
        await call(engine, reader, "create_workflow", ApiRequest(body=CUSTOM))
    assert (await engine.workflows.list()).pagination.total_items == 0
    listed = await call(engine, reader, "list_workflows", ApiRequest())
    assert listed["pagination"]["total_items"] == 0
    with pytest.raises(Forbidden):
        await call(engine, reader, "list_integrations", ApiRequest())


def test_revoked_token_fails_at_once_here_and_soon_elsewhere(
    make_store: Callable[..., Store],
) -> None:
    """Revoking stops the token in this service at once, in another (same database) after its cache."""
    here = TokenService(make_store(), cache_seconds=60)
    elsewhere = TokenService(make_store(same=True), cache_seconds=0.2)
    token = here.create_token("usr_ann", name="ci")
    keep = here.create_token("usr_ann")
    principal = elsewhere.authenticate(token)  # cached over there
    assert here.authenticate(token) == principal
    assert [t.id for t in here.list_tokens("ann")] == [
        here.authenticate(keep).token_id,
        principal.token_id,
    ]
    assert principal.token_id is not None
    assert here.revoke_token(principal.token_id) is True
    with pytest.raises(Unauthorized):
        here.authenticate(token)
    assert elsewhere.authenticate(token) == principal  # within its cache time
    time.sleep(0.25)
    with pytest.raises(Unauthorized):
        elsewhere.authenticate(token)
    assert elsewhere.authenticate(keep).user_id == "usr_ann"
    assert here.revoke_token(principal.token_id) is False  # already revoked
    assert [t.id for t in here.list_tokens()] == [here.authenticate(keep).token_id]


class _RevokingStore:
    """A store whose token lookups let a revocation slip in after the read (as another thread could)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.service: TokenService | None = None
        self.revoke_after_read: str | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def get_token(self, token_hash: str) -> object:
        record = self.store.get_token(token_hash)
        if self.revoke_after_read is not None and self.service is not None:
            token_id, self.revoke_after_read = self.revoke_after_read, None
            assert self.service.revoke_token(token_id) is True
        return record


def test_check_racing_a_revocation_does_not_cache_the_token(
    make_store: Callable[..., Store],
) -> None:
    """A check that read a token just before it was revoked answers, but does not cache it."""
    wrapper = _RevokingStore(make_store())
    service = TokenService(wrapper, cache_seconds=60)  # type: ignore[arg-type]
    wrapper.service = service
    token = service.create_token("usr_ann")
    (record,) = service.list_tokens("usr_ann")
    wrapper.revoke_after_read = record.id
    assert service.authenticate(token).token_id == record.id  # read before the revocation
    assert wrapper.revoke_after_read is None  # the revocation did happen in between
    with pytest.raises(Unauthorized):
        service.authenticate(token)  # not served from the cache


@pytest.mark.anyio
async def test_revoking_a_parent_stops_its_cached_descendants_at_once(
    make_store: Callable[..., Store],
) -> None:
    """Revoking a token stops the tokens minted from it (cached or not) here at once, elsewhere soon."""
    here = TokenService(make_store(), cache_seconds=60)
    elsewhere = TokenService(make_store(same=True), cache_seconds=0.2)
    root = here.create_token("usr_ann")
    keep = here.create_token("usr_ann")
    parent = here.authenticate(root)
    minted = await here.create_own(parent, {"name": "child"})
    child = minted.token
    assert minted.parent_id == parent.token_id
    grandchild = await here.create_own(here.authenticate(child), {"name": "grandchild"})
    assert grandchild.parent_id == minted.id
    for token in (child, grandchild.token):
        assert elsewhere.authenticate(token) == here.authenticate(token)  # cached in both
    assert parent.token_id is not None
    revoked = here.revoke_tree(parent.token_id)
    assert revoked == [parent.token_id, *sorted([minted.id, grandchild.id])]
    for token in (root, child, grandchild.token):
        with pytest.raises(Unauthorized):
            here.authenticate(token)
    assert elsewhere.authenticate(child).user_id == "usr_ann"  # within its cache time
    await anyio.sleep(0.25)
    for token in (root, child, grandchild.token):
        with pytest.raises(Unauthorized):
            elsewhere.authenticate(token)
    assert [t.id for t in here.list_tokens("ann")] == [here.authenticate(keep).token_id]


@pytest.mark.anyio
async def test_a_token_revoked_after_its_check_mints_nothing(engine: Engine) -> None:
    """A caller checked just before its token was revoked cannot mint: Unauthorized, nothing stored."""
    caller = engine.tokens.authenticate(engine.tokens.create_token("usr_ann"))
    assert caller.token_id is not None
    assert engine.tokens.revoke_token(caller.token_id) is True
    with pytest.raises(Unauthorized):
        await engine.tokens.create_own(caller, {"name": "late"})
    assert engine.tokens.list_tokens("usr_ann") == []


@pytest.mark.anyio
async def test_revoke_own_counts_the_descendants(engine: Engine) -> None:
    """revoke_own answers how many live descendants went with the token; the CLI's tokens stay roots."""
    root = engine.tokens.authenticate(engine.tokens.create_token("usr_ann"))
    assert engine.tokens.list_tokens("usr_ann")[0].parent_id is None
    child = engine.tokens.authenticate((await engine.tokens.create_own(root, {})).token)
    await engine.tokens.create_own(child, {})
    await engine.tokens.create_own(root, {})
    result = await engine.tokens.revoke_own(root, root.token_id)
    assert (result.id, result.revoked, result.revoked_descendants) == (root.token_id, True, 3)
    assert engine.tokens.list_tokens("usr_ann") == []


@pytest.mark.anyio
async def test_self_service_minting_is_capped_per_user(make_store: Callable[..., Store]) -> None:
    """create_own stops at max_tokens_per_user (default 100) live tokens of the user, every
    live token counting (the CLI's too); revoking frees a place; create_token is never capped."""
    service = TokenService(make_store())
    assert service.max_tokens_per_user == 100
    root = service.authenticate(service.create_token("usr_ann"))
    minted = [await service.create_own(root, {}) for _ in range(99)]  # 100 live now
    with pytest.raises(InvalidState) as refused:
        await service.create_own(root, {"name": "one too many"})
    assert refused.value.http_status == 409
    assert refused.value.details == {"limit": "max_tokens_per_user", "max_tokens_per_user": 100}
    assert "revoke" in refused.value.message
    assert len(service.list_tokens("usr_ann")) == 100
    other = service.authenticate(service.create_token("usr_bob"))
    await service.create_own(other, {})  # another user's count is its own
    assert service.revoke_token(minted[0].id) is True
    await service.create_own(root, {})  # the freed place
    service.create_token("usr_ann")  # operators are not capped: 101 live
    with pytest.raises(InvalidState):
        await service.create_own(root, {})
    assert len(service.list_tokens("usr_ann")) == 101
    service.max_tokens_per_user = None  # no limit
    await service.create_own(root, {})
    assert len(service.list_tokens("usr_ann")) == 102


def test_cached_answers_only_a_fresh_unrevoked_check(
    make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cached`` (the event loop's look-up) knows a token only after a check, until its
    cache time passes or it is revoked here: never the store's answer itself."""
    service = TokenService(make_store(), cache_seconds=0.3)
    token = service.create_token("usr_ann")
    assert service.cached(token) is None  # never checked
    assert service.cached(None) is None
    assert service.cached("") is None
    principal = service.authenticate(token)
    assert service.cached(token) == principal
    real = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: real() + 0.31)  # its cache time passed
    assert service.cached(token) is None  # expired
    assert service.authenticate(token) == principal  # checked again
    assert service.cached(token) == principal
    assert principal.token_id is not None
    assert service.revoke_token(principal.token_id) is True
    assert service.cached(token) is None  # revoked: at once
    with pytest.raises(Unauthorized):
        service.authenticate(token)
    with pytest.raises(Unauthorized):
        service.authenticate("abi_unknown")
    assert service.cached("abi_unknown") is None  # a refused token is never cached


def test_the_cache_is_bounded_dropping_the_oldest(make_store: Callable[..., Store]) -> None:
    """At most ``max_cached`` tokens are remembered; past it the one remembered longest
    ago goes first (one checked again counts as new), and a dropped one is read again."""
    service = TokenService(make_store(), cache_seconds=60, max_cached=3)
    tokens = [service.create_token(f"usr_u{i}") for i in range(5)]
    for token in tokens[:3]:
        service.authenticate(token)
    assert [service.cached(t) is not None for t in tokens] == [True, True, True, False, False]
    service._cache[hash_token(tokens[0])] = (service.authenticate(tokens[0]), 0.0)  # stale
    service.authenticate(tokens[0])  # stale: read again, now the newest
    service.authenticate(tokens[3])  # drops tokens[1], the oldest
    assert [service.cached(t) is not None for t in tokens] == [True, False, True, True, False]
    service.authenticate(tokens[4])  # drops tokens[2]
    assert [service.cached(t) is not None for t in tokens] == [True, False, False, True, True]
    assert len(service._cache) == 3
    assert service.authenticate(tokens[1]).user_id == "usr_u1"  # read again
    assert len(service._cache) == 3
    nothing = TokenService(make_store(same=True), max_cached=0)
    assert nothing.authenticate(tokens[2]).user_id == "usr_u2"  # works, remembers nothing
    assert nothing._cache == {}
