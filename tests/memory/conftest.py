"""Fixtures for thaw.memory's tests: a pool over the fake driver, and the GPU skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from thaw.memory.pool import Pool
from thaw.memory.testing import FakeDriver

HERE = Path(__file__).parent
MIB = 1 << 20


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from thaw.cuda import available

    if available():
        return
    for item in items:
        if item.get_closest_marker("gpu") and HERE in item.path.parents:
            item.add_marker(pytest.mark.skip(reason="gpu: no NVIDIA GPU / driver (thaw.cuda.available() is False)"))


@pytest.fixture
def driver() -> FakeDriver:
    return FakeDriver(granularity=2 * MIB)


@pytest.fixture
def pool(driver: FakeDriver) -> Pool:
    """A pool whose chunks are 8 MiB, so a 32 MiB allocation has 4 of them."""
    return Pool(driver, chunk_bytes=8 * MIB)
