"""Fixtures for the integration type's tests.

``engine``: a started in-memory engine allowed to call 127.0.0.1. ``crm``
and ``desk``: a source and a target :class:`System` on 127.0.0.1 (the test
servers of the data_processing tests), connected as ``int_crm`` and
``int_desk`` by :func:`sync`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from abi_plugin_data_processing.tests.systems import System, connect_systems, run, running_system

from abi_engine import Engine, Execution
from abi_engine.testing import engine_for

INTEGRATIONS = [{"id": "int_crm", "required": True}, {"id": "int_desk", "required": True}]
BASE_CONFIGURATION: dict[str, Any] = {
    "source_integration": "int_crm",
    "target_integration": "int_desk",
    "key": "contact_id",
    "transformation_rules": {"customer_id": "contact_id"},
    "field_mappings": [{"source": "email", "target": "contact_email"}],
    "unmapped_fields": "drop",
    "retry": {"attempts": 3, "backoff_seconds": 0},
}


def crm_record(i: int, email: str | None = None) -> dict[str, Any]:
    return {"customer_id": f"c_{i}", "email": email or f"u{i}@example.com", "score": i}


def desk_record(i: int, email: str | None = None) -> dict[str, Any]:
    return {"contact_id": f"c_{i}", "contact_email": email or f"u{i}@example.com"}


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio."""
    return "asyncio"


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    """A started in-memory engine allowed to call 127.0.0.1."""
    async with engine_for(allow_private_urls=True) as eng:
        yield eng


@pytest.fixture
def crm() -> Iterator[System]:
    """The source system."""
    with running_system(key="customer_id") as system:
        yield system


@pytest.fixture
def desk() -> Iterator[System]:
    """The target system."""
    with running_system(key="contact_id") as system:
        yield system


async def sync(
    engine: Engine,
    crm: System,
    desk: System,
    parameters: dict[str, Any] | None = None,
    **configuration: Any,
) -> Execution:
    """Connect both systems and run a new integration workflow once."""
    await connect_systems(engine, int_crm=crm, int_desk=desk)
    return await run(
        engine,
        {**BASE_CONFIGURATION, **configuration},
        parameters,
        INTEGRATIONS,
        workflow_type="integration",
    )
