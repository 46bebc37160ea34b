"""thaw.memory's public API and its freeze/thaw hooks, over the fake driver (no GPU needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import thaw.memory
from thaw.errors import HostError
from thaw.memory import hooks as memory_hooks
from thaw.memory.pool import POISON_PATTERN, Pool
from thaw.memory.testing import FakeDriver
from thaw.worker import hooks

MIB = 1 << 20


@pytest.fixture
def fake_pool(monkeypatch) -> Pool:
    hooks.clear()
    monkeypatch.setattr(thaw.memory, "_pool", None)
    pool = Pool(FakeDriver(), chunk_bytes=4 * MIB)
    thaw.memory.use_pool(pool)
    yield pool
    hooks.clear()


def test_the_public_api_is_pinned() -> None:
    assert sorted(thaw.memory.__all__) == [
        "DEFAULT_CHUNK_BYTES", "ENV_POISON", "POISON_PATTERN", "Policy", "Pool", "buffer", "default_pool", "mempool",
        "reacquire",
        "region", "release", "set_poison", "set_policy", "stats", "tags", "use_pool",
    ]


def test_the_pool_module_is_not_shadowed_by_a_function() -> None:
    import importlib

    assert importlib.import_module("thaw.memory.pool").Pool is Pool
    assert not callable(thaw.memory.pool)


def test_module_functions_act_on_the_process_pool(fake_pool: Pool) -> None:
    assert thaw.memory.default_pool() is fake_pool
    thaw.memory.set_policy("state", "backup")
    fake_pool.allocate("kv", 8 * MIB, device=0)
    assert thaw.memory.tags() == ["state", "kv"]
    assert thaw.memory.release("kv")["bytes"] == 8 * MIB
    assert thaw.memory.stats()["kv"]["state"] == "released"
    assert thaw.memory.reacquire("kv")["bytes"] == 8 * MIB
    thaw.memory.set_poison(True)
    assert fake_pool.poison == POISON_PATTERN
    thaw.memory.set_poison(False)
    assert fake_pool.poison is None


def test_the_freeze_hook_releases_and_reports_what_the_manifest_records(fake_pool: Pool) -> None:
    fake_pool.allocate("kv", 8 * MIB, device=0)
    fake_pool.allocate("scratch", 4 * MIB, device=0)
    assert hooks.registered() == {"freeze": [memory_hooks.HOOK], "thaw": [memory_hooks.HOOK]}
    report = hooks.run_freeze(hooks.HookContext("snapshot"))[memory_hooks.HOOK]
    assert [(r["tag"], r["bytes"]) for r in report["released"]] == [("kv", 8 * MIB), ("scratch", 4 * MIB)]
    assert report["bytes"] == 12 * MIB
    assert fake_pool.driver.physical_bytes() == 0
    thawed = hooks.run_thaw(hooks.HookContext("thaw"))[memory_hooks.HOOK]
    assert thawed["bytes"] == 12 * MIB and [r["tag"] for r in thawed["reacquired"]] == ["kv", "scratch"]
    assert fake_pool.driver.physical_bytes() == 12 * MIB


def test_a_later_failing_freeze_hook_gets_the_memory_reacquired(fake_pool: Pool) -> None:
    fake_pool.allocate("kv", 8 * MIB, device=0)

    @hooks.on_freeze(name="engine")
    def boom(ctx):
        raise RuntimeError("engine refused")

    with pytest.raises(hooks.HookFailed, match="engine refused"):
        hooks.run_freeze(hooks.HookContext("snapshot"))
    assert fake_pool.stats()["kv"]["state"] == "held", "thaw.worker undid the release by the same-named thaw hook"


def test_a_failed_release_fails_the_freeze_and_leaves_memory_held(fake_pool: Pool) -> None:
    fake_pool.allocate("kv", 8 * MIB, device=0)
    fake_pool.driver.fail("cuMemUnmap", after=1)
    with pytest.raises(hooks.HookFailed, match="releasing tag 'kv': chunk 1 of 2"):
        hooks.run_freeze(hooks.HookContext("snapshot"))
    assert fake_pool.stats()["kv"]["state"] == "held"


@pytest.mark.parametrize("value, expected", [
    ("", None), ("0", None), ("off", None), ("1", POISON_PATTERN), ("yes", POISON_PATTERN),
    ("0xdeadbeef", 0xDEADBEEF), ("garbage", POISON_PATTERN),
])
def test_poison_switch_from_the_environment(monkeypatch, value: str, expected: int | None) -> None:
    monkeypatch.setenv(thaw.memory.ENV_POISON, value)
    assert thaw.memory._poison_from_env() == expected


def test_region_and_buffer_need_a_cuda_torch(fake_pool: Pool) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA: the GPU tests cover region and buffer")
    with pytest.raises(HostError, match="sees no CUDA device"):
        with thaw.memory.region("kv"):
            pass
    with pytest.raises(HostError, match="sees no CUDA device"):
        thaw.memory.buffer(MIB, "scratch")


def test_importing_thaw_memory_loads_neither_torch_nor_libcuda() -> None:
    code = ("import sys, thaw.memory, thaw.cuda; from thaw.cuda import native; "
            "assert 'torch' not in sys.modules, 'torch'; assert not native._cuda_tried, 'libcuda'")
    subprocess.run([sys.executable, "-c", code], check=True)
