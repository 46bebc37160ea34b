"""Fixtures for thaw.memory's tests: a pool over the fake driver, and the GPU skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from thaw.memory.pool import Pool
from thaw.memory.testing import FakeDriver

HERE = Path(__file__).parent
MIB = 1 << 20


@pytest.fixture
def driver() -> FakeDriver:
    return FakeDriver(granularity=2 * MIB)


@pytest.fixture
def pool(driver: FakeDriver) -> Pool:
    """A pool whose chunks are 8 MiB, so a 32 MiB allocation has 4 of them."""
    return Pool(driver, chunk_bytes=8 * MIB)
