"""Fixtures for the data_processing tests.

``engine``: a started in-memory engine with the installed plugins that may
call 127.0.0.1 (``allow_private_urls``). ``source`` and ``target``: two
:class:`~.systems.System` servers, connected as ``int_salesforce`` and
``int_zendesk`` by :func:`workflow`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest

from abi_engine import Engine, Execution
from abi_engine.testing import engine_for

from . import systems
from .systems import System, connect_systems, running_system

__all__ = ["connect_systems", "create_workflow", "run"]

SEED_CONFIGURATION: dict[str, Any] = {
    "source_integration": "int_salesforce",
    "target_integration": "int_zendesk",
    "batch_size": 100,
    "transformation_rules": {"customer_id": "contact_id", "feedback": "description"},
    "field_mappings": [
        {"source": "email", "target": "contact_email"},
        {"source": "name", "target": "contact_name"},
    ],
}
SEED_INTEGRATIONS = [
    {"id": "int_salesforce", "required": True},
    {"id": "int_zendesk", "required": True},
]


def customers(count: int, start: int = 0) -> list[dict[str, Any]]:
    """``count`` source records as a CRM would list them."""
    return [
        {
            "customer_id": f"c_{i:04d}",
            "feedback": f"feedback {i}",
            "email": f"user{i}@example.com",
            "name": f"User {i}",
        }
        for i in range(start, start + count)
    ]


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
def source() -> Iterator[System]:
    """The source system (a CRM), empty until a test fills it."""
    with running_system(key="customer_id") as system:
        yield system


@pytest.fixture
def target() -> Iterator[System]:
    """The target system (a help desk)."""
    with running_system(key="contact_id") as system:
        yield system


async def create_workflow(
    engine: Engine,
    configuration: dict[str, Any],
    integrations: Sequence[dict[str, Any]] = SEED_INTEGRATIONS,
) -> str:
    """An active data_processing workflow (with the seed's integrations by default); its id."""
    return await systems.create_workflow(engine, configuration, integrations)


async def run(
    engine: Engine,
    configuration: dict[str, Any],
    parameters: dict[str, Any] | None = None,
    integrations: Sequence[dict[str, Any]] = SEED_INTEGRATIONS,
) -> Execution:
    """Execute a new data_processing workflow synchronously."""
    return await systems.run(engine, configuration, parameters, integrations)
