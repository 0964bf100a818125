"""Fixtures for the reporting type's tests.

``engine``: a started in-memory engine allowed to call 127.0.0.1.
``warehouse`` and ``inbox``: a source of records and a destination for
reports, :class:`System` servers on 127.0.0.1 (the test servers of the
data_processing tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from abi_plugin_data_processing.tests.systems import System, running_system

from abi_engine import Engine
from abi_engine.testing import engine_for


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
def warehouse() -> Iterator[System]:
    """Where the records come from."""
    with running_system(key="id") as system:
        yield system


@pytest.fixture
def inbox() -> Iterator[System]:
    """Where reports are delivered (``POST /reports``)."""
    with running_system() as system:
        yield system
