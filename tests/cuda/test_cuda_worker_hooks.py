"""The torch worker hooks, through thaw.worker's hook runner (no GPU here: torch CUDA is never initialised)."""

from __future__ import annotations

import pytest

from thaw.cuda import worker_hooks
from thaw.worker import hooks


@pytest.fixture(autouse=True)
def clean_hooks():
    hooks.clear()
    yield
    hooks.clear()
    for name in worker_hooks.imported():
        worker_hooks.forget_imported(name)


def test_install_registers_one_name_for_freeze_and_thaw() -> None:
    worker_hooks.install()
    assert hooks.registered() == {"freeze": [worker_hooks.HOOK], "thaw": [worker_hooks.HOOK]}


def test_without_cuda_in_use_the_hooks_report_no_gpus() -> None:
    pytest.importorskip("torch")
    worker_hooks.install()
    report = hooks.run_freeze(hooks.HookContext("snapshot"))
    assert report[worker_hooks.HOOK]["gpus"] == []
    assert hooks.run_thaw(hooks.HookContext("thaw"))[worker_hooks.HOOK]["gpus"] == []


def test_a_worker_still_mapping_imported_memory_is_refused() -> None:
    worker_hooks.install()
    worker_hooks.declare_imported("gms-weights", 4 << 30)
    with pytest.raises(hooks.HookFailed, match="imported from another process: gms-weights"):
        hooks.run_freeze(hooks.HookContext("snapshot"))
    worker_hooks.forget_imported("gms-weights")
    hooks.run_freeze(hooks.HookContext("snapshot"))


def test_torch_is_not_imported_by_the_hooks(monkeypatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    worker_hooks.install()
    assert hooks.run_freeze(hooks.HookContext("snapshot"))[worker_hooks.HOOK]["gpus"] == []
    assert "torch" not in sys.modules
