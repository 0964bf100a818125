"""Per-token and per-address rate limiting: 429 with Retry-After."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from abi_asgi import RateLimit, RateLimiter, create_app
from asgi_helpers import error, success
from starlette.applications import Starlette

from abi_engine import Engine


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_burst_then_refills() -> None:
    """A bucket allows `burst` requests at once, then one per 1/rate seconds."""
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(requests_per_second=2.0, burst=3), clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire("a") == 1
    clock.now += 0.5
    assert limiter.acquire("a") == 0
    assert limiter.acquire("a") == 1
    assert limiter.acquire("b") == 0  # another key has its own bucket
    clock.now += 100
    assert [limiter.acquire("a") for _ in range(4)] == [0, 0, 0, 1]  # never above burst


def test_retry_after_is_whole_seconds_until_a_token() -> None:
    """Retry-After rounds the wait up to whole seconds, at least 1."""
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(requests_per_second=0.1, burst=1), clock=clock)
    assert limiter.acquire("k") == 0
    assert limiter.acquire("k") == 10
    clock.now += 2.5
    assert limiter.acquire("k") == 8
    fast = RateLimiter(RateLimit(requests_per_second=1000.0, burst=1), clock=clock)
    assert fast.acquire("k") == 0
    assert fast.acquire("k") == 1


def test_key_table_stays_bounded() -> None:
    """Past max_keys, refilled buckets are dropped, so memory stays bounded."""
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(requests_per_second=1.0, burst=2), max_keys=10, clock=clock)
    for n in range(10):
        limiter.acquire(f"old{n}")
    clock.now += 10  # every old bucket has refilled
    for n in range(25):
        limiter.acquire(f"new{n}")
        assert len(limiter._buckets) <= 10
    assert limiter.acquire("new24") == 0  # the newest bucket survived (burst 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"requests_per_second": 0},
        {"requests_per_second": -1.0},
        {"requests_per_second": float("inf")},
        {"burst": 0},
        {"burst": 1.5},
        {"burst": True},
    ],
)
def test_rate_limit_refuses_nonsense(kwargs: dict[str, float]) -> None:
    """RateLimit refuses non-positive rates and bursts below one."""
    with pytest.raises(ValueError, match="must be"):
        RateLimit(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
def limited_app(engine: Engine) -> Starlette:
    """The adapter allowing a burst of 3 requests, refilled slowly."""
    return create_app(engine, rate_limit=RateLimit(requests_per_second=0.2, burst=3))


@pytest.mark.anyio
async def test_over_the_limit_is_429_with_retry_after(
    limited_app: Starlette, token: str, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """The request after the burst answers 429 RATE_LIMIT_EXCEEDED with Retry-After."""
    client = make_client(limited_app, token)
    for _ in range(3):
        success(await client.get("/api/v1/workflows"))
    response = await client.get("/api/v1/workflows")
    details = error(response, 429, "RATE_LIMIT_EXCEEDED")
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    assert details == {"retry_after": retry_after}


@pytest.mark.anyio
async def test_each_token_has_its_own_bucket(
    limited_app: Starlette,
    engine: Engine,
    token: str,
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    """One token running out leaves another token of the same user and address alone."""
    first = make_client(limited_app, token)
    for _ in range(3):
        success(await first.get("/api/v1/workflows"))
    error(await first.get("/api/v1/workflows"), 429, "RATE_LIMIT_EXCEEDED")
    second = make_client(limited_app, engine.tokens.create_token("usr_test"))
    success(await second.get("/api/v1/workflows"))


@pytest.mark.anyio
async def test_requests_without_a_valid_token_are_limited_by_address(
    limited_app: Starlette, token: str, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """Unauthenticated requests share their address's bucket; tokens are not affected."""
    anonymous = make_client(limited_app, client=("10.1.1.1", 4000))
    forged = make_client(limited_app, "abi_forged", client=("10.1.1.1", 4001))
    error(await anonymous.get("/api/v1/workflows"), 401, "UNAUTHORIZED")
    error(await forged.get("/api/v1/workflows"), 401, "UNAUTHORIZED")
    error(await anonymous.get("/api/v1/workflows"), 401, "UNAUTHORIZED")
    response = await forged.get("/api/v1/workflows")
    error(response, 429, "RATE_LIMIT_EXCEEDED")
    assert int(response.headers["retry-after"]) >= 1
    elsewhere = make_client(limited_app, client=("10.2.2.2", 4000))
    error(await elsewhere.get("/api/v1/workflows"), 401, "UNAUTHORIZED")
    same_address_with_token = make_client(limited_app, token, client=("10.1.1.1", 4002))
    success(await same_address_with_token.get("/api/v1/workflows"))


@pytest.mark.anyio
async def test_health_and_openapi_are_not_limited(
    limited_app: Starlette, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """Health checks and the OpenAPI document never answer 429."""
    client = make_client(limited_app)
    for _ in range(10):
        success(await client.get("/api/v1/health"))
        assert (await client.get("/api/v1/openapi.json")).status_code == 200


@pytest.mark.anyio
async def test_rate_limit_none_disables_limiting(
    app: Starlette, token: str, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """With rate_limit=None, many quick requests all succeed."""
    client = make_client(app, token)
    for _ in range(150):
        success(await client.get("/api/v1/workflows"))


@pytest.mark.anyio
async def test_trigger_invocations_are_limited_by_address(
    limited_app: Starlette, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """POST /triggers/{id}/invoke needs no token: its requests, signed or not, take from
    their address's bucket, and the one after the burst answers 429 (#16)."""
    anonymous = make_client(limited_app, client=("10.2.2.2", 4000))
    for _ in range(3):
        error(await anonymous.post("/api/v1/triggers/t/invoke", content=b"{}"), 401, "UNAUTHORIZED")
    response = await anonymous.post("/api/v1/triggers/t/invoke", content=b"{}")
    error(response, 429, "RATE_LIMIT_EXCEEDED")
    assert int(response.headers["retry-after"]) >= 1
    other = make_client(limited_app, client=("10.2.2.3", 4000))
    error(await other.post("/api/v1/triggers/t/invoke", content=b"{}"), 401, "UNAUTHORIZED")
