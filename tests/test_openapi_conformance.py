"""The OpenAPI document says what the server enforces: schemathesis against a live server.

A real ``abi-engine serve`` (uvicorn, HTTP on 127.0.0.1) on each engine backend,
every operation of its own ``/api/v1/openapi.json`` driven by schemathesis'
engine, as ``schemathesis run`` drives it (examples, coverage and fuzzing per
operation, then stateful sequences over the document's links), with every
check, plus ``semantic_refusals_only``
(``tests/conformance/schemathesis_checks.py``): a request generated as valid
is refused only for a rule no static document can state. Bounded for CI:
``ABI_SCHEMATHESIS_EXAMPLES`` (default 6) examples per operation;
``ABI_SCHEMATHESIS_EXAMPLES=100`` is the full run.

The server runs with ``--allow-private-urls``: whether a URL's host is private
is not something a document can say (it is tested in ``test_netguard_registration.py``
and ``test_netguard_integrations.py``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import schemathesis.engine
from hypothesis import HealthCheck, given, settings
from postgres_testing import create_schema, drop_schema
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events
from test_cli import Server, _env, run_cli

sys.path.insert(0, str(Path(__file__).parent / "conformance"))
from schemathesis_checks import semantic_refusals_only

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).parent / "conformance" / "schemathesis.toml"
EXAMPLES = int(os.environ.get("ABI_SCHEMATHESIS_EXAMPLES", "6"))
BACKENDS = [
    pytest.param(name, id=name, marks=[pytest.mark.external_service] if name != "sqlite" else [])
    for name in filter(
        None,
        os.environ.get("ABI_ENGINE_TEST_ENGINE_BACKENDS", "sqlite").replace(" ", "").split(","),
    )
]


class Live:
    """A running server: its API root, a token, and the output it printed."""

    def __init__(self, server: Server, token: str) -> None:
        self.server = server
        self.api_url = server.api_url
        self.token = token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module", params=BACKENDS)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """``abi-engine serve`` on a fresh database of one backend, with a token of every scope."""
    tmp = tmp_path_factory.mktemp("conformance")
    schema_name = None
    if request.param == "sqlite":
        db = str(tmp / "abi.db")
    else:
        server_url: str = request.getfixturevalue("postgres_server")
        schema_name, db = create_schema(server_url)
    minted = run_cli("token", "create", "--db", db, "--user", "usr_conformance", cwd=tmp)
    assert minted.returncode == 0, minted.stderr
    server = Server(
        "serve",
        "--db",
        db,
        "--port",
        "0",
        "--rate-limit",
        "0",
        "--allow-private-urls",
        "--log-level",
        "warning",
        cwd=tmp,
        env=_env(),
    )
    try:
        server.wait_serving()
        yield Live(server, minted.stdout.strip())
        server.stop()
        output = server.output()
        assert "Traceback" not in output, output
    finally:
        server.close()
        if schema_name is not None:
            drop_schema(request.getfixturevalue("postgres_server"), schema_name)


def _run(live: Live, *, exclude_token_revocation: bool = False) -> list[str]:
    """Run schemathesis' engine (what ``schemathesis run`` runs: examples, coverage,
    fuzzing and stateful phases) with every check; the failures and errors it reports."""
    config = SchemathesisConfig.from_path(CONFIG)
    api = schemathesis.openapi.from_url(f"{live.api_url}/openapi.json", config=config)
    api.config.update(headers=live.headers, workers=1)
    api.config.generation.update(max_examples=EXAMPLES)
    api.config.checks.update(included_check_names=["all"])
    if exclude_token_revocation:
        api = api.exclude(method="DELETE", path="/api/v1/tokens/{token_id}")
    found: list[str] = []
    for event in schemathesis.engine.from_schema(api).execute():
        if isinstance(event, events.ScenarioFinished) and event.status in (
            Status.FAILURE,
            Status.ERROR,
        ):
            for checks in event.recorder.checks.values():
                found.extend(
                    f"{event.label}: {check.name}: {check.failure_info.failure.title}"
                    f" {check.failure_info.failure.message}"
                    for check in checks
                    if check.failure_info is not None
                )
            if not found:
                found.append(f"{event.label}: {event.status}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            found.append(f"{getattr(event, 'label', '')}: error {event.info.message}")
    return found


def test_schemathesis_finds_nothing(live: Live) -> None:
    """Every operation and linked sequence, every check: valid requests accepted (bar the
    refusals of semantic_refusals_only), invalid ones refused with the envelope, never a
    5xx, answers as documented. Revoking tokens is left out: a link may revoke the very
    token the run uses (revocation is tested in test_asgi_tokens.py)."""
    assert _run(live, exclude_token_revocation=True) == []
    assert "Traceback" not in live.server.output()


def test_revoking_tokens_agrees_with_the_document(live: Live) -> None:
    """DELETE /tokens/{token_id} on its own (random ids: the run's token survives)."""
    api = schemathesis.openapi.from_url(
        f"{live.api_url}/openapi.json", config=SchemathesisConfig.from_path(CONFIG)
    )
    operation = api["/api/v1/tokens/{token_id}"]["DELETE"]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES * 4, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        case.call_and_validate(headers=live.headers, additional_checks=[semantic_refusals_only])

    check()
