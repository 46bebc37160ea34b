"""Markers and skips shared by the whole suite. Fixtures live next to the tests that use them."""

from __future__ import annotations

import functools
import os

import pytest


@functools.cache
def _criu_missing() -> str | None:
    """Why real-CRIU tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (CRIU checkpoints other processes; run the suite as root, as CI does)"
    from thaw.criu import find_criu
    from thaw.errors import HostError

    try:
        find_criu()
    except HostError as exc:  # find_criu already refuses CRIU < 4
        return f"needs CRIU >= 4: {exc.message} (scripts/install-criu.sh installs it)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    criu_items = [item for item in items if item.get_closest_marker("criu")]
    if criu_items and (reason := _criu_missing()):
        for item in criu_items:
            item.add_marker(pytest.mark.skip(reason=f"criu: {reason}"))
