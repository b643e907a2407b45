"""Fixtures shared by the integration tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.integration.processes import Process


@pytest.fixture
async def processes() -> AsyncIterator[list[Process]]:
    """Processes a test launched; afterwards each is gone and its pipe closed."""
    launched: list[Process] = []
    yield launched
    for process in launched:
        await process.close()
