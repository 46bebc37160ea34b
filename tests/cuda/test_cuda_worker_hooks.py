"""The torch worker hooks, through thaw.worker's hook runner (no GPU here: torch CUDA is never initialised)."""

from __future__ import annotations

import json

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


POOL_PROGRAM = r"""
import json, os, sys
import torch
from torch._inductor.async_compile import AsyncCompile
from thaw.cuda import worker_hooks
from thaw.worker import hooks

def pool() -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        if int(pid) != os.getpid() and b"torch/_inductor/compile_worker" in cmd and stat.rsplit(")", 1)[1].split()[0] != "Z":
            found.append(int(pid))
    return found

def start_pool() -> None:
    # what inductor does when it compiles Triton kernels (a GPU compile): on the CPU it compiles C++ in
    # threads, so the test starts the very same pool through inductor's own entry points
    AsyncCompile.warm_pool()
    AsyncCompile.wait_pool_ready()

x = torch.arange(64, dtype=torch.float32)
compiled = torch.compile(lambda t: (t * 2).sin() + 1)
first = compiled(x)
start_pool()
before = pool()
worker_hooks.install()
report = hooks.run_freeze(hooks.HookContext("snapshot"))[worker_hooks.HOOK]
after = pool()
start_pool()  # a later compile starts a new pool
print(json.dumps({"before": before, "after": after, "again": pool(), "report": report,
                  "still_ok": torch.allclose(compiled(x), first)}))
"""


@pytest.mark.slow
def test_the_freeze_hook_shuts_down_inductors_compile_pool_which_restarts_at_the_next_compile(tmp_path) -> None:
    # the real torch installed here: the API the hook relies on, and the processes it ends
    pytest.importorskip("torch")
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "2", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", POOL_PROGRAM], env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["before"]) == 3, "inductor's pool: a sidecar and one worker per compile thread"
    assert result["report"]["compile_pools_stopped"] == 1
    assert result["after"] == [], "no compile worker is left for CRIU to dump"
    assert len(result["again"]) == 3, "inductor starts a new pool when it next needs one"
    assert result["still_ok"]


def test_trimming_gives_freed_heap_back_before_the_dump() -> None:
    """Freed heap pages stay resident (and would be dumped) until malloc_trim gives them back."""
    import subprocess
    import sys

    code = (
        "import json\n"
        "from thaw.cuda.worker_hooks import trim_host, _rss\n"
        "chunks = [bytearray(3000) for _ in range(60000)]\n"  # ~180 MB of small blocks on the heap
        "keep = chunks[::1000]\n"  # a few survivors, so the heap's top is not simply released
        "del chunks\n"
        "print(json.dumps(trim_host()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(out.stdout)
    assert report["rss_before"] - report["rss_after"] > 100 * 2**20, report
