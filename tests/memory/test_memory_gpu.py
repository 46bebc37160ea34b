"""thaw.memory on a real GPU: memory really leaves, addresses stay, graphs replay, rollback, poison, backup."""

from __future__ import annotations

import pytest

from thaw.errors import CudaError
from thaw.memory import tensors
from thaw.memory.driver import CudaDriver
from thaw.memory.pool import POISON_PATTERN, Pool

pytestmark = pytest.mark.gpu

MIB = 1 << 20


@pytest.fixture
def torch():
    torch = pytest.importorskip("torch")
    torch.cuda.init()
    torch.cuda.synchronize()
    return torch


class FailingDriver(CudaDriver):
    """The real driver, except that the n-th cuMemCreate from now fails (rollback runs on the real driver)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_create_in: int | None = None
        self.fail_every_create = False

    def create(self, device: int, size: int) -> int:
        if self.fail_every_create:
            raise CudaError("cuMemCreate", 2, "CUDA_ERROR_OUT_OF_MEMORY", detail="injected by the test")
        if self.fail_create_in is not None:
            if self.fail_create_in == 0:
                self.fail_create_in = None
                raise CudaError("cuMemCreate", 2, "CUDA_ERROR_OUT_OF_MEMORY", detail="injected by the test")
            self.fail_create_in -= 1
        return super().create(device, size)


def free_bytes(torch) -> int:
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def test_release_gives_the_memory_back_and_reacquire_keeps_the_address(torch) -> None:
    pool = Pool(CudaDriver(), chunk_bytes=128 * MIB)
    buf = tensors.buffer(pool, 1024 * MIB, "buf")
    ptr = buf.data_ptr()
    buf.fill_(7)
    held = free_bytes(torch)
    pool.release("buf")
    assert free_bytes(torch) - held >= 1000 * MIB, "the GPU got the memory back"
    pool.reacquire("buf")
    assert held - free_bytes(torch) < 64 * MIB
    assert buf.data_ptr() == ptr
    buf.fill_(3)
    assert int(buf.sum().item()) == 3 * 1024 * MIB


def test_backup_policy_keeps_contents_on_the_gpu(torch) -> None:
    pool = Pool(CudaDriver(), chunk_bytes=16 * MIB)
    pool.set_policy("state", "backup")
    buf = tensors.buffer(pool, 64 * MIB, "state")
    buf.copy_(torch.arange(buf.numel(), device=buf.device).remainder(251).to(torch.uint8))
    expected = buf.clone()
    pool.release("state")
    assert pool.stats()["state"]["backup_bytes"] == 64 * MIB
    pool.reacquire("state")
    assert torch.equal(buf, expected)


def test_poison_makes_reacquired_memory_nan(torch) -> None:
    pool = Pool(CudaDriver(), chunk_bytes=16 * MIB, poison=POISON_PATTERN)
    buf = tensors.buffer(pool, 64 * MIB, "kv")
    buf.zero_()
    pool.release("kv")
    assert pool.reacquire("kv")["poisoned"]
    assert torch.isnan(buf.view(torch.float32)).all()
    assert torch.isnan(buf.view(torch.bfloat16)).all()
    assert torch.isnan(buf.view(torch.float16)).all()


def test_region_tensors_and_a_captured_graph_survive_release_and_reacquire(torch) -> None:
    pool = Pool(CudaDriver(), chunk_bytes=64 * MIB)
    with tensors.region(pool, "kv"):
        kv = [torch.empty(4 * MIB, device="cuda", dtype=torch.bfloat16) for _ in range(32)]  # 32 × 8 MiB
    stats = pool.stats()["kv"]
    assert stats["bytes"] >= 256 * MIB and stats["allocations"] >= 1
    ranges = [(a.va, a.va + a.size) for a in pool._tags["kv"].allocations.values()]
    assert all(any(lo <= t.data_ptr() < hi for lo, hi in ranges) for t in kv), "every tensor lives in the pool"
    pointers = [t.data_ptr() for t in kv]

    def fill(seed: int) -> None:
        for i, t in enumerate(kv):
            t.copy_(torch.arange(t.numel(), device="cuda", dtype=torch.float32).remainder(17 + i + seed).to(t.dtype))

    def reduce() -> torch.Tensor:
        return torch.stack([t.float().sum() for t in kv]).sum()

    fill(1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            reduce()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = reduce()
    graph.replay()
    assert out.item() == reduce().item()

    held = free_bytes(torch)
    report = pool.release("kv")
    assert report["bytes"] == stats["bytes"]
    assert free_bytes(torch) - held >= 250 * MIB
    pool.reacquire("kv")
    assert [t.data_ptr() for t in kv] == pointers
    fill(2)  # the engine rebuilds what it discarded
    graph.replay()
    torch.cuda.synchronize()
    assert out.item() == reduce().item()


def test_a_failed_reacquire_rolls_back_on_the_real_driver(torch) -> None:
    driver = FailingDriver()
    pool = Pool(driver, chunk_bytes=64 * MIB)
    buf = tensors.buffer(pool, 256 * MIB, "kv")
    pool.release("kv")
    released = free_bytes(torch)
    driver.fail_create_in = 2
    with pytest.raises(CudaError, match="chunk 2 of 4.*chunks 0..1 released again"):
        pool.reacquire("kv")
    assert pool.stats()["kv"]["state"] == "released"
    assert abs(free_bytes(torch) - released) < 32 * MIB, "chunks 0 and 1 went back to the GPU"
    pool.reacquire("kv")
    buf.fill_(1)
    assert int(buf.sum().item()) == 256 * MIB


def test_a_pool_error_inside_region_surfaces_as_the_pools_error(torch) -> None:
    driver = FailingDriver()
    pool = Pool(driver, chunk_bytes=64 * MIB)
    driver.fail_every_create = True  # torch retries a failed segment allocation after freeing its caches
    with pytest.raises(CudaError, match="allocating .* in tag 'oom'"):
        with tensors.region(pool, "oom"):
            torch.empty(32 * MIB, device="cuda", dtype=torch.uint8)
