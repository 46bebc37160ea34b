"""Markers and skips shared by the whole suite. Fixtures live next to the tests that use them.

``criu`` tests need root and CRIU >= 4 (CI has both); ``gpu`` tests need an NVIDIA GPU and are
skipped, not failed, without one (scripts/gpu-suite.sh runs them on a GPU machine).
"""

from __future__ import annotations

import functools
import os

import pytest


@functools.cache
def _criu_missing() -> str | None:
    """Why real-CRIU tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (CRIU checkpoints other processes; run the suite as root, as CI does)"
    from thaw.config import Settings
    from thaw.criu import find_criu
    from thaw.errors import HostError

    try:
        find_criu(Settings().criu)
    except HostError as exc:  # find_criu already refuses CRIU < 4
        return f"needs CRIU >= 4: {exc.message} (scripts/install-criu.sh installs it)"
    return None


@functools.cache
def _gpu_missing() -> str | None:
    """Why GPU tests cannot run here, or None when they can."""
    from thaw.cuda import available
    from thaw.errors import CudaError

    try:
        return None if available() else "no NVIDIA GPU / driver (thaw.cuda.available() is False)"
    except CudaError as exc:  # a broken driver: say so in every skipped test rather than fail collection
        return f"the NVIDIA driver is broken here: {exc}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker, missing in (("criu", _criu_missing), ("gpu", _gpu_missing)):
        marked = [item for item in items if item.get_closest_marker(marker)]
        if marked and (reason := missing()):
            for item in marked:
                item.add_marker(pytest.mark.skip(reason=f"{marker}: {reason}"))
