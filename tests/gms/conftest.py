"""Fixtures of the GPU memory service's tests (helpers in gms_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gms_helpers import ServiceProcess, write_model


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    write_model(d / "m.safetensors")
    return d


@pytest.fixture
def service(tmp_path: Path, model_dir: Path) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(tmp_path / "gms", model_dir)
    yield svc
    svc.stop()


@pytest.fixture(autouse=True)
def _forget_mapped_sets() -> Iterator[None]:
    yield
    import thaw.memory.weights as weights
    from thaw.cuda import worker_hooks
    from thaw.worker import hooks

    for ws in weights.loaded():
        if ws.mapped:
            ws.unmap()
    weights._sets.clear()
    hooks.clear()
    for name in worker_hooks.imported():
        worker_hooks.forget_imported(name)
