"""Client addresses and forwarding headers: the rate limit of requests without a token cannot be
dodged with X-Forwarded-For, unless the peer is a proxy the server was told to trust.

The command-line tests run ``abi-engine serve`` (real uvicorn) on 127.0.0.1 in a subprocess;
they count answers, never time them: the bound on 401s comes from the elapsed time measured.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from abi_asgi import RateLimit, create_app
from asgi_helpers import error
from starlette.applications import Starlette

from abi_engine import Engine

RATE = 0.01  # requests per second without a token (burst 1): a refill takes 100 s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``serve(*options)``: start ``abi-engine serve`` with a low rate limit; its API URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ABI_ENGINE_", "FORWARDED"))}
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> str:
        port = _free_port()
        db = tmp_path / f"serve-{len(started)}.db"
        args = ["serve", "--db", str(db), "--port", str(port), "--rate-limit", str(RATE)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "abi_engine", *args, *options],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(proc)
        base = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "the server exited"
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def _forged(base: str, count: int) -> tuple[list[httpx.Response], float]:
    """``count`` requests without a token, each claiming another client address; the answers
    and the seconds they took."""
    began = time.monotonic()
    answers = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for n in range(count):
            headers = {
                "X-Forwarded-For": f"198.51.100.{n}",
                "X-Real-IP": f"198.51.100.{n}",
                "Forwarded": f"for=198.51.100.{n}",
            }
            answers.append(client.get("/workflows", headers=headers))
    return answers, time.monotonic() - began


@pytest.mark.slow
def test_forwarding_headers_do_not_dodge_the_limit_by_default(
    serve: Callable[..., str],
) -> None:
    """By default no peer is trusted, 127.0.0.1 included: 30 unauthenticated requests with
    forged forwarding headers share one bucket and are answered 429 beyond it."""
    answers, elapsed = _forged(serve(), 30)
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {401, 429}, statuses
    allowed = 1 + math.ceil(elapsed * RATE) + 1  # the burst, the refill, one of rounding
    assert statuses.count(401) <= allowed, statuses
    limited = [a for a in answers if a.status_code == 429]
    assert limited
    for answer in limited:
        error(answer, 429, "RATE_LIMIT_EXCEEDED")
        assert int(answer.headers["retry-after"]) >= 1


@pytest.mark.slow
def test_forwarded_allow_ips_trusts_the_proxy_named(serve: Callable[..., str]) -> None:
    """With --forwarded-allow-ips 127.0.0.1 the client address comes from X-Forwarded-For:
    each forwarded client has its own bucket, and one client repeating is limited."""
    base = serve("--forwarded-allow-ips", "127.0.0.1")
    answers, _ = _forged(base, 15)
    assert [a.status_code for a in answers] == [401] * 15
    with httpx.Client(base_url=base, timeout=60) as client:
        same = [
            client.get("/workflows", headers={"X-Forwarded-For": "203.0.113.9"}).status_code
            for _ in range(3)
        ]
    assert same[0] == 401
    assert 429 in same[1:]


@pytest.mark.slow
@pytest.mark.parametrize("value", ["proxy.example.com", "10.0.0.0/33", "1.2.3.4,nope"])
def test_forwarded_allow_ips_refuses_what_is_no_address(tmp_path: Path, value: str) -> None:
    """--forwarded-allow-ips takes addresses, networks or '*': anything else exits 2 at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABI_ENGINE_")}
    command = ["serve", "--db", str(tmp_path / "x.db"), "--forwarded-allow-ips", value]
    done = subprocess.run(
        [sys.executable, "-m", "abi_engine", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "is not an IP address or network" in done.stderr


# -- the adapter's key --------------------------------------------------------------------------


@pytest.fixture
def limited(engine: Engine) -> Starlette:
    """The adapter with one unauthenticated request per client address (no refill to speak of)."""
    return create_app(engine, rate_limit=RateLimit(requests_per_second=RATE, burst=1))


@pytest.mark.anyio
async def test_ipv6_clients_are_limited_per_64(
    limited: Starlette, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """Addresses of one IPv6 /64 share a bucket (a host may take any of them); another /64
    and an IPv4-mapped address have their own."""
    first = await make_client(limited, client=("2001:db8:0:1::1", 1000)).get("/api/v1/workflows")
    error(first, 401, "UNAUTHORIZED")
    same = await make_client(limited, client=("2001:db8:0:1:ffff::2", 1000)).get(
        "/api/v1/workflows"
    )
    error(same, 429, "RATE_LIMIT_EXCEEDED")
    other = await make_client(limited, client=("2001:db8:0:2::1", 1000)).get("/api/v1/workflows")
    error(other, 401, "UNAUTHORIZED")
    mapped = await make_client(limited, client=("::ffff:198.51.100.7", 1000)).get(
        "/api/v1/workflows"
    )
    error(mapped, 401, "UNAUTHORIZED")
    plain = await make_client(limited, client=("198.51.100.7", 1000)).get("/api/v1/workflows")
    error(plain, 429, "RATE_LIMIT_EXCEEDED")


@pytest.mark.anyio
async def test_the_adapter_reads_no_forwarding_header(
    limited: Starlette, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """Mounted under any server, the adapter keys on the ASGI client, never on a header."""
    client = make_client(limited, client=("192.0.2.10", 1000))
    answers = [
        await client.get("/api/v1/workflows", headers={"X-Forwarded-For": f"198.51.100.{n}"})
        for n in range(3)
    ]
    assert [a.status_code for a in answers] == [401, 429, 429]
